"""The DARTS supernet: mixed ops, search cells and the search network, with alphas as an input.

Mixed operation on edge (i, j), DARTS Eq. 2:
    o_bar^{(i,j)}(x) = sum_{o in O} softmax(alpha^{(i,j)})_o * o(x),
and node j = sum_{i < j+2} o_bar^{(i,j)}(x_i) [DARTS-P §2.1]. The alphas are an argument of
``apply`` (not parameters), so one set of weights serves any alphas and ``jax.grad`` can take the
weights, the alphas, or both.

Speed: edges are computed together, ``vmap``ped over stacked per-edge parameters, and ``none``
is skipped (its output is 0; its alpha still enters the softmax). Compile time grows with the
number of distinct mixed-op bodies in the program, so with ``scan=True`` (default) a normal cell
runs its 14 edges as one ``lax.scan`` of 7 iterations of 2 edges (``cell_schedule``: an edge runs
once its source node is complete), and a reduction cell runs its 8 strided edges from the cell
inputs as one batched call and its 6 edges between nodes as a scan of 3 iterations. At paper
size (C=16, 8 cells) this took the weight step's compile from 299 s to 90 s and its step from
24.1 s to 13.5 s on a 2-core CPU (both measured in the same hour). ``scan=False`` unrolls a cell into ``steps + 1`` batched calls,
one per source state.

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

from jnas import macro, ops, space

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


def search_op(name: str, C: int, stride: int) -> ops.Op:
  """A mixed op's candidate: BN affine off everywhere; pooling followed by an affine-free BN [quark0 MixedOp]."""
  return ops.make_op(name, C, stride, affine=False, pool_bn=True)


@functools.partial(jax.jit, static_argnames=("primitives", "idx", "C", "stride", "train", "conv_impl"))
def mixed_ops(op_params, op_stats, xs, weights, *, primitives: tuple[str, ...], idx: tuple[int, ...], C: int,
              stride: int, train: bool, conv_impl: str):
  """Mixed ops (DARTS Eq. 2) on E edges; edge e reads source state ``xs[idx[e]]``.

  Args:
    op_params, op_stats: each op's parameters and BN statistics, stacked over the E edges.
    xs: (S, B, H, W, C) source states; idx: E source positions (static).
    weights: (E, n_ops) softmax(alpha) rows of these edges.

  Returns:
    (E, B, H', W', C) edge outputs and the new BN statistics.

  Ops without parameters (pooling, and its affine-free BN) give the same output on every edge
  that reads the same state, so they run once per source; their per-edge running statistics
  stay identical.

  It is a ``jax.jit`` function so that JAX traces (and differentiates) one edge group once per
  distinct shape and configuration: every normal cell of a stage has the same groups. At paper size
  this took tracing + lowering of the weight step from 15 s to 10 s; XLA inlines the calls, so the
  compiled program is the same.
  """
  first = [idx.index(src) for src in range(xs.shape[0])]  # an edge of each source
  xe = None  # each edge's input, built on first use
  out, new_stats = None, {}
  for o, name in enumerate(primitives):
    if name == "none":
      continue  # o(x) = 0
    op = search_op(name, C, stride)
    w = weights[:, o][:, None, None, None, None]
    p, s = op_params.get(name, {}), op_stats.get(name, {})
    if op.is_identity:
      y = gather_edges(xs, idx)
    elif not jax.tree.leaves(p):  # parameter-free: one evaluation per source state
      ys, nss = [], []
      for src, e in enumerate(first):
        y_s, ns_s = op.apply({}, jax.tree.map(lambda a: a[e], s), xs[src], train, conv_impl)
        ys.append(y_s)
        nss.append(ns_s)
      y = gather_edges(jnp.stack(ys), idx)
      if name in op_stats:
        new_stats[name] = jax.tree.map(lambda *a: jnp.stack([a[i] for i in idx]), *nss)
    else:
      if xe is None:
        xe = gather_edges(xs, idx)
      apply = lambda p_, s_, x_, op=op: op.apply(p_, s_, x_, train, conv_impl)
      y, ns = jax.vmap(apply)(p, s, xe)
      if name in op_stats:
        new_stats[name] = ns
    out = w * y if out is None else out + w * y
  return out, new_stats


