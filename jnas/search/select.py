"""Selection rules: from a method's final edge weights to a genotype (host side, NumPy).

Each rule takes per-cell-type weights ``{'normal': (E, n_ops), 'reduce': (E, n_ops)}`` (already the
quantity the method ranks by: softmax(alpha), softmax(alpha) * edge weights, raw alpha, ...) and
the op names of their columns.

* ``darts_top2``: per node the 2 incoming edges whose strongest non-``none`` op weighs most, and
  that op on each [DARTS-P §2.4; quark0 ``Network.genotype``]; ``skip_cap=M`` then removes
  skip-connects from the normal cell until at most M remain (P-DARTS M = 2 [PD train_search.py
  ``delete_min_sk_prob`` / ``keep_1_on`` / ``keep_2_branches``]): repeatedly the kept edge whose
  skip weight is smallest loses its skip (weight 0) and the cell is derived again.
* ``top2_pairs``: per node the 2 largest (op, input) entries over all its incoming edges and
  non-``none`` ops, so both may come from one input [xautodl ``genotype``] (GDAS).
* ``edge_all``: every edge with its argmax op, ``none`` included; node j keeps its j + 2 inputs
  [SNAS ``genotype_edge_all``].
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jnas import space
from jnas.genotype import Genotype, _derive_cell

__all__ = ["darts_top2", "top2_pairs", "edge_all", "count_skips"]


def _steps_of(rows: int) -> int:
  s = next((s for s in range(1, 64) if space.num_edges(s) == rows), None)
  if s is None:
    raise ValueError(f"{rows} weight rows are not a cell's edge count (14 for 4 nodes)")
  return s


def _check(weights: Mapping, primitives: Sequence[str], cell_types=("normal", "reduce")) -> dict:
  out = {}
  for t in cell_types:
    if t not in weights:
      raise ValueError(f"weights lack the {t!r} entry")
    w = np.asarray(weights[t], np.float64)
    if w.ndim != 2 or w.shape[1] != len(primitives):
      raise ValueError(f"weights[{t!r}] has shape {w.shape}, expected (edges, {len(primitives)})")
    if not np.all(np.isfinite(w)):
      raise ValueError(f"weights[{t!r}] contains NaN or inf")
    out[t] = w
  return out


def count_skips(pairs) -> int:
  return sum(op == "skip_connect" for op, _ in pairs)


def _cap_skips(w: np.ndarray, steps: int, primitives: Sequence[str], cap: int):
  """P-DARTS's skip restriction on one cell's weights: see the module docstring."""
  w = w.copy()
  pairs = _derive_cell(w, steps, primitives)
  skip = list(primitives).index("skip_connect") if "skip_connect" in primitives else None
  if skip is None:
    return pairs
  while count_skips(pairs) > cap:
    # the kept edges that hold a skip-connect, with their skip weight
    kept = []
    for k, (op, i) in enumerate(pairs):
      if op == "skip_connect":
        kept.append((w[space.edge_index(i, k // 2), skip], space.edge_index(i, k // 2)))
    _, row = min(kept)
    w[row, skip] = 0.0
    pairs = _derive_cell(w, steps, primitives)
  return pairs


def darts_top2(weights: Mapping, primitives: Sequence[str], *, skip_cap: int | None = None,
               decimals: int | None = None, ties: str = "lower") -> Genotype:
  """The DARTS rule on ``weights`` (see the module docstring); ``none`` never appears.

  ``decimals``: round the weights first (the small-temperature codes round softmax(alpha / T) to
  3 or 4 decimals, which makes many entries tie at 1.0); ``ties``: equally strong edges go to the
  'lower' input index (quark0) or the 'higher' one (SP-DARTS ranks the reversed input list)."""
  if ties not in ("lower", "higher"):
    raise ValueError(f"unknown ties {ties!r}; use 'lower' or 'higher'")
  w = _check(weights, primitives)
  if decimals is not None:
    w = {t: np.round(v, decimals) for t, v in w.items()}
  later = ties == "higher"
  steps = _steps_of(w["normal"].shape[0])
  if skip_cap is not None and later:
    raise ValueError("skip_cap works with ties='lower' only")
  normal = _cap_skips(w["normal"], steps, primitives, skip_cap) if skip_cap is not None \
      else _derive_cell(w["normal"], steps, primitives, later)
  reduce = _derive_cell(w["reduce"], _steps_of(w["reduce"].shape[0]), primitives, later)
  concat = tuple(range(2, steps + 2))
  return Genotype(normal, concat, reduce, concat, concat_style="range")


def _top2_pairs_cell(w: np.ndarray, steps: int, primitives: Sequence[str]):
  none = list(primitives).index("none") if "none" in primitives else None
  gene = []
  for j in range(steps):
    entries = []
    for i in range(j + space.NUM_INPUTS):
      row = space.edge_index(i, j)
      for o, name in enumerate(primitives):
        if o != none:
          entries.append((-w[row, o], i, o))  # ties: lower input, then lower op index first
    for _, i, o in sorted(entries)[:2]:
      gene.append((primitives[o], i))
  return tuple(gene)


def top2_pairs(weights: Mapping, primitives: Sequence[str], *, fixed_reduce: str | None = None) -> Genotype:
  """GDAS's rule (see the module docstring); ``fixed_reduce='gdas_frc'`` for GDAS-FRC (normal only)."""
  types = ("normal",) if fixed_reduce else ("normal", "reduce")
  w = _check(weights, primitives, types)
  steps = _steps_of(w["normal"].shape[0])
  concat = tuple(range(2, steps + 2))
  normal = _top2_pairs_cell(w["normal"], steps, primitives)
  if fixed_reduce:
    return Genotype(normal, concat, (), (), concat_style="range", fixed_reduce=fixed_reduce)
  return Genotype(normal, concat, _top2_pairs_cell(w["reduce"], steps, primitives), concat, concat_style="range")


def edge_all(weights: Mapping, primitives: Sequence[str]) -> Genotype:
  """SNAS's rule (see the module docstring): a cell of node degrees 2, 3, ..., steps + 1."""
  w = _check(weights, primitives)
  cells = []
  for t in ("normal", "reduce"):
    steps = _steps_of(w[t].shape[0])
    pairs = tuple((primitives[int(np.argmax(w[t][space.edge_index(i, j)]))], i)
                  for j in range(steps) for i in range(j + space.NUM_INPUTS))
    cells.append((pairs, tuple(j + space.NUM_INPUTS for j in range(steps))))
  steps = len(cells[0][1])
  concat = tuple(range(2, steps + 2))
  return Genotype(cells[0][0], concat, cells[1][0], concat, concat_style="range", normal_degree=cells[0][1],
                  reduce_degree=cells[1][1])
