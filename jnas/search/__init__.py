"""Search methods on one interface (``jnas.search.base``), the registry ``METHODS`` and the run driver.

  jnas.search.METHODS                      # name -> MethodSpec (builder, config class, presets)
  jnas.search.run_search(...)              # many seeds in one compiled job, stages, resume
"""

from jnas.search import base as base
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
from jnas.search import darts as darts

METHODS: dict[str, MethodSpec] = {m.SPEC.name: m.SPEC for m in (darts,)}

__all__ = ["METHODS", "MethodSpec", "ORDERS", "Search", "SearchConfig", "SearchMethod", "SearchState", "base",
           "config_for", "darts", "edge_weights", "estimators", "select"]
