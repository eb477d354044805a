"""Search methods. ``darts``: DARTS (first order, exact second order, finite-difference second
order, k-step unrolls); ``run``: the whole job (many seeds, run directory, resume)."""

from jnas.search.darts import ORDERS as ORDERS
from jnas.search.darts import DartsSearch as DartsSearch
from jnas.search.darts import SearchConfig as SearchConfig
from jnas.search.darts import SearchState as SearchState
from jnas.search.run import load_search as load_search
from jnas.search.run import run_search as run_search

__all__ = ["ORDERS", "DartsSearch", "SearchConfig", "SearchState", "load_search", "run_search"]
