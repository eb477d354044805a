"""The macro structure shared by the supernet and the discrete networks: which cells reduce, how
channels grow, and running a stack of cells with ``lax.scan`` over runs of identical cells.

Channel bookkeeping [quark0 ``model.py``]: (C_{k-2}, C_{k-1}, C_cur) start at (stem, stem, C);
the cells at layers//3 and 2*layers//3 are reductions and double C_cur; after each cell
C_{k-2} <- C_{k-1}, C_{k-1} <- multiplier * C_cur. A cell after a reduction reads its k-2 input at
twice the resolution, so its preprocess0 is a FactorizedReduce.

Consecutive cells with equal ``CellSpec`` have equal shapes and structure; their parameters are
stacked on a leading axis and run with one ``lax.scan``, which keeps the traced program (and the
compile time) small: DARTS_V2 at 20 cells compiles 9 cell bodies instead of 20.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jnas import space


class CellSpec(NamedTuple):
  reduction: bool
  reduction_prev: bool
  C_pp: int  # channels of the k-2 input
  C_p: int  # channels of the k-1 input
  C: int  # channels of each node inside the cell


class Group(NamedTuple):
  name: str  # key of the group's stacked parameters, e.g. 'cells_02'
  start: int  # index of its first cell
  size: int  # number of consecutive identical cells
  spec: CellSpec


def cell_plan(C: int, layers: int, *, C_stem: int, multiplier_normal: int, multiplier_reduce: int,
              reduction_prev_first: bool = False, C_stem_prev: int | None = None) -> list[CellSpec]:
  """Per-cell specs of a DARTS-style stack [quark0 ``NetworkCIFAR`` / ``NetworkImageNet``]."""
  if layers < 1:
    raise ValueError(f"a network needs at least 1 cell, got layers={layers}")
  if C < 1:
    raise ValueError(f"initial channels C must be >= 1, got {C}")
  reductions = set(space.reduction_layers(layers))
  C_pp, C_p, C_cur = (C_stem_prev if C_stem_prev is not None else C_stem), C_stem, C
  reduction_prev = reduction_prev_first
  plan = []
  for i in range(layers):
    reduction = i in reductions
    if reduction:
      C_cur *= 2
    plan.append(CellSpec(reduction, reduction_prev, C_pp, C_p, C_cur))
    multiplier = multiplier_reduce if reduction else multiplier_normal
    C_pp, C_p, reduction_prev = C_p, multiplier * C_cur, reduction
  return plan


def group_cells(plan: list[CellSpec], scan: bool = True) -> list[Group]:
  """Split the plan into runs of identical consecutive cells (singletons when ``scan=False``)."""
  groups = []
  for i, spec in enumerate(plan):
    if scan and groups and groups[-1].spec == spec:
      last = groups[-1]
      groups[-1] = last._replace(size=last.size + 1)
    else:
      groups.append(Group(f"cells_{i:02d}", i, 1, spec))
  return groups


def stack_init(init_fn: Callable, key, n: int):
  """``n`` independent initialisations of one cell, stacked on a leading axis."""
  return jax.vmap(init_fn)(jax.random.split(key, n))


CellFn = Callable  # (spec, params, stats, s0, s1, key) -> (out, new_stats)


def run_cells(groups: list[Group], cell_fn: CellFn, params: dict, stats: dict, s0, s1, key=None,
              taps: tuple[int, ...] = ()):
  """Run the stack; return (s1 after the last cell, new stats, {tap cell index: its output}).

  ``key`` (optional) is split into one key per cell, passed to ``cell_fn`` (drop path).
  A tapped cell must end its group (reduction cells, where the auxiliary head sits, always do).
  """
  n_cells = sum(g.size for g in groups)
  cell_keys = jax.random.split(key, n_cells) if key is not None else None
  new_stats, tapped = {}, {}
  for g in groups:
    p, s = params[g.name], stats[g.name]
    keys = cell_keys[g.start:g.start + g.size] if cell_keys is not None else None
    if g.size == 1:
      take = lambda t: jax.tree.map(lambda a: a[0], t)
      out, ns = cell_fn(g.spec, take(p), take(s), s0, s1, None if keys is None else keys[0])
      ns = jax.tree.map(lambda a: a[None], ns)
      prev = s1
    else:
      def body(carry, xs, spec=g.spec):
        c0, c1 = carry
        cp, cs, ck = xs
        out, ns = cell_fn(spec, cp, cs, c0, c1, ck)
        return (c1, out), ns

      (prev, out), ns = jax.lax.scan(body, (s0, s1), (p, s, keys))
    for t in taps:
      if g.start <= t < g.start + g.size and t != g.start + g.size - 1:
        raise ValueError(f"cell {t} is tapped but is not the last cell of its scanned group")
    if g.start + g.size - 1 in taps:
      tapped[g.start + g.size - 1] = out
    new_stats[g.name] = ns
    s0, s1 = prev, out
  return s1, new_stats, tapped


def declare_variables(module, init_variables):
  """Declare the linen params / batch_stats of ``init_variables`` (one linen variable per top-level
  entry); returns (params, {name: batch_stats variable}). Values are built once, at ``init``;
  during ``apply`` linen only checks shapes, which zeros of the right shape satisfy."""
  shapes = jax.eval_shape(init_variables, jax.random.key(0))
  built = init_variables(module.make_rng("params")) if module.is_initializing() else None

  def value(collection, name):
    if built is not None:
      return built[collection][name]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[collection][name])

  params = {n: module.param(n, lambda _, n=n: value("params", n)) for n in shapes["params"]}
  stats = {n: module.variable("batch_stats", n, lambda n=n: value("batch_stats", n)) for n in shapes["batch_stats"]}
  return params, stats


def global_avg_pool(x):
  return jnp.mean(x, axis=(1, 2))
