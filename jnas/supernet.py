"""The DARTS supernet: mixed ops, search cells and the search network, with mixing weights as input.

Mixed operation on edge (i, j), DARTS Eq. 2, with the mixing weights w given by the caller:
    o_bar^{(i,j)}(x) = sum_{o in O} w^{(i,j)}_o * o(x),
and node j = sum_{i < j+2} o_bar^{(i,j)}(x_i) [DARTS-P §2.1]. DARTS passes w = softmax(alpha);
other methods pass a Gumbel or Dirichlet sample, a one-hot architecture, or perturbed weights
(``jnas.search.edge_weights``). One set of network weights serves any mixing weights, and
``jax.grad`` can take the network weights, the mixing weights (and through them the alphas), or
both.

Static options (attributes): partial channels (PC-DARTS: the ops see C/K channels, the rest
bypass them, channel shuffle), per-edge op subsets (``op_mask``: P-DARTS's and DrNAS's pruned
ops, which then have no parameters), dropout after given ops (P-DARTS's skip dropout) and drop
path on edge outputs (SNAS), single-path execution (GDAS: a ``lax.switch`` per edge), pooling
without BN and a final BN + ReLU (xautodl), and GDAS-FRC's fixed reduction cell (``jnas.frc``).
Dropout rates are traced arguments of ``forward``.

Speed: edges are computed together, ``vmap``ped over stacked per-edge parameters, and ``none``
is skipped (its output is 0). Compile time grows with the number of distinct mixed-op bodies in
the program, so with ``scan=True`` (default) a normal cell runs its 14 edges as one ``lax.scan``
of 7 iterations of 2 edges (``cell_schedule``: an edge runs once its source node is complete),
and a reduction cell runs its 8 strided edges from the cell inputs as one batched call and its 6
edges between nodes as a scan of 3 iterations (measurements: ``benchmarks/results/speed_cpu.md``).
``scan=False``, and cells with an ``op_mask`` (whose edges differ), run a cell as ``steps + 1``
batched calls, one per source state.

References: quark0/darts ``cnn/model_search.py`` (``MixedOp``, ``Cell``, ``Network``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnas import frc, kernels, lhd, macro, ops, space

Array = Any


def init_alphas(key, *, steps: int = space.STEPS, num_ops: int = len(space.PRIMITIVES),
                scheme: str = "normal", scale: float = 1e-3) -> dict:
  """Architecture weights ``{'normal': (E, num_ops), 'reduce': (E, num_ops)}``, E = 14 for 4 nodes.

  Warning: the DARTS paper (App. A.1.1) initialises alpha to zero, the quark0 code
  (``_initialize_alphas``) to 1e-3 * N(0, 1). The default, ``scheme='normal'``, follows the code;
  ``scheme='zeros'`` follows the paper.
  """
  shape = (space.num_edges(steps), num_ops)
  if scheme == "zeros":
    return {"normal": jnp.zeros(shape), "reduce": jnp.zeros(shape)}
  if scheme != "normal":
    raise ValueError(f"unknown alpha init scheme {scheme!r}; use 'normal' or 'zeros'")
  k1, k2 = jax.random.split(key)
  return {"normal": scale * jax.random.normal(k1, shape), "reduce": scale * jax.random.normal(k2, shape)}


class EdgeGroup(NamedTuple):
  """Edges ``lo:hi`` of ``params[param_set]`` leave state ``source`` and enter ``targets``."""
  param_set: str
  lo: int
  hi: int
  source: int
  targets: tuple[int, ...]
  alpha_rows: tuple[int, ...]


def _edge_groups(steps: int) -> list[EdgeGroup]:
  """Static layout of a cell's edges as groups that share a source state.

  'edges_in' holds [s0->0 .. s0->n-1, s1->0 .. s1->n-1]; 'edges_mid' the edges between
  intermediate nodes, by source node i, targets i+1 .. n-1.
  """
  groups = []
  for src in range(space.NUM_INPUTS):
    targets = tuple(range(steps))
    groups.append(EdgeGroup("edges_in", src * steps, (src + 1) * steps, src, targets,
                            tuple(space.edge_index(src, j) for j in targets)))
  lo = 0
  for i in range(steps - 1):
    targets = tuple(range(i + 1, steps))
    groups.append(EdgeGroup("edges_mid", lo, lo + len(targets), i + space.NUM_INPUTS, targets,
                            tuple(space.edge_index(i + space.NUM_INPUTS, j) for j in targets)))
    lo += len(targets)
  return groups


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gather_edges(xs, idx: tuple[int, ...]):
  """``stack([xs[i] for i in idx])``: each edge's input state, from the stacked source states.

  Its transpose sums each source's edge cotangents with elementwise adds, which XLA:CPU fuses; the
  ``reduce_sum`` that autodiff of a broadcast produces ran 10x slower (24 ms for 4 x 64x32x32x16).
  """
  if all(i == 0 for i in idx) and xs.shape[0] == 1:
    return jnp.broadcast_to(xs, (len(idx),) + xs.shape[1:])
  return jnp.stack([xs[i] for i in idx])


def _gather_edges_fwd(xs, idx):
  return gather_edges(xs, idx), xs.shape[0]


def _gather_edges_bwd(idx, num_sources, g):
  sums = [None] * num_sources
  for e, i in enumerate(idx):
    sums[i] = g[e] if sums[i] is None else sums[i] + g[e]
  return (jnp.stack([jnp.zeros(g.shape[1:], g.dtype) if t is None else t for t in sums]),)


gather_edges.defvjp(_gather_edges_fwd, _gather_edges_bwd)


def edge_schedule(edges, complete, k: int):
  """Order ``edges`` (source state, target state) into iterations of exactly ``k`` edges for one
  ``lax.scan``: an edge may run once its source state is complete (all its incoming edges done
  in earlier iterations); among ready edges the nearest targets go first. Returns the list of
  iterations, or ``None`` where some iteration would have fewer than ``k`` ready edges.

  DARTS normal cell (states 0, 1 are the inputs, 2..5 the nodes; k=2): (0,2) (1,2) | (0,3) (1,3) |
  (2,3) (0,4) | (1,4) (2,4) | (3,4) (0,5) | (1,5) (2,5) | (3,5) (4,5).
  """
  complete, remaining, schedule = set(complete), list(edges), []
  while remaining:
    ready = sorted((e for e in remaining if e[0] in complete), key=lambda e: (e[1], e[0]))
    if len(ready) < k:
      return None
    schedule.append(ready[:k])
    for e in ready[:k]:
      remaining.remove(e)
    complete.update(t for t in {e[1] for e in ready[:k]} if all(r[1] != t for r in remaining))
  return schedule


def _chunked_schedule(edges, complete, k: int):
  """``edges`` in their own order, ``k`` per iteration, if that order is a valid schedule (every
  source state complete before its first out-edge's iteration, and no edge's source completed in
  its own iteration); else ``None``."""
  if len(edges) % k:
    return None
  complete, schedule = set(complete), [edges[t:t + k] for t in range(0, len(edges), k)]
  for t, it in enumerate(schedule):
    if any(i not in complete for i, _ in it):
      return None
    later = [e for later_it in schedule[t + 1:] for e in later_it]
    complete.update(j for _, j in it if all(e[1] != j for e in later))
  return schedule


def cell_schedule(steps: int, with_inputs: bool) -> list[list[tuple[int, int]]] | None:
  """The scan schedule of a search cell's edges, as (source state, target state) pairs.

  ``with_inputs``: all edges (a normal cell: every edge has stride 1 and the same shapes);
  otherwise only the edges between intermediate nodes (a reduction cell, whose edges from the
  cell inputs run apart, strided). Uses the largest k <= 4 that gives at least 3 iterations;
  ``None`` where none does (then the cell is unrolled by source state). Where the parameters'
  own order (``_edge_groups``: by source state, then target) is a valid schedule it is used as it
  is, so that the scan reads the stacked parameters without a permutation (a gather per parameter
  array and cell, and a scatter in the backward pass: 391 of the weight step's 8,238 XLA fusions at
  paper size); otherwise ``edge_schedule`` orders them.
  """
  n = space.NUM_INPUTS
  edges = [(g.source, t + n) for g in _edge_groups(steps) for t in g.targets if with_inputs or g.source >= n]
  complete = set(range(n)) if with_inputs else set(range(n + 1))
  for k in (4, 3, 2, 1):
    schedule = _chunked_schedule(edges, complete, k) or edge_schedule(edges, complete, k)
    if schedule is not None and len(schedule) >= 3:
      return schedule
  return None


def _slice(tree, lo, hi):
  return jax.tree.map(lambda a: a[lo:hi], tree)


# ------------------------------------------------------------------------------- static options
OpMask = tuple[tuple[tuple[bool, ...], ...], tuple[tuple[bool, ...], ...]]


def make_op_mask(normal, reduce) -> OpMask:
  """A hashable per-edge op mask ``(normal, reduce)`` from two (E, n_ops) boolean arrays: entry
  [e, o] says whether op o exists on edge e (P-DARTS switches, DrNAS's pruned ops)."""
  as_rows = lambda m: tuple(tuple(bool(v) for v in row) for row in np.asarray(m, bool))
  return as_rows(normal), as_rows(reduce)


channel_shuffle = ops.channel_shuffle  # PC-DARTS's shuffle of the partial-channel outputs


def search_op(name: str, C: int, stride: int, pool_bn: bool = True, family: str = "darts") -> ops.Op:
  """A mixed op's candidate: BN affine off everywhere; pooling followed by an affine-free BN
  [quark0 MixedOp] (``pool_bn=False``: bare pooling, as xautodl's GDAS supernet); ``family``: the
  op definitions (``jnas.ops.make_op``: 'darts' or 'lhd')."""
  return ops.make_op(name, C, stride, affine=False, pool_bn=pool_bn, family=family)


def _dropout(key, x, rate):
  """Inverted element-wise dropout (``nn.Dropout(rate)``): x * Bernoulli(1 - rate) / (1 - rate)."""
  keep = 1.0 - rate
  return jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep, jnp.zeros((), x.dtype))


