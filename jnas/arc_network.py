"""Many DARTS-space genotypes through one compiled program: the genotype as an input, ``ArcNetwork``.

``jnas.Network`` bakes its genotype into the program, so every genotype compiles its own (about a
minute on a CPU core at any size), and ``jnas.packed`` shares a program only between genotypes of
one concat pattern. ``ArcNetwork`` takes the genotype as integer arrays (an *arc*,
``encode(genotype)``) and computes, with static shapes for every genotype of ``n_nodes`` nodes:

* branch k of node j (two per node): ``h = lax.switch(o_{j,k}, ops, state_{i_{j,k}})``: only the
  chosen op runs (a conditional on CPU and GPU; under ``vmap`` over arcs it would become a select
  over all ops, so arcs are never vmapped here); every (node, branch) slot holds the weights and
  BN statistics of every op of ``op_names`` (of both strides in a reduction cell: an op reading a
  cell input has stride 2), and an op's weights get gradients only where it is chosen;
* drop path on the non-identity ops with ``fold_in(cell key, 2j + k)``, as ``Network`` draws it;
* the output: every intermediate node, each times ``m_j = [j in concat]``: the cell is B C wide
  for every genotype, and the layers that read it (the next cells' preprocessing, the auxiliary
  head, the classifier) see zeros in the blocks of the nodes the genotype does not concatenate.

So ``forward(arc)`` computes exactly ``Network(genotype).forward`` with the weights that
``to_network_variables`` extracts (the kept ops, and the rows of the concatenated blocks): a
1x1 conv or linear layer on [x_kept, 0] is the same layer on x_kept, ReLU(0) = 0, and the zero
blocks get zero gradients. Weight decay shrinks the unused weights, which nothing reads; the
optimiser clips the raw gradient before adding the decay (``jnas.optim.weight_optimizer``), so the
global norm is the discrete network's. Initialisation draws from the same distributions as
``Network`` (PyTorch's U(+-1/sqrt(fan_in))): the layers reading a cell output are drawn at
fan-in B C and rescaled by sqrt(B / len(concat)), the bound at the genotype's own fan-in; the
draws themselves differ from ``Network``'s (other keys, other shapes), so a genotype trained here
and in its own program are two seeds of one distribution, not the same numbers.

The cost: the parameter and optimiser state of every op in every slot (about the supernet's, per
trained genotype), and one larger compile (every op of every slot; ``benchmarks/arc_network.py``).
Use it where many genotypes are trained for a short budget (NSGA-Net's candidates, random
baselines); ``jnas.train.train_genotypes(..., share_program=True)``.

Scope: DARTS ``Genotype``s with two ops per node, ``n_nodes`` nodes, ops of ``op_names``, concat
lists of intermediate nodes, no fixed reduction cell; macro 'cifar' or 'imagenet'.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnas import macro, ops
from jnas.genotype import Genotype
from jnas.network import MACROS, Network, aux_head_apply, aux_head_init, drop_path

__all__ = ["ArcNetwork", "encode", "check_genotype"]


def check_genotype(genotype, op_names: Sequence[str], n_nodes: int) -> None:
  """Raise ``ValueError`` if ``genotype`` cannot be an arc of (op_names, n_nodes)."""
  if not isinstance(genotype, Genotype):
    raise ValueError(f"a shared program trains jnas.Genotype cells, got {type(genotype).__name__}")
  if genotype.fixed_reduce:
    raise ValueError(f"genotype with fixed_reduce={genotype.fixed_reduce!r}: train it in its own program")
  for red in (False, True):
    t = "reduce" if red else "normal"
    nodes = genotype.nodes(red)
    if len(nodes) != n_nodes or any(len(entries) != 2 for entries in nodes):
      raise ValueError(f"{t} cell: a shared program needs {n_nodes} nodes of 2 ops each, got "
                       f"{[len(e) for e in nodes]} ops per node")
    pairs, concat = genotype.cell(red)
    unknown = sorted({op for op, _ in pairs} - set(op_names))
    if unknown:
      raise ValueError(f"{t} cell uses op(s) {unknown} outside the shared program's ops {tuple(op_names)}")
    bad = [c for c in concat if not 2 <= c < n_nodes + 2]
    if bad or not concat or len(set(concat)) != len(concat):
      raise ValueError(f"{t} cell: a shared program concatenates distinct intermediate nodes (2..{n_nodes + 1}), "
                       f"got concat {list(concat)}")


def encode(genotype: Genotype, op_names: Sequence[str], n_nodes: int) -> dict:
  """The arc of ``genotype``: ``{'ops', 'inputs'}`` int32 (2, n_nodes, 2) (cell type normal/reduce,
  node, branch; op = index into ``op_names``) and ``'concat'`` float32 (2, n_nodes) 0/1 masks."""
  check_genotype(genotype, op_names, n_nodes)
  index = {name: i for i, name in enumerate(op_names)}
  o = np.zeros((2, n_nodes, 2), np.int32)
  i = np.zeros((2, n_nodes, 2), np.int32)
  m = np.zeros((2, n_nodes), np.float32)
  for c, red in enumerate((False, True)):
    for j, entries in enumerate(genotype.nodes(red)):
      for k, (_, (op, src)) in enumerate(entries):
        o[c, j, k], i[c, j, k] = index[op], src
    for s in genotype.cell(red)[1]:
      m[c, s - 2] = 1.0
  return {"ops": jnp.asarray(o), "inputs": jnp.asarray(i), "concat": jnp.asarray(m)}


@dataclasses.dataclass(frozen=True)
class ArcNetwork:
  """The shared-program network (see the module docstring); the fields mirror ``jnas.Network``'s.

  ``init_variables(key, arc)``, ``forward(params, batch_stats, images, arc, train=, key=,
  drop_path_prob=) -> (logits, aux_logits, new_batch_stats)``, ``to_network_variables(variables,
  genotype)``, ``network(genotype)``."""

  op_names: tuple[str, ...]
  n_nodes: int = 4
  C: int = 36
  layers: int = 20
  num_classes: int = 10
  auxiliary: bool = False
  macro: str = "cifar"
  pool_bn: bool = False
  stem_multiplier: int = 3
  conv_impl: str = "auto"
  scan: bool = True

  def __post_init__(self):
    object.__setattr__(self, "op_names", tuple(self.op_names))
    if self.macro not in MACROS:
      raise ValueError(f"unknown macro structure {self.macro!r}; use one of {MACROS}")
    unknown = sorted(set(self.op_names) - set(ops.OP_NAMES))
    if unknown:
      raise ValueError(f"unknown op(s) {unknown}; known: {', '.join(ops.OP_NAMES)}")
    if self.n_nodes < 1:
      raise ValueError(f"n_nodes must be >= 1, got {self.n_nodes}")

  # ------------------------------------------------------------------------------ static layout
  def plan(self) -> list[macro.CellSpec]:
    B = self.n_nodes
    if self.macro == "cifar":
      return macro.cell_plan(self.C, self.layers, C_stem=self.stem_multiplier * self.C, multiplier_normal=B,
                             multiplier_reduce=B)
    return macro.cell_plan(self.C, self.layers, C_stem=self.C, multiplier_normal=B, multiplier_reduce=B,
                           reduction_prev_first=True)

  def groups(self) -> list[macro.Group]:
    return macro.group_cells(self.plan(), self.scan)

  @property
  def aux_position(self) -> int:
    return 2 * self.layers // 3

  def network(self, genotype: Genotype) -> Network:
    """The discrete ``jnas.Network`` of ``genotype`` with these settings."""
    return Network(genotype, C=self.C, layers=self.layers, num_classes=self.num_classes, auxiliary=self.auxiliary,
                   macro=self.macro, pool_bn=self.pool_bn, stem_multiplier=self.stem_multiplier,
                   conv_impl=self.conv_impl, scan=self.scan)

  def encode(self, genotype: Genotype) -> dict:
    return encode(genotype, self.op_names, self.n_nodes)

  def _slot_ops(self, spec: macro.CellSpec):
    """The (name, stride, Op) choices of a branch: in a reduction cell, stride 2 for a cell input
    (choices 0..N-1) and stride 1 for a node (N..2N-1)."""
    mk = lambda name, s: (name, s, ops.make_op(name, spec.C, s, affine=True, pool_bn=self.pool_bn))
    if not spec.reduction:
      return [mk(n, 1) for n in self.op_names]
    return [mk(n, 2) for n in self.op_names] + [mk(n, 1) for n in self.op_names]

  def _producers(self) -> list[tuple[int | None, int | None]]:
    """Per cell: the cells whose outputs its s0 and s1 are (None: a stem)."""
    return [(i - 2 if i >= 2 else None, i - 1 if i >= 1 else None) for i in range(self.layers)]

  def _scale(self, arc, cell: int | None):
    """sqrt(B / len(concat)) of the cell type that produced a tensor (1 for a stem)."""
    if cell is None:
      return jnp.ones((), jnp.float32)
    c = 1 if self.plan()[cell].reduction else 0
    return jnp.sqrt(self.n_nodes / jnp.maximum(jnp.sum(arc["concat"][c]), 1.0))

  # ------------------------------------------------------------------------------------- init
  def _init_cell(self, spec, key):
    pre0 = (ops.factorized_reduce(spec.C_pp, spec.C, True) if spec.reduction_prev
            else ops.relu_conv_bn(spec.C_pp, spec.C, True))
    pre1 = ops.relu_conv_bn(spec.C_p, spec.C, True)
    k0, k1, k_ops = jax.random.split(key, 3)
    params, stats = {"ops": {}}, {"ops": {}}
    (params["pre0"], stats["pre0"]), (params["pre1"], stats["pre1"]) = pre0.init(k0), pre1.init(k1)
    slots = jax.random.split(k_ops, 2 * self.n_nodes)  # slot t = 2 j + k: branch k of node j
    for t, (name, s, op) in enumerate(self._slot_ops(spec)):
      p, st = jax.vmap(op.init)(jax.vmap(lambda k: jax.random.fold_in(k, t))(slots))
      params["ops"][f"{name}_s{s}"], stats["ops"][f"{name}_s{s}"] = p, st
    return params, stats

  @staticmethod
  def _rescale_pre(p, scale):
    """Multiply the input-side weights of a preprocessing op (1x1 conv or FR) by ``scale``."""
    p = dict(p)
    for w in ("w", "w1", "w2"):
      if w in p:
        p[w] = p[w] * scale.reshape(scale.shape + (1,) * (p[w].ndim - scale.ndim))
    return p

  def init_variables(self, key, arc) -> dict:
    """``{'params', 'batch_stats'}``: every slot's ops initialised as ``Network``'s are, the layers
    that read a cell output at the genotype's own fan-in (see the module docstring)."""
    k_stem, k_cells, k_aux, k_cls = jax.random.split(key, 4)
    C = self.C
    params, stats = macro.stem_init(k_stem, self.macro, C, self.stem_multiplier)
    plan, prod = self.plan(), self._producers()
    for g in self.groups():
      p, s = macro.stack_init(lambda k, spec=g.spec: self._init_cell(spec, k), jax.random.fold_in(k_cells, g.start),
                              g.size)
      cells = range(g.start, g.start + g.size)
      p["pre0"] = self._rescale_pre(p["pre0"], jnp.stack([self._scale(arc, prod[i][0]) for i in cells]))
      p["pre1"] = self._rescale_pre(p["pre1"], jnp.stack([self._scale(arc, prod[i][1]) for i in cells]))
      params[g.name], stats[g.name] = p, s
    B = self.n_nodes
    if self.auxiliary:
      spec = plan[self.aux_position]
      ap, stats["aux_head"] = aux_head_init(k_aux, B * spec.C, self.num_classes)
      ap["conv1"] = dict(ap["conv1"], w=ap["conv1"]["w"] * self._scale(arc, self.aux_position))
      params["aux_head"] = ap
    cls = ops.linear_init(k_cls, B * plan[-1].C, self.num_classes)
    sc = self._scale(arc, self.layers - 1)
    params["classifier"] = {"w": cls["w"] * sc, "b": cls["b"] * sc}
    return {"params": params, "batch_stats": stats}

  # ------------------------------------------------------------------------------------ apply
  def _cell(self, spec, params, stats, s0, s1, key, train, drop_prob, arc_ops, arc_inputs, mask):
    pre0 = (ops.factorized_reduce(spec.C_pp, spec.C, True) if spec.reduction_prev
            else ops.relu_conv_bn(spec.C_pp, spec.C, True))
    pre1 = ops.relu_conv_bn(spec.C_p, spec.C, True)
    new = {"ops": {}}
    s0, new["pre0"] = pre0.apply(params["pre0"], stats["pre0"], s0, train, self.conv_impl)
    s1, new["pre1"] = pre1.apply(params["pre1"], stats["pre1"], s1, train, self.conv_impl)
    B, N = self.n_nodes, len(self.op_names)
    choices = self._slot_ops(spec)
    half = lambda n: -(-n // 2) if spec.reduction else n  # (a stride-2 op's output size)
    zeros = jnp.zeros((B, s1.shape[0], half(s1.shape[1]), half(s1.shape[2]), s1.shape[3]), s1.dtype)
    # the states a branch may read: (s0, s1, nodes...) or, at a reduction, the inputs and the nodes
    init = (jnp.stack([s0, s1]), zeros) if spec.reduction else (jnp.concatenate([jnp.stack([s0, s1]), zeros]),)

    def branch(c):
      name, stride, op = choices[c]
      leaf = f"{name}_s{stride}"

      def run(args):
        ps, ss, states, src, t = args
        if spec.reduction and stride == 2:
          x = jnp.take(states[0], jnp.clip(src, 0, 1), axis=0)
        elif spec.reduction:
          x = jnp.take(states[1], jnp.clip(src - 2, 0, B - 1), axis=0)
        else:
          x = jnp.take(states[0], jnp.clip(src, 0, B + 1), axis=0)
        h, st = op.apply(ps[leaf], ss[leaf], x, train, self.conv_impl)
        if train and key is not None and not op.is_identity:
          h = drop_path(jax.random.fold_in(key, t), h, drop_prob)
        return h, dict(ss, **{leaf: st})
      return run

    branches = [branch(c) for c in range(len(choices))]

    def slot_fn(carry, xs):
      """Branch t = 2 j + k; an odd t completes node j (the sum of its two branches)."""
      states, acc = carry
      ps, ss, o, src, t = xs
      index = jnp.where(src < 2, o, o + N) if spec.reduction else o
      h, ss = lax.switch(index, branches, (ps, ss, states, src, t))
      node = acc + h
      j = t // 2
      done = (t % 2) == 1
      if spec.reduction:
        written = (states[0], jnp.where(done, lax.dynamic_update_index_in_dim(states[1], node, j, 0), states[1]))
      else:
        written = (jnp.where(done, lax.dynamic_update_index_in_dim(states[0], node, j + 2, 0), states[0]),)
      return (written, jnp.where(done, jnp.zeros_like(node), node)), ss

    xs = (params["ops"], stats["ops"], arc_ops.reshape(-1), arc_inputs.reshape(-1), jnp.arange(2 * B))
    (states, _), new["ops"] = lax.scan(slot_fn, (init, jnp.zeros_like(zeros[0])), xs)
    nodes = states[1] if spec.reduction else states[0][2:]
    nodes = nodes * mask.reshape((B,) + (1,) * (nodes.ndim - 1))
    out = jnp.moveaxis(nodes, 0, -2).reshape(nodes.shape[1:-1] + (B * nodes.shape[-1],))
    return out, new

  def forward(self, params, batch_stats, images, arc, *, train: bool = False, key=None, drop_path_prob=0.0):
    """``(logits, aux_logits, new_batch_stats)`` of the genotype ``arc`` (``encode``); as
    ``Network.forward``."""
    macro.check_images(images, layers=self.layers, auxiliary=self.auxiliary and train, macro=self.macro,
                       what="ArcNetwork.forward", aux_position=self.aux_position)
    s0, s1, new_stats = macro.stem_apply(params, batch_stats, images, train, self.macro)

    def cell_fn(spec, cp, cs, c0, c1, k):
      c = 1 if spec.reduction else 0
      return self._cell(spec, cp, cs, c0, c1, k, train, drop_path_prob, arc["ops"][c], arc["inputs"][c],
                        arc["concat"][c])

    taps = (self.aux_position,) if (self.auxiliary and train) else ()
    out, cell_stats, tapped = macro.run_cells(self.groups(), cell_fn, params, batch_stats, s0, s1,
                                              key=key if train else None, taps=taps)
    new_stats.update(cell_stats)
    aux_logits = None
    if self.auxiliary:
      if train:
        aux_logits, new_stats["aux_head"] = aux_head_apply(params["aux_head"], batch_stats["aux_head"],
                                                           tapped[self.aux_position], train, self.macro)
      else:
        new_stats["aux_head"] = batch_stats["aux_head"]
    logits = ops.linear_apply(params["classifier"], macro.global_avg_pool(out))
    return logits, aux_logits, new_stats

  # ------------------------------------------------------------------------- to the discrete net
  def to_network_variables(self, variables: dict, genotype: Genotype) -> dict:
    """The variables of ``self.network(genotype)`` that compute what ``forward(encode(genotype))``
    computes: the chosen op of every slot, and the rows of the concatenated blocks of every layer
    that reads a cell output."""
    check_genotype(genotype, self.op_names, self.n_nodes)
    net = self.network(genotype)
    plan, prod = self.plan(), self._producers()
    params, stats = variables["params"], variables["batch_stats"]
    # per-cell trees
    cell_p, cell_s = [None] * self.layers, [None] * self.layers
    for g in self.groups():
      for n in range(g.size):
        take = lambda t: jax.tree.map(lambda a: a[n], t)
        cell_p[g.start + n], cell_s[g.start + n] = take(params[g.name]), take(stats[g.name])

    def rows(cell: int | None, axis: int, w):
      """The input rows of ``w`` that the discrete network keeps (the producing cell's concat)."""
      if cell is None:
        return w
      C_prod = plan[cell].C
      concat = genotype.cell(plan[cell].reduction)[1]
      idx = np.concatenate([np.arange((c - 2) * C_prod, (c - 1) * C_prod) for c in concat])
      return jnp.take(w, idx, axis=axis)

    def pre(p, cell):
      return {k: (rows(cell, 0, v) if k in ("w", "w1", "w2") else v) for k, v in p.items()}

    out_p, out_s = {}, {}
    for i, spec in enumerate(plan):
      pairs, _ = genotype.cell(spec.reduction)
      p = {"pre0": pre(cell_p[i]["pre0"], prod[i][0]), "pre1": pre(cell_p[i]["pre1"], prod[i][1]), "ops": {}}
      s = {"pre0": cell_s[i]["pre0"], "pre1": cell_s[i]["pre1"], "ops": {}}
      for j, entries in enumerate(genotype.nodes(spec.reduction)):
        for k, (pos, (name, src)) in enumerate(entries):
          stride = 2 if (spec.reduction and src < 2) else 1
          leaf, t = f"{name}_s{stride}", 2 * j + k
          p["ops"][str(pos)] = jax.tree.map(lambda a: a[t], cell_p[i]["ops"][leaf])
          s["ops"][str(pos)] = jax.tree.map(lambda a: a[t], cell_s[i]["ops"][leaf])
      cell_p[i], cell_s[i] = p, s
    for g in net.groups():
      stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
      out_p[g.name] = stack(cell_p[g.start:g.start + g.size])
      out_s[g.name] = stack(cell_s[g.start:g.start + g.size])
    for name in ("stem", "stem0", "stem1"):
      if name in params:
        out_p[name], out_s[name] = params[name], stats[name]
    if self.auxiliary:
      ap = params["aux_head"]
      out_p["aux_head"] = dict(ap, conv1=dict(ap["conv1"], w=rows(self.aux_position, 2, ap["conv1"]["w"])))
      out_s["aux_head"] = stats["aux_head"]
    cls = params["classifier"]
    out_p["classifier"] = {"w": rows(self.layers - 1, 0, cls["w"]), "b": cls["b"]}
    return {"params": out_p, "batch_stats": out_s}
