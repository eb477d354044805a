"""Search methods on one interface (``jnas.search.base``), the registry ``METHODS`` and the run driver.

  jnas.search.METHODS                      # name -> MethodSpec (builder, config class, presets)
  jnas.search.run_search(...)              # many seeds in one compiled job, stages, resume
"""

from jnas.search import base as base
from jnas.search import cnas as cnas
from jnas.search import edge_weights as edge_weights
from jnas.search import estimators as estimators
from jnas.search import select as select
from jnas.search.base import ORDERS as ORDERS
from jnas.search.base import Search as Search
from jnas.search.base import SearchConfig as SearchConfig
from jnas.search.base import SearchMethod as SearchMethod
from jnas.search.base import SearchState as SearchState
from jnas.search.registry import MethodSpec as MethodSpec
from jnas.search.registry import config_for as config_for
from jnas.search import beta_darts as beta_darts
from jnas.search import darts as darts
from jnas.search import darts_minus as darts_minus
from jnas.search import darts_pt as darts_pt
from jnas.search import drnas as drnas
from jnas.search import enas as enas
from jnas.search import gaea as gaea
from jnas.search import gdas as gdas
from jnas.search import manas as manas
from jnas.search import milenas as milenas
from jnas.search import nao as nao
from jnas.search import nsganet as nsganet
from jnas.search import pcdarts as pcdarts
from jnas.search import pdarts as pdarts
from jnas.search import rarts as rarts
from jnas.search import rdarts as rdarts
from jnas.search import rsws as rsws
from jnas.search import sdarts as sdarts
from jnas.search import sddarts as sddarts
from jnas.search import snas as snas
from jnas.search import small_temp as small_temp
from jnas.search import spdarts as spdarts
from jnas.search import ssdarts as ssdarts
from jnas.search import stacnas as stacnas
from jnas.search import temperature as temperature
from jnas.search.run import Interrupted as Interrupted
from jnas.search.run import load_search as load_search
from jnas.search.run import run_search as run_search

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    darts.SPEC, pdarts.SPEC, pcdarts.SPEC, gdas.SPEC, gdas.SPEC_FRC, snas.SPEC, drnas.SPEC, rsws.SPEC,
    sdarts.SPEC_RS, sdarts.SPEC_ADV, rdarts.SPEC_ES, rdarts.SPEC_L2, rdarts.SPEC_DP, ssdarts.SPEC, stacnas.SPEC,
    darts_pt.SPEC, cnas.SPEC, manas.SPEC, manas.SPEC_LS, rdarts.SPEC_ADA,
    small_temp.SPEC, spdarts.SPEC, rarts.SPEC, darts_minus.SPEC, darts_minus.SPEC_SURGENAS, beta_darts.SPEC,
    milenas.SPEC, gaea.SPEC, gaea.SPEC_ERM, sddarts.SPEC, enas.SPEC, nao.SPEC, nsganet.SPEC)}

__all__ = ["METHODS", "Interrupted", "MethodSpec", "ORDERS", "Search", "SearchConfig", "SearchMethod", "SearchState",
           "base", "beta_darts", "cnas", "config_for", "darts", "darts_minus", "darts_pt", "drnas", "edge_weights", "enas", "estimators", "gaea", "gdas",
           "load_search", "manas", "milenas", "nao", "nsganet", "pcdarts", "pdarts", "rarts", "rdarts", "rsws", "run_search", "sdarts", "sddarts", "select", "snas",
           "small_temp", "spdarts", "ssdarts", "stacnas", "temperature"]