class SearchNetwork(nn.Module):
  """The DARTS search network (quark0 ``model_search.Network``), NHWC.

  Use it as a linen module:
    variables = net.init(key, images, alphas)            # {'params', 'batch_stats'}
    logits, upd = net.apply(variables, images, alphas, train=True, mutable=['batch_stats'])
  or through the pure functions ``init_variables`` and ``forward`` (what ``jnas.search`` uses).

  Attributes:
    C: initial channels (16 in DARTS); layers: cells (8); num_classes.
    steps: intermediate nodes per cell (4; CNAS uses 6); multiplier: nodes concatenated (= steps).
    stem_multiplier: stem width C * 3. primitives: the op set (``none`` may be absent).
    conv_impl: 'auto' | 'shift' | 'xla' (``jnas.kernels``). scan: scan runs of identical cells.
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

  # ------------------------------------------------------------------------------ static layout
  @property
  def _multiplier(self) -> int:
    return self.steps if self.multiplier is None else self.multiplier

  def plan(self) -> list[macro.CellSpec]:
    return macro.cell_plan(self.C, self.layers, C_stem=self.stem_multiplier * self.C,
                           multiplier_normal=self._multiplier, multiplier_reduce=self._multiplier)

  def groups(self) -> list[macro.Group]:
    return macro.group_cells(self.plan(), self.scan)

  def _check(self):
    unknown = [p for p in self.primitives if p not in ops.OP_NAMES]
    if unknown:
      raise ValueError(f"unknown op(s) {unknown} in primitives; known: {', '.join(ops.OP_NAMES)}")
    if self._multiplier > self.steps:
      raise ValueError(f"multiplier {self._multiplier} exceeds steps {self.steps}")

  def _preprocess(self, spec: macro.CellSpec):
    pre0 = (ops.factorized_reduce(spec.C_pp, spec.C, False) if spec.reduction_prev
            else ops.relu_conv_bn(spec.C_pp, spec.C, False))
    return pre0, ops.relu_conv_bn(spec.C_p, spec.C, False)

  # ------------------------------------------------------------------------------------- init
  def _init_cell(self, spec: macro.CellSpec, key):
    pre0, pre1 = self._preprocess(spec)
    k0, k1, k_in, k_mid = jax.random.split(key, 4)
    params, stats = {}, {}
    (params["pre0"], stats["pre0"]), (params["pre1"], stats["pre1"]) = pre0.init(k0), pre1.init(k1)
    n_in, n_mid = space.NUM_INPUTS * self.steps, space.num_edges(self.steps) - space.NUM_INPUTS * self.steps
    for set_name, k, n, stride in (("edges_in", k_in, n_in, 2 if spec.reduction else 1),
                                   ("edges_mid", k_mid, n_mid, 1)):
      params[set_name], stats[set_name] = {}, {}
      if n == 0:
        continue
      for o, name in enumerate(self.primitives):
        op = search_op(name, spec.C, stride)
        p, s = macro.stack_init(op.init, jax.random.fold_in(k, o), n)
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
    params, stats = {"stem": stem_params}, {"stem": stem_stats}
    for g in self.groups():
      init = functools.partial(self._init_cell, g.spec)
      params[g.name], stats[g.name] = macro.stack_init(init, jax.random.fold_in(k_cells, g.start), g.size)
    C_last = self._multiplier * self.plan()[-1].C
    params["classifier"] = ops.linear_init(k_cls, C_last, self.num_classes)
    return {"params": params, "batch_stats": stats}

  # ------------------------------------------------------------------------------------ apply
  def _mixed_group(self, op_params, op_stats, xs, idx, weights, C, stride, train):
    """``mixed_ops`` with this network's op set and conv implementation."""
    return mixed_ops(op_params, op_stats, xs, weights, primitives=tuple(self.primitives), idx=tuple(idx),
                     C=C, stride=stride, train=train, conv_impl=self.conv_impl)

  def _cell(self, spec, params, stats, s0, s1, key, weights, train):
    """One search cell; ``weights`` = softmax(alphas) of its type, (14, n_ops)."""
    del key
    pre0, pre1 = self._preprocess(spec)
    new = {"edges_in": {}, "edges_mid": {}}
    s0, new["pre0"] = pre0.apply(params["pre0"], stats["pre0"], s0, train)
    s1, new["pre1"] = pre1.apply(params["pre1"], stats["pre1"], s1, train)
    states = [s0, s1]
    full = cell_schedule(self.steps, with_inputs=True) if self.scan and not spec.reduction else None
    if full is not None:  # one scan over all 14 edges
      n_in = space.NUM_INPUTS * self.steps
      cat = lambda a, b: jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)
      buffer = jnp.stack(states + [jnp.zeros_like(s1)] * self.steps)
      buffer, ns = self._edges_scan(full, cat(params["edges_in"], params["edges_mid"]),
                                    cat(stats["edges_in"], stats["edges_mid"]), buffer, weights, spec.C, train)
      new["edges_in"] = jax.tree.map(lambda a: a[:n_in], ns)
      new["edges_mid"] = jax.tree.map(lambda a: a[n_in:], ns)
      out = jnp.concatenate([buffer[i] for i in range(buffer.shape[0] - self._multiplier, buffer.shape[0])], axis=-1)
      return out, new
    outputs = {}  # (source, target) -> edge output
    pending = {"edges_in": [], "edges_mid": []}
    groups = _edge_groups(self.steps)

    def run(set_name, lo, hi, xs, idx, targets, rows, stride):
      y, ns = self._mixed_group(_slice(params[set_name], lo, hi), _slice(stats[set_name], lo, hi),
                                xs, idx, weights[np.asarray(rows)], spec.C, stride, train)
      for k, key_ in enumerate(targets):
        outputs[key_] = y[k]
      pending[set_name].append(ns)

    # The 2*steps edges leaving the two cell inputs share shapes and stride: one batched call.
    in_groups = groups[:space.NUM_INPUTS]
    run("edges_in", 0, space.NUM_INPUTS * self.steps, jnp.stack(states),
        tuple(g.source for g in in_groups for _ in g.targets),
        [(g.source, j) for g in in_groups for j in g.targets], sum((g.alpha_rows for g in in_groups), ()),
        2 if spec.reduction else 1)
    schedule = cell_schedule(self.steps, with_inputs=False) if self.scan else None
    if schedule is None:
      for j in range(self.steps):
        node = sum(outputs[(i, j)] for i in range(j + space.NUM_INPUTS))
        states.append(node)
        if j < self.steps - 1:
          g = groups[space.NUM_INPUTS + j]
          run(g.param_set, g.lo, g.hi, node[None], (0,) * len(g.targets), [(g.source, t) for t in g.targets],
              g.alpha_rows, 1)
    else:
      # The nodes only (a reduction cell's inputs have another resolution): buffer[0] is state 2.
      partial = jnp.stack([outputs[(0, j)] + outputs[(1, j)] for j in range(self.steps)])
      buffer, ns = self._edges_scan(schedule, params["edges_mid"], stats["edges_mid"], partial, weights,
                                    spec.C, train, offset=space.NUM_INPUTS * self.steps,
                                    first_state=space.NUM_INPUTS)
      pending["edges_mid"].append(ns)
      states += [buffer[i] for i in range(self.steps)]
    for set_name, parts in pending.items():
      if parts and jax.tree.leaves(parts[0]):
        new[set_name] = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
      elif parts:
        new[set_name] = parts[0]
    out = jnp.concatenate(states[-self._multiplier:], axis=-1)
    return out, new

  def _edges_scan(self, schedule, params, stats, buffer, weights, C, train, offset: int = 0,
                  first_state: int = 0):
    """Run a cell's stride-1 edges as one ``lax.scan`` over ``schedule`` (``cell_schedule``): one
    compiled mixed-op body instead of one per source state (compile time), same arithmetic.

    Args:
      schedule: iterations of (source state, target state) pairs.
      params, stats: the edges' stacked parameters, in the order [edges from the cell inputs by
        input then node; edges between nodes by source then target], less the first ``offset``.
      buffer: (states, B, H, W, C) from state ``first_state`` on: the cell inputs (state 0, 1)
        and each node's sum over the edges already computed (zeros for a node with none yet).
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

    def body(buf, xs):
      p, s, w, src_t, dst_t = xs
      xe = jnp.stack([lax.dynamic_index_in_dim(buf, src_t[e], keepdims=False) for e in range(k)])
      y, ns = self._mixed_group(p, s, xe, tuple(range(k)), w, C, 1, train)
      for e in range(k):
        buf = lax.dynamic_update_index_in_dim(
            buf, lax.dynamic_index_in_dim(buf, dst_t[e], keepdims=False) + y[e], dst_t[e], 0)
      return buf, ns

    buffer, ns = lax.scan(body, buffer, (by_iter(params), by_iter(stats), weights[rows], src, dst))
    unorder = (lambda a: a) if in_order else (lambda a: a[np.argsort(perm)])
    return buffer, jax.tree.map(lambda a: unorder(a.reshape((n_iter * k,) + a.shape[2:])), ns)

  def forward(self, params, batch_stats, images, alphas, train: bool = True):
    """Pure forward pass: returns ``(logits, new_batch_stats)``.

    Args:
      params, batch_stats: from ``init_variables``.
      images: ``(B, H, W, 3)`` float, normalised.
      alphas: ``{'normal': (E, n_ops), 'reduce': (E, n_ops)}`` (raw; softmax taken here).
      train: batch statistics (and updated running statistics) if True, running statistics if False.
    """
    self._check()
    _check_inputs(images, alphas, self.steps, len(self.primitives))
    weights = {k: jax.nn.softmax(alphas[k], axis=-1) for k in ("normal", "reduce")}
    x, stem_stats = ops.conv_bn_apply(params["stem"], batch_stats["stem"], images, train, padding=1)

    def cell_fn(spec, p, s, s0, s1, key):
      return self._cell(spec, p, s, s0, s1, key, weights["reduce" if spec.reduction else "normal"], train)

    out, new_stats, _ = macro.run_cells(self.groups(), cell_fn, params, batch_stats, x, x)
    new_stats["stem"] = stem_stats
    logits = ops.linear_apply(params["classifier"], macro.global_avg_pool(out))
    return logits, new_stats

  # ------------------------------------------------------------------------------------ linen
  @nn.compact
  def __call__(self, images, alphas, train: bool = True):
    params, stats = macro.declare_variables(self, self.init_variables)
    logits, new_stats = self.forward(params, {n: v.value for n, v in stats.items()}, images, alphas, train)
    if train and not self.is_initializing() and self.is_mutable_collection("batch_stats"):
      for n, v in stats.items():
        v.value = new_stats[n]
    return logits


def _check_inputs(images, alphas, steps: int, num_ops: int):
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (batch, height, width, 3) NHWC, got shape {tuple(images.shape)}")
  if images.shape[1] < 4 or images.shape[2] < 4:
    raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} px are too small for two reductions")
  expected = (space.num_edges(steps), num_ops)
  for k in ("normal", "reduce"):
    if k not in alphas:
      raise ValueError(f"alphas lack the {k!r} entry (expected keys 'normal' and 'reduce')")
    if tuple(alphas[k].shape) != expected:
      raise ValueError(f"alphas[{k!r}] has shape {tuple(alphas[k].shape)}, expected {expected}")