class EdgeExtras(NamedTuple):
  """Per-call dynamic inputs of ``mixed_ops`` beyond the op weights (all optional).

  keys: (E,) PRNG keys, one per edge (skip dropout, drop path); edge_scale: (E,) factor on each
  edge's output (PC-DARTS edge normalisation); op_dropout_rate, drop_path_rate: traced scalars.
  """
  keys: Any = None
  edge_scale: Any = None
  op_dropout_rate: Any = None
  drop_path_rate: Any = None


@functools.partial(jax.jit, static_argnames=("primitives", "idx", "C", "stride", "train", "conv_impl", "present",
                                             "partial_channels", "pool_bn", "dropout_ops", "family"))
def mixed_ops(op_params, op_stats, xs, weights, extras: EdgeExtras = EdgeExtras(), *, primitives: tuple[str, ...],
              idx: tuple[int, ...], C: int, stride: int, train: bool, conv_impl: str,
              present: tuple[tuple[int, ...], ...] | None = None, partial_channels: int = 1,
              pool_bn: bool = True, dropout_ops: tuple[str, ...] = (), family: str = "darts"):
  """Mixed ops (DARTS Eq. 2) on E edges; edge e reads source state ``xs[idx[e]]``.

  Args:
    op_params, op_stats: each op's parameters and BN statistics, stacked over the edges that
      have the op (all E edges unless ``present`` says otherwise).
    xs: (S, B, H, W, C) source states; idx: E source positions (static).
    weights: (E, n_ops) mixing weights of these edges (softmax(alpha) in DARTS).
    extras: ``EdgeExtras`` (keys, edge scale, dropout rates).
    present: per op, the positions of the edges that have it (None: every edge has every op).
    partial_channels: K of PC-DARTS: the ops see the first C/K channels, the other channels bypass
      them (a 2x2 max pool at stride 2) and the concatenation is channel-shuffled with K groups.
    dropout_ops: ops whose (stride-1) output gets inverted dropout at ``extras.op_dropout_rate``
      (P-DARTS: ``('skip_connect',)``; needs ``extras.keys``).

  Returns:
    (E, B, H', W', C) edge outputs and the new BN statistics.

  Ops without parameters (pooling, and its affine-free BN) give the same output on every edge
  that reads the same state, so they run once per source; their per-edge running statistics
  stay identical.

  It is a ``jax.jit`` function so that JAX traces (and differentiates) one edge group once per
  distinct shape and configuration: every normal cell of a stage has the same groups (tracing
  time); XLA inlines the calls, so the compiled program is the same.
  """
  E, K = len(idx), partial_channels
  Cp = C // K
  x_ops = xs if K == 1 else xs[..., :Cp]
  out, per_edge, new_stats, xe_all = None, None, {}, None  # xe_all: each edge's input, built on first use
  if present is not None:
    per_edge = [None] * E
  for o, name in enumerate(primitives):
    if name == "none":
      continue  # o(x) = 0
    edges = tuple(range(E)) if present is None else present[o]
    if not edges:
      continue
    sub = tuple(idx[e] for e in edges)
    op = search_op(name, Cp, stride, pool_bn, family)
    p, s = op_params.get(name, {}), op_stats.get(name, {})
    if op.is_identity:
      y = gather_edges(x_ops, sub)
    elif not jax.tree.leaves(p):  # parameter-free: one evaluation per source state
      sources = sorted(set(sub))
      ys, nss = [], []
      for src in sources:
        e = sub.index(src)
        y_s, ns_s = op.apply({}, jax.tree.map(lambda a: a[e], s), x_ops[src], train, conv_impl)
        ys.append(y_s)
        nss.append(ns_s)
      y = gather_edges(jnp.stack(ys), tuple(sources.index(i) for i in sub))
      if name in op_stats:
        new_stats[name] = jax.tree.map(lambda *a: jnp.stack([a[sources.index(i)] for i in sub]), *nss)
    else:
      if present is not None:
        xe = gather_edges(x_ops, sub)
      elif xe_all is None:
        xe = xe_all = gather_edges(x_ops, idx)
      else:
        xe = xe_all
      apply = lambda p_, s_, x_, op=op: op.apply(p_, s_, x_, train, conv_impl)
      y, ns = jax.vmap(apply)(p, s, xe)
      if name in op_stats:
        new_stats[name] = ns
    if name in dropout_ops and stride == 1 and extras.keys is not None:
      keys = jnp.stack([extras.keys[e] for e in edges]) if present is not None else extras.keys
      y = jax.vmap(lambda k, v: _dropout(jax.random.fold_in(k, 0), v, extras.op_dropout_rate))(keys, y)
    if present is None:
      w = weights[:, o][:, None, None, None, None]
      out = w * y if out is None else out + w * y
    else:
      for j, e in enumerate(edges):
        term = weights[e, o] * y[j]
        per_edge[e] = term if per_edge[e] is None else per_edge[e] + term
  if present is not None:
    if any(t is None for t in per_edge):  # an edge with no op but 'none'
      shape = next(t for t in per_edge if t is not None).shape
      per_edge = [jnp.zeros(shape, xs.dtype) if t is None else t for t in per_edge]
    out = jnp.stack(per_edge)
  if out is None:  # only 'none' on every edge
    out = jnp.zeros((E,) + x_ops[0, :, ::stride, ::stride].shape, xs.dtype)
  if K > 1:
    bypass = gather_edges(xs[..., Cp:], idx)
    if stride == 2:
      bypass = jax.vmap(lambda v: kernels.max_pool(v, 2, 2, 0))(bypass)
    out = channel_shuffle(jnp.concatenate([out, bypass], axis=-1), K)
  if extras.edge_scale is not None:
    out = extras.edge_scale[:, None, None, None, None] * out
  if extras.drop_path_rate is not None and extras.keys is not None:
    out = jax.vmap(lambda k, v: drop_path(jax.random.fold_in(k, 1), v, extras.drop_path_rate))(extras.keys, out)
  return out, new_stats


def drop_path(key, x, rate):
  """Per-sample drop path, x * Bernoulli(1 - rate)[b] / (1 - rate) [quark0 ``utils.drop_path``]."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


def single_path_op(op_params, op_stats, x, w, *, primitives: tuple[str, ...], C: int, stride: int, train: bool,
                   conv_impl: str, pool_bn: bool = True, family: str = "darts"):
  """One edge of a single-path supernet (GDAS): only op k = argmax(w) runs, y = w[k] o_k(x).

  With GDAS's straight-through weights h = onehot(k) - sg(p) + p this is
  sum_o onehot_o (o(x) h_o), whose alpha gradient reaches p_k only (the "all ops times h" form
  would let every op's output into it). A ``lax.switch``: one branch executes, only op k's
  weights get a gradient and only its BN statistics change. Under ``vmap`` (seeds) the switch
  becomes a select that computes every branch (the values stay exact).
  """
  def branch(o):
    name = primitives[o]

    def run(operands):
      p, s, v = operands
      op = search_op(name, C, stride, pool_bn, family)
      y, ns = op.apply(p.get(name, {}), s.get(name, {}), v, train, conv_impl)
      s = dict(s)
      if name in s:
        s[name] = ns
      return w[o] * y, s
    return run

  return lax.switch(jnp.argmax(w), [branch(o) for o in range(len(primitives))], (op_params, op_stats, x))


CELL_TYPES = ("normal", "reduce")
REDUCE_CELLS = ("searched", "gdas_frc")
CELL_SPACES = ("darts", "lhd")



class SearchNetwork(nn.Module):
  """The DARTS search network (quark0 ``model_search.Network``), NHWC, with mixing weights as input.

  Use it as a linen module:
    variables = net.init(key, images, weights)           # {'params', 'batch_stats'}
    logits, upd = net.apply(variables, images, weights, train=True, mutable=['batch_stats'])
  or through the pure functions ``init_variables`` and ``forward`` (what ``jnas.search`` uses).
  ``weights`` are per cell type, ``{'normal': (E, n_ops), 'reduce': (E, n_ops)}``: softmax(alpha)
  for DARTS, a Gumbel or Dirichlet sample, a one-hot architecture (``jnas.search.edge_weights``).

  Attributes:
    C: initial channels (16 in DARTS); layers: cells (8); num_classes.
    steps: intermediate nodes per cell (4; CNAS uses 6); multiplier: nodes concatenated (= steps).
    stem_multiplier: stem width C * 3. primitives: the op set (``none`` may be absent).
    conv_impl: 'auto' | 'shift' | 'xla' (``jnas.kernels``). scan: scan runs of identical cells.
    partial_channels: K of PC-DARTS (1: every op sees all channels).
    op_mask: ``make_op_mask(normal, reduce)``: which ops exist on which edge (None: all); pruned
      ops have no parameters and cost nothing; their weights must be 0.
    op_dropout: ops whose stride-1 output gets inverted dropout (P-DARTS: ``('skip_connect',)``),
      at the ``op_dropout_rate`` given to ``forward``.
    edge_drop_path: drop path on every edge output at ``forward``'s ``drop_path_rate`` (SNAS).
    single_path: the weights are one-hot; each edge runs only its argmax op (GDAS).
    pool_bn: BN after pooling ops (DARTS; xautodl's GDAS supernet has none).
    reduce_cell: 'searched' (DARTS) or 'gdas_frc' (GDAS-FRC's fixed reduction cell; no 'reduce'
      weights then).
    final_bn_relu: BN + ReLU before the global pool (xautodl's ``lastact``).
    stem_affine: the stem BN's affine parameters (quark0: on; CNAS ``model_search.py``: off).
    cell_space: 'darts' or 'lhd' (``LHD_SPACE`` below): the LHD cell (Zhang and Ding, ICML 2023).

  The LHD cell [LHD ``search/concate_sum_five_sig.py``]: LHD's ops (``jnas.ops``, family 'lhd'),
  5 nodes by default (``steps``); node j's state n_j = sum over its (input, op) pairs of
  w_{(i, o)} o(x_i), where the caller's weights w are one joint distribution per node over all its
  pairs (``jnas.search.spaces``); later nodes read the gated state g_j n_j; the cell has two
  outputs, the sum path sum_j a_j n_j and the concat path concat_j (g_j n_j), with
  ``weights[t + '_output']`` = [a; g] (2, steps) (a = softmax(beta_0), g = sigmoid(beta_1) in LHD).
  A cell reads the previous cell's (sum, concat) through preprocess0 (identity, a 1x1 ReLU-conv-BN
  in reduction cells, whose C doubles) and preprocess1 (1x1 ReLU-conv-BN); stride-2 ops on the
  input edges reduce. Two stems, 3x3 conv + BN to C (the first cell's sum input) and to
  ``stem_multiplier`` * C; the classifier reads GAP(concat(sum, concat)) of the last cell.
  """

  C: int = 16
  layers: int = 8
  num_classes: int = 10
  steps: int = space.STEPS
  multiplier: int | None = None
  stem_multiplier: int = 3
  primitives: Sequence[str] = space.PRIMITIVES
  conv_impl: str = "auto"
  scan: bool = True
  partial_channels: int = 1
  op_mask: OpMask | None = None
  op_dropout: tuple[str, ...] = ()
  edge_drop_path: bool = False
  single_path: bool = False
  pool_bn: bool = True
  reduce_cell: str = "searched"
  final_bn_relu: bool = False
  stem_affine: bool = True
  cell_space: str = "darts"

  # ------------------------------------------------------------------------------ static layout
  @property
  def _multiplier(self) -> int:
    return self.steps if self.multiplier is None else self.multiplier

  @property
  def _family(self) -> str:
    return "lhd" if self.cell_space == "lhd" else "darts"

  @property
  def _lhd(self) -> bool:
    return self.cell_space == "lhd"

  @property
  def cell_types(self) -> tuple[str, ...]:
    """The cell types with mixing weights: ('normal', 'reduce'), or ('normal',) for GDAS-FRC."""
    return CELL_TYPES if self.reduce_cell == "searched" else ("normal",)

  def plan(self) -> list[macro.CellSpec]:
    mult_r = self._multiplier if self.reduce_cell == "searched" else frc.MULTIPLIER
    if self._lhd:
      return macro.lhd_cell_plan(self.C, self.layers, C_stem=self.stem_multiplier * self.C,
                                 multiplier_normal=self._multiplier, multiplier_reduce=mult_r)
    return macro.cell_plan(self.C, self.layers, C_stem=self.stem_multiplier * self.C,
                           multiplier_normal=self._multiplier, multiplier_reduce=mult_r)

  def groups(self) -> list[macro.Group]:
    return macro.group_cells(self.plan(), self.scan)

  def _check(self):
    if self.cell_space not in CELL_SPACES:
      raise ValueError(f"unknown cell_space {self.cell_space!r}; use one of {CELL_SPACES}")
    known = ops.LHD_OP_NAMES + ("aux_skip",) if self._lhd else ops.OP_NAMES
    unknown = [p for p in self.primitives if p not in known]
    if unknown:
      raise ValueError(f"unknown op(s) {unknown} in primitives of the {self.cell_space} space; known: {', '.join(known)}")
    if self._lhd and (self.reduce_cell != "searched" or self.op_mask is not None):
      raise ValueError("the LHD cell space has no fixed reduction cell and no per-edge op mask")
    if self._multiplier > self.steps:
      raise ValueError(f"multiplier {self._multiplier} exceeds steps {self.steps}")
    K = self.partial_channels
    if K < 1:
      raise ValueError(f"partial_channels must be >= 1, got {K}")
    if K > 1:
      for spec in self.plan():
        if spec.C % K:
          raise ValueError(f"partial_channels={K} needs every cell's channels to split into {K} groups; a cell "
                           f"has {spec.C}")
        if spec.reduction and (spec.C // K) % 2 and "skip_connect" in self.primitives:
          raise ValueError(f"partial_channels={K}: a reduction cell's ops see {spec.C} / {K} = {spec.C // K} "
                           "channels, but its strided skip_connect (FactorizedReduce) needs an even number")
    if self.single_path and (K > 1 or self.op_mask is not None):
      raise ValueError("single_path does not combine with partial_channels or op_mask")
    if self.reduce_cell not in REDUCE_CELLS:
      raise ValueError(f"unknown reduce_cell {self.reduce_cell!r}; use one of {REDUCE_CELLS}")
    bad = [o for o in self.op_dropout if o not in self.primitives]
    if bad:
      raise ValueError(f"op_dropout names op(s) {bad} that are not in primitives {tuple(self.primitives)}")
    if self.op_mask is not None:
      shape = (space.num_edges(self.steps), len(self.primitives))
      for t, m in zip(CELL_TYPES, self.op_mask):
        if np.asarray(m).shape != shape:
          raise ValueError(f"op_mask[{t!r}] has shape {np.asarray(m).shape}, expected {shape}")

  def _mask(self, cell_type: str) -> np.ndarray | None:
    if self.op_mask is None:
      return None
    return np.asarray(self.op_mask[CELL_TYPES.index(cell_type)], bool)

  def _set_rows(self, set_name: str) -> list[int]:
    """Alpha rows of a parameter set's edges, in its stacked order."""
    return [r for g in _edge_groups(self.steps) if g.param_set == set_name for r in g.alpha_rows]

  def _present(self, cell_type: str, rows) -> tuple[tuple[int, ...], ...] | None:
    """Per op, the positions among ``rows`` whose edge has the op (None without a mask)."""
    mask = self._mask(cell_type)
    if mask is None:
      return None
    return tuple(tuple(k for k, r in enumerate(rows) if mask[r, o]) for o in range(len(self.primitives)))

  def _preprocess(self, spec: macro.CellSpec):
    if self._lhd:
      return lhd.preprocess(spec, affine=False)
    pre0 = (ops.factorized_reduce(spec.C_pp, spec.C, False) if spec.reduction_prev
            else ops.relu_conv_bn(spec.C_pp, spec.C, False))
    return pre0, ops.relu_conv_bn(spec.C_p, spec.C, False)

  # ------------------------------------------------------------------------------------- init
  def _init_cell(self, spec: macro.CellSpec, key):
    if spec.reduction and self.reduce_cell == "gdas_frc":
      return frc.init(key, spec, affine=False)
    pre0, pre1 = self._preprocess(spec)
    k0, k1, k_in, k_mid = jax.random.split(key, 4)
    params, stats = {}, {}
    (params["pre0"], stats["pre0"]), (params["pre1"], stats["pre1"]) = pre0.init(k0), pre1.init(k1)
    cell_type = "reduce" if spec.reduction else "normal"
    Cp = spec.C // self.partial_channels
    for set_name, k, stride in (("edges_in", k_in, 2 if spec.reduction else 1), ("edges_mid", k_mid, 1)):
      params[set_name], stats[set_name] = {}, {}
      rows = self._set_rows(set_name)
      if not rows:
        continue
      present = self._present(cell_type, rows)
      for o, name in enumerate(self.primitives):
        if present is not None and not present[o]:
          continue
        op = search_op(name, Cp, stride, self.pool_bn, self._family)
        p, s = macro.stack_init(op.init, jax.random.fold_in(k, o), len(rows))
        if present is not None:  # the full layout's draws, kept on the edges that have the op
          pick = np.asarray(present[o])
          p, s = jax.tree.map(lambda a: a[pick], p), jax.tree.map(lambda a: a[pick], s)
        if jax.tree.leaves(p):
          params[set_name][name] = p
        if jax.tree.leaves(s):
          stats[set_name][name] = s
    return params, stats

  def init_variables(self, key) -> dict:
    """``{'params': ..., 'batch_stats': ...}`` with PyTorch's default initialisation."""
    self._check()
    k_stem, k_cells, k_cls = jax.random.split(key, 3)
    C_stem = self.stem_multiplier * self.C
    stem_params, stem_stats = ops.conv_bn_init(k_stem, 3, 3, 3, C_stem)  # quark0: the search stem BN is affine
    if not self.stem_affine:
      stem_params = {**stem_params, "bn": {}}
    params, stats = {"stem": stem_params}, {"stem": stem_stats}
    if self._lhd:  # the sum-path stem (LHD's stem_0: affine BN, as its stem_1)
      params["stem0"], stats["stem0"] = ops.conv_bn_init(jax.random.fold_in(k_stem, 1), 3, 3, 3, self.C)
      if not self.stem_affine:
        params["stem0"] = {**params["stem0"], "bn": {}}
    for g in self.groups():
      init = functools.partial(self._init_cell, g.spec)
      params[g.name], stats[g.name] = macro.stack_init(init, jax.random.fold_in(k_cells, g.start), g.size)
    last = self.plan()[-1]
    C_last = (frc.MULTIPLIER if last.reduction and self.reduce_cell == "gdas_frc" else self._multiplier) * last.C
    if self._lhd:
      C_last += last.C  # concat(sum path, concat path)
    if self.final_bn_relu:
      params["lastact"], stats["lastact"] = ops.bn_init(C_last, True)
    params["classifier"] = ops.linear_init(k_cls, C_last, self.num_classes)
    return {"params": params, "batch_stats": stats}

  # ------------------------------------------------------------------------------------ apply
  def _mixed_group(self, op_params, op_stats, xs, idx, weights, C, stride, train, extras=EdgeExtras(),
                   present=None):
    """``mixed_ops`` with this network's op set, options and conv implementation."""
    return mixed_ops(op_params, op_stats, xs, weights, extras, primitives=tuple(self.primitives), idx=tuple(idx),
                     C=C, stride=stride, train=train, conv_impl=self.conv_impl, present=present,
                     partial_channels=self.partial_channels, pool_bn=self.pool_bn,
                     dropout_ops=tuple(self.op_dropout), family=self._family)

  def _extras(self, key, rows, edge_scale, rates):
    """``EdgeExtras`` for the edges with alpha ``rows`` (static list or a traced array)."""
    op_rate, dp_rate = rates
    need_keys = key is not None and (self.op_dropout or self.edge_drop_path)
    keys = None
    if need_keys:
      keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.asarray(rows, jnp.int32))
    return EdgeExtras(keys=keys, edge_scale=None if edge_scale is None else edge_scale[jnp.asarray(rows)],
                      op_dropout_rate=op_rate if (need_keys and self.op_dropout) else None,
                      drop_path_rate=dp_rate if (need_keys and self.edge_drop_path) else None)

  def _cell(self, spec, params, stats, s0, s1, key, mix, train):
    """One search cell; ``mix`` = (weights (E, n_ops), edge scale (E,) or None, rates) of its type."""
    if spec.reduction and self.reduce_cell == "gdas_frc":
      return frc.apply(params, stats, s0, s1, spec, train, self.conv_impl)
    out_w = mix[3]  # LHD's (2, steps) output rows [sum-path weights; gates], else None
    if self.single_path:
      return self._single_path_cell(spec, params, stats, s0, s1, mix[0], train, out_w)
    weights, edge_scale, rates = mix[:3]
    gates = None if out_w is None else out_w[1]
    cell_type = "reduce" if spec.reduction else "normal"
    dynamic = key is not None and (self.op_dropout or self.edge_drop_path)
    pre0, pre1 = self._preprocess(spec)
    new = {"edges_in": {}, "edges_mid": {}}
    s0, new["pre0"] = pre0.apply(params["pre0"], stats["pre0"], s0, train)
    s1, new["pre1"] = pre1.apply(params["pre1"], stats["pre1"], s1, train)
    states = [s0, s1]
    masked = self.op_mask is not None
    full = cell_schedule(self.steps, with_inputs=True) if self.scan and not spec.reduction and not masked else None
    if full is not None:  # one scan over all 14 edges
      n_in = space.NUM_INPUTS * self.steps
      cat = lambda a, b: jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)
      buffer = jnp.stack(states + [jnp.zeros_like(s1)] * self.steps)
      read_scale = None if gates is None else jnp.concatenate([jnp.ones((space.NUM_INPUTS,), gates.dtype), gates])
      buffer, ns = self._edges_scan(full, cat(params["edges_in"], params["edges_mid"]),
                                    cat(stats["edges_in"], stats["edges_mid"]), buffer, weights, spec.C, train,
                                    key=key if dynamic else None, edge_scale=edge_scale, rates=rates,
                                    read_scale=read_scale)
      new["edges_in"] = jax.tree.map(lambda a: a[:n_in], ns)
      new["edges_mid"] = jax.tree.map(lambda a: a[n_in:], ns)
      return self._cell_output([buffer[space.NUM_INPUTS + j] for j in range(self.steps)], out_w), new
    outputs = {}  # (source, target) -> edge output
    pending = {"edges_in": [], "edges_mid": []}
    groups = _edge_groups(self.steps)

    def run(set_name, lo, hi, xs, idx, targets, rows, stride):
      present = self._present(cell_type, rows)
      if present is None:
        p, s = _slice(params[set_name], lo, hi), _slice(stats[set_name], lo, hi)
      else:  # each op's stack holds only its edges: take the next len(present[o]) entries
        p, s = {}, {}
        before = self._present(cell_type, self._set_rows(set_name)[:lo])
        for o, name in enumerate(self.primitives):
          a, b = len(before[o]), len(before[o]) + len(present[o])
          if name in params[set_name]:
            p[name] = _slice(params[set_name][name], a, b)
          if name in stats[set_name]:
            s[name] = _slice(stats[set_name][name], a, b)
      extras = self._extras(key, rows, edge_scale, rates) if (dynamic or edge_scale is not None) else EdgeExtras()
      y, ns = self._mixed_group(p, s, xs, idx, weights[np.asarray(rows)], spec.C, stride, train, extras, present)
      for k, key_ in enumerate(targets):
        outputs[key_] = y[k]
      pending[set_name].append(ns)

    # The 2*steps edges leaving the two cell inputs share shapes and stride: one batched call.
    in_groups = groups[:space.NUM_INPUTS]
    run("edges_in", 0, space.NUM_INPUTS * self.steps, jnp.stack(states),
        tuple(g.source for g in in_groups for _ in g.targets),
        [(g.source, j) for g in in_groups for j in g.targets], sum((g.alpha_rows for g in in_groups), ()),
        2 if spec.reduction else 1)
    schedule = cell_schedule(self.steps, with_inputs=False) if self.scan and not masked else None
    if schedule is None:
      for j in range(self.steps):
        node = sum(outputs[(i, j)] for i in range(j + space.NUM_INPUTS))
        states.append(node)
        if j < self.steps - 1:
          g = groups[space.NUM_INPUTS + j]
          read = node if gates is None else gates[j] * node
          run(g.param_set, g.lo, g.hi, read[None], (0,) * len(g.targets), [(g.source, t) for t in g.targets],
              g.alpha_rows, 1)
    else:
      # The nodes only (a reduction cell's inputs have another resolution): buffer[0] is state 2.
      partial = jnp.stack([outputs[(0, j)] + outputs[(1, j)] for j in range(self.steps)])
      buffer, ns = self._edges_scan(schedule, params["edges_mid"], stats["edges_mid"], partial, weights,
                                    spec.C, train, offset=space.NUM_INPUTS * self.steps,
                                    first_state=space.NUM_INPUTS, key=key if dynamic else None,
                                    edge_scale=edge_scale, rates=rates, read_scale=gates)
      pending["edges_mid"].append(ns)
      states += [buffer[i] for i in range(self.steps)]
    for set_name, parts in pending.items():
      if masked:  # each op's statistics, over the calls whose edges have it (in the stack's order)
        names = [n for n in self.primitives if any(n in part for part in parts)]
        new[set_name] = {n: jax.tree.map(lambda *a: jnp.concatenate(a), *[part[n] for part in parts if n in part])
                         for n in names}
      elif parts and jax.tree.leaves(parts[0]):
        new[set_name] = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
      elif parts:
        new[set_name] = parts[0]
    return self._cell_output(states[space.NUM_INPUTS:], out_w), new

  def _cell_output(self, nodes, out_w):
    """DARTS: concat of the last ``multiplier`` nodes. LHD (``out_w`` = [a; g]): the pair
    (sum_j a_j n_j, concat_j g_j n_j) over the nodes (the concat over the last ``multiplier``)."""
    if out_w is None:
      return jnp.concatenate(nodes[-self._multiplier:], axis=-1)
    total = sum(out_w[0, j] * nodes[j] for j in range(self.steps))
    gated = [out_w[1, j] * nodes[j] for j in range(self.steps - self._multiplier, self.steps)]
    return total, jnp.concatenate(gated, axis=-1)

  def _edges_scan(self, schedule, params, stats, buffer, weights, C, train, offset: int = 0,
                  first_state: int = 0, key=None, edge_scale=None, rates=(None, None), read_scale=None):
    """Run a cell's stride-1 edges as one ``lax.scan`` over ``schedule`` (``cell_schedule``): one
    compiled mixed-op body instead of one per source state (compile time), same arithmetic.

    Args:
      schedule: iterations of (source state, target state) pairs.
      params, stats: the edges' stacked parameters, in the order [edges from the cell inputs by
        input then node; edges between nodes by source then target], less the first ``offset``.
      buffer: (states, B, H, W, C) from state ``first_state`` on: the cell inputs (state 0, 1)
        and each node's sum over the edges already computed (zeros for a node with none yet).
      key, edge_scale, rates: the cell's key (dropout, drop path), edge scale and rates.
      read_scale: (states,) factors on the buffer's states where an edge reads them (LHD's gates;
        None: 1), aligned with ``buffer``.
    Returns:
      the buffer with every node complete, and the edges' new BN statistics in ``params`` order.
    """
    n = space.NUM_INPUTS
    order = [(g.source, t + n) for g in _edge_groups(self.steps) for t in g.targets][offset:]
    perm = np.asarray([order.index(e) for it in schedule for e in it])
    n_iter, k = len(schedule), len(schedule[0])
    in_order = bool((perm == np.arange(len(perm))).all())  # the usual case: no gather (cell_schedule)
    reorder = (lambda a: a) if in_order else (lambda a: a[perm])
    by_iter = lambda tree: jax.tree.map(lambda a: reorder(a).reshape((n_iter, k) + a.shape[1:]), tree)
    rows = np.asarray([[space.edge_index(i, j - n) for i, j in it] for it in schedule])
    src = jnp.asarray([[i - first_state for i, _ in it] for it in schedule], jnp.int32)
    dst = jnp.asarray([[j - first_state for _, j in it] for it in schedule], jnp.int32)
    dynamic = key is not None or edge_scale is not None

    def body(buf, xs):
      p, s, w, src_t, dst_t = xs[:5]
      rows_t = xs[5] if dynamic else None
      xe = jnp.stack([lax.dynamic_index_in_dim(buf, src_t[e], keepdims=False) for e in range(k)])
      if read_scale is not None:
        xe = xe * read_scale[src_t][:, None, None, None, None]
      extras = self._extras(key, rows_t, edge_scale, rates) if dynamic else EdgeExtras()
      y, ns = self._mixed_group(p, s, xe, tuple(range(k)), w, C, 1, train, extras)
      for e in range(k):
        buf = lax.dynamic_update_index_in_dim(
            buf, lax.dynamic_index_in_dim(buf, dst_t[e], keepdims=False) + y[e], dst_t[e], 0)
      return buf, ns

    xs = (by_iter(params), by_iter(stats), weights[rows], src, dst)
    buffer, ns = lax.scan(body, buffer, xs + ((jnp.asarray(rows, jnp.int32),) if dynamic else ()))
    unorder = (lambda a: a) if in_order else (lambda a: a[np.argsort(perm)])
    return buffer, jax.tree.map(lambda a: unorder(a.reshape((n_iter * k,) + a.shape[2:])), ns)

  def _single_path_cell(self, spec, params, stats, s0, s1, weights, train, out_w=None):
    """A cell whose every edge runs one op (``single_path_op``), the edges as ``lax.scan``s of one
    edge per iteration in the parameters' order (a valid schedule for k = 1).

    LHD (``out_w`` given): the weights are one-hot per node (over its (input, op) pairs), so most
    edges have an all-zero row; such an edge's output is multiplied by sg(any(w != 0)) = 0, so that
    its op-0 term passes no gradient to the unsampled pair."""
    pre0, pre1 = self._preprocess(spec)
    new = {}
    s0, new["pre0"] = pre0.apply(params["pre0"], stats["pre0"], s0, train)
    s1, new["pre1"] = pre1.apply(params["pre1"], stats["pre1"], s1, train)
    n = space.NUM_INPUTS
    edge_op = functools.partial(single_path_op, primitives=tuple(self.primitives), C=spec.C, train=train,
                                conv_impl=self.conv_impl, pool_bn=self.pool_bn, family=self._family)
    in_edges = [(g.source, t) for g in _edge_groups(self.steps) if g.param_set == "edges_in" for t in g.targets]
    mid_edges = [(g.source - n, t) for g in _edge_groups(self.steps) if g.param_set == "edges_mid" for t in g.targets]
    stride = 2 if spec.reduction else 1
    inputs = jnp.stack([s0, s1])

    gates = None if out_w is None else out_w[1]

    def active(w, y):
      return y if out_w is None else lax.stop_gradient(jnp.any(w != 0).astype(y.dtype)) * y

    def in_body(nodes, xs):
      p, s, w, src, dst = xs
      y, ns = edge_op(p, s, lax.dynamic_index_in_dim(inputs, src, keepdims=False), w, stride=stride)
      y = active(w, y)
      return lax.dynamic_update_index_in_dim(nodes, lax.dynamic_index_in_dim(nodes, dst, keepdims=False) + y,
                                             dst, 0), ns

    def mid_body(nodes, xs):
      p, s, w, src, dst = xs
      x = lax.dynamic_index_in_dim(nodes, src, keepdims=False)
      y, ns = edge_op(p, s, x if gates is None else gates[src] * x, w, stride=1)
      y = active(w, y)
      return lax.dynamic_update_index_in_dim(nodes, lax.dynamic_index_in_dim(nodes, dst, keepdims=False) + y,
                                             dst, 0), ns

    def edges_xs(set_name, edges, src_of):
      rows = np.asarray([space.edge_index(src_of(i), j) for i, j in edges])
      return (params[set_name], stats[set_name], weights[rows], jnp.asarray([i for i, _ in edges], jnp.int32),
              jnp.asarray([j for _, j in edges], jnp.int32))

    H, W = s0.shape[1] // stride, s0.shape[2] // stride
    nodes = jnp.zeros((self.steps, s0.shape[0], H, W, spec.C), s0.dtype)
    if self.scan:
      nodes, new["edges_in"] = lax.scan(in_body, nodes, edges_xs("edges_in", in_edges, lambda i: i))
      if mid_edges:
        nodes, new["edges_mid"] = lax.scan(mid_body, nodes, edges_xs("edges_mid", mid_edges, lambda i: i + n))
      else:
        new["edges_mid"] = stats["edges_mid"]
    else:
      for set_name, edges, body, src_of in (("edges_in", in_edges, in_body, lambda i: i),
                                            ("edges_mid", mid_edges, mid_body, lambda i: i + n)):
        xs_all, nss = edges_xs(set_name, edges, src_of), []
        for e in range(len(edges)):
          nodes, ns = body(nodes, jax.tree.map(lambda a: a[e], xs_all))
          nss.append(ns)
        new[set_name] = jax.tree.map(lambda *a: jnp.stack(a), *nss) if nss else stats[set_name]
    return self._cell_output([nodes[i] for i in range(self.steps)], out_w), new

  def forward(self, params, batch_stats, images, weights, *, train: bool = True, key=None,
              op_dropout_rate=0.0, drop_path_rate=0.0):
    """Pure forward pass: returns ``(logits, new_batch_stats)``.

    Args:
      params, batch_stats: from ``init_variables``.
      images: ``(B, H, W, 3)`` float, normalised.
      weights: mixing weights per cell type, ``{'normal': (E, n_ops), 'reduce': (E, n_ops)}``
        (softmax(alpha) for DARTS: ``jnas.search.edge_weights``), optionally with
        ``'normal_edges'`` / ``'reduce_edges'`` (E,) factors on each edge's output (PC-DARTS).
      train: batch statistics (and updated running statistics) if True, running statistics if False.
      key: PRNG key for ``op_dropout`` and ``edge_drop_path`` (neither applies without one).
      op_dropout_rate, drop_path_rate: their rates (traced scalars: a new rate never recompiles).
    """
    self._check()
    macro.check_images(images, layers=self.layers, what="SearchNetwork.forward")
    _check_inputs(images, weights, self.steps, len(self.primitives), self.cell_types, lhd=self._lhd)
    x, stem_stats = ops.conv_bn_apply(params["stem"], batch_stats["stem"], images, train, padding=1)
    s0 = x
    if self._lhd:
      s0, stem0_stats = ops.conv_bn_apply(params["stem0"], batch_stats["stem0"], images, train, padding=1)
    rates = (op_dropout_rate, drop_path_rate)
    mix = {t: (weights[t], weights.get(f"{t}_edges"), rates, weights.get(f"{t}_output") if self._lhd else None)
           for t in self.cell_types}
    use_key = train and key is not None and bool(self.op_dropout or self.edge_drop_path)

    def cell_fn(spec, p, s, s0, s1, k):
      t = "reduce" if spec.reduction else "normal"
      return self._cell(spec, p, s, s0, s1, k, mix.get(t), train)

    out, new_stats, _ = macro.run_cells(self.groups(), cell_fn, params, batch_stats, s0, x,
                                        key=key if use_key else None, chain="outputs" if self._lhd else "darts")
    new_stats["stem"] = stem_stats
    if self._lhd:
      new_stats["stem0"] = stem0_stats
      out = jnp.concatenate(out, axis=-1)
    if self.final_bn_relu:
      out, new_stats["lastact"] = ops.bn_apply(params["lastact"], batch_stats["lastact"], out, train)
      out = jax.nn.relu(out)
    logits = ops.linear_apply(params["classifier"], macro.global_avg_pool(out))
    return logits, new_stats

  # ------------------------------------------------------------------------------------ linen
  @nn.compact
  def __call__(self, images, weights, train: bool = True):
    params, stats = macro.declare_variables(self, self.init_variables)
    logits, new_stats = self.forward(params, {n: v.value for n, v in stats.items()}, images, weights, train=train)
    if train and not self.is_initializing() and self.is_mutable_collection("batch_stats"):
      for n, v in stats.items():
        v.value = new_stats[n]
    return logits


def _check_inputs(images, weights, steps: int, num_ops: int, cell_types=CELL_TYPES, lhd: bool = False):
  if not hasattr(weights, "keys"):
    raise ValueError(f"weights must be a dict with keys {cell_types}, got {type(weights).__name__}")
  expected = (space.num_edges(steps), num_ops)
  for k in cell_types:
    if k not in weights:
      raise ValueError(f"weights lack the {k!r} entry (expected keys {', '.join(map(repr, cell_types))})")
    if tuple(weights[k].shape) != expected:
      raise ValueError(f"weights[{k!r}] has shape {tuple(weights[k].shape)}, expected {expected} "
                       f"(edges, ops); pass mixing weights such as softmax(alpha), not a genotype")
    e = weights.get(f"{k}_edges")
    if e is not None and tuple(e.shape) != expected[:1]:
      raise ValueError(f"weights[{k + '_edges'!r}] has shape {tuple(e.shape)}, expected {expected[:1]}")
    if lhd:
      o = weights.get(f"{k}_output")
      if o is None or tuple(o.shape) != (2, steps):
        raise ValueError(f"the LHD supernet needs weights[{k + '_output'!r}] of shape (2, {steps}) (sum-path weights "
                         f"and concat gates), got {None if o is None else tuple(o.shape)}")
