"""The discrete network built from a ``Genotype`` (the retraining / evaluation network).

Two macro structures [quark0 ``model.py``; NAS-Benchmark ``augment_cnn.py``]:

* ``'cifar'`` (32-px inputs): stem 3x3 conv to 3C + BN; reductions at layers//3 and 2*layers//3;
  auxiliary head on the output of cell 2*layers//3 (8x8 map); global average pool + linear.
* ``'imagenet'`` (224-px, Sport8/MIT67/Flowers102, paper_protocol.md §1.5): stem0 = conv s2 (3 -> C/2)
  + BN + ReLU + conv s2 (C/2 -> C) + BN, stem1 = ReLU + conv s2 (C -> C) + BN (224 -> 28 px); the
  first cell reads both stems as if after a reduction; auxiliary head on a 7x7 map.

Cells [quark0 ``Cell``]: node j = op_{2j}(state_{i_{2j}}) + op_{2j+1}(state_{i_{2j+1}}) (or the sum
over the node's pairs, for genotypes with other in-degrees, e.g. SNAS's); ops reading a cell input
of a reduction cell have stride 2; the output concatenates the genotype's concat states. A genotype
with ``fixed_reduce='gdas_frc'`` uses GDAS-FRC's fixed reduction cell (``jnas.frc``). Drop path (training only) multiplies every non-identity op output by a per-sample
Bernoulli(1 - p) mask divided by (1 - p) [quark0 ``utils.drop_path``]. BN affine is on.

An ``jnas.lhd.LHDGenotype`` builds the LHD network [LHD ``eval/multi_path_concat_sum.py``
``NetworkCIFAR``] ('cifar' macro only): LHD's ops; two stems (3x3 conv + BN to C and to 3C); a
cell reads the previous cell's (sum, concat) outputs through LHD's preprocessing
(``jnas.lhd.preprocess``); node j is the sum of its pairs' op outputs; the cell returns the sum of
its ``sum`` nodes and the concat of its ``concat`` nodes (node order), so a cell's concat output has
len(concat) * C channels; the auxiliary head (after cell 2*layers//3) and the classifier read
concat(sum, concat). Drop path as above.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jnas import frc, lhd, macro, ops
from jnas.genotype import Genotype
from jnas.kernels import avg_pool

MACROS = ("cifar", "imagenet")


def drop_path(key, x, drop_prob):
  """Per-sample drop path: x * Bernoulli(keep)[b] / keep, keep = 1 - drop_prob [quark0 utils]."""
  keep = 1.0 - drop_prob
  mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (mask.astype(x.dtype) / keep)


def aux_head_init(key, C_in: int, num_classes: int):
  """Parameters and statistics of the auxiliary head (``aux_head_apply``) on C_in channels."""
  ka, kb, kc = jax.random.split(key, 3)
  a, sa = ops.conv_bn_init(ka, 1, 1, C_in, 128)
  b, sb = ops.conv_bn_init(kb, 2, 2, 128, 768)
  return ({"conv1": a, "conv2": b, "classifier": ops.linear_init(kc, 768, num_classes)},
          {"conv1": sa, "conv2": sb})


def aux_head_apply(p, s, x, train, macro: str = "cifar"):
  """ReLU -> avg pool 5 (stride 3 CIFAR / 2 ImageNet, no padding) -> 1x1 conv 128 + BN + ReLU ->
  2x2 conv 768 + BN + ReLU -> linear [quark0 ``AuxiliaryHeadCIFAR``; NB keeps the last BN]."""
  x = avg_pool(jax.nn.relu(x), 5, 3 if macro == "cifar" else 2, 0)
  x, s1 = ops.conv_bn_apply(p["conv1"], s["conv1"], x, train)
  x, s2 = ops.conv_bn_apply(p["conv2"], s["conv2"], jax.nn.relu(x), train)
  x = jax.nn.relu(x)
  x = x.reshape(x.shape[0], -1)
  return ops.linear_apply(p["classifier"], x), {"conv1": s1, "conv2": s2}


class Network(nn.Module):
  """A DARTS-space network for a genotype, NHWC.

  Linen use:
    variables = net.init({'params': key}, images)
    (logits, aux_logits), upd = net.apply(variables, images, train=True, drop_path_prob=0.1,
                                         rngs={'drop_path': key}, mutable=['batch_stats'])
  ``aux_logits`` is ``None`` in eval mode or without the auxiliary head. The pure functions
  ``init_variables`` and ``forward`` do the same without linen.

  Attributes:
    genotype: the cells. C: initial channels (36). layers: cells (20). num_classes.
    auxiliary: build the auxiliary head. drop_path_prob: default p when a call passes none.
    macro: 'cifar' or 'imagenet'. pool_bn: BN after pooling ops (pt.darts/NAS-Benchmark; quark0 has
    none). stem_multiplier: CIFAR stem width (3). conv_impl: see ``jnas.kernels``. scan: scan
    runs of identical cells (one compiled body per run).
  """

  genotype: Genotype
  C: int = 36
  layers: int = 20
  num_classes: int = 10
  auxiliary: bool = False
  drop_path_prob: float = 0.0
  macro: str = "cifar"
  pool_bn: bool = False
  stem_multiplier: int = 3
  conv_impl: str = "auto"
  scan: bool = True

  # ------------------------------------------------------------------------------ static layout
  @property
  def _lhd(self) -> bool:
    return isinstance(self.genotype, lhd.LHDGenotype)

  def _check(self):
    if self._lhd:
      if self.macro != "cifar":
        raise ValueError("the LHD network has the 'cifar' macro structure only")
      for red in (False, True):
        pairs, out = self.genotype.cell(red)
        t = "reduce" if red else "normal"
        if not out["sum"] or not out["concat"]:
          raise ValueError(f"LHD genotype {t!r}: the network needs nodes on both output paths, got {out}")
        fed = {n for _, _, n in pairs}
        empty = sorted(({i - 2 for _, i, _ in pairs if i >= 2} | set(out["sum"]) | set(out["concat"])) - fed)
        if empty:
          raise ValueError(f"LHD genotype {t!r}: node(s) {empty} are read or output but have no op")
      return
    if not isinstance(self.genotype, Genotype):
      raise ValueError(f"genotype must be a jnas.Genotype or jnas.lhd.LHDGenotype, got {type(self.genotype).__name__}")
    unknown = sorted(self.genotype.ops() - set(ops.OP_NAMES))
    if unknown:
      raise ValueError(f"genotype uses op(s) {unknown} that jnas.ops does not define")
    if self.macro not in MACROS:
      raise ValueError(f"unknown macro structure {self.macro!r}; use one of {MACROS}")

  def _multiplier(self, reduction: bool) -> int:
    if self._lhd:
      return len(self.genotype.cell(reduction)[1]["concat"])
    if reduction and self.genotype.fixed_reduce:
      return frc.MULTIPLIER
    return len(self.genotype.cell(reduction)[1])

  def plan(self) -> list[macro.CellSpec]:
    if self._lhd:
      return macro.lhd_cell_plan(self.C, self.layers, C_stem=self.stem_multiplier * self.C,
                                 multiplier_normal=self._multiplier(False), multiplier_reduce=self._multiplier(True))
    if self.macro == "cifar":
      C_stem = self.stem_multiplier * self.C
      return macro.cell_plan(self.C, self.layers, C_stem=C_stem, multiplier_normal=self._multiplier(False),
                             multiplier_reduce=self._multiplier(True))
    return macro.cell_plan(self.C, self.layers, C_stem=self.C, multiplier_normal=self._multiplier(False),
                           multiplier_reduce=self._multiplier(True), reduction_prev_first=True)

  def groups(self) -> list[macro.Group]:
    return macro.group_cells(self.plan(), self.scan)

  @property
  def aux_position(self) -> int:
    return 2 * self.layers // 3

  def _cell_ops(self, spec: macro.CellSpec):
    pairs, _ = self.genotype.cell(spec.reduction)
    if self._lhd:
      return [ops.make_op(name, spec.C, 2 if (spec.reduction and idx < 2) else 1, affine=True, family="lhd")
              for name, idx, _ in pairs]
    return [ops.make_op(name, spec.C, 2 if (spec.reduction and idx < 2) else 1, affine=True,
                        pool_bn=self.pool_bn) for name, idx in pairs]

  def _preprocess(self, spec: macro.CellSpec):
    if self._lhd:
      return lhd.preprocess(spec, affine=True)
    pre0 = (ops.factorized_reduce(spec.C_pp, spec.C, True) if spec.reduction_prev
            else ops.relu_conv_bn(spec.C_pp, spec.C, True))
    return pre0, ops.relu_conv_bn(spec.C_p, spec.C, True)

  # ------------------------------------------------------------------------------------- init
  def _init_cell(self, spec, key):
    if not self._lhd and spec.reduction and self.genotype.fixed_reduce:
      return frc.init(key, spec, affine=True)
    pre0, pre1 = self._preprocess(spec)
    keys = jax.random.split(key, 2 + len(self.genotype.cell(spec.reduction)[0]))
    params, stats = {"ops": {}}, {"ops": {}}
    (params["pre0"], stats["pre0"]), (params["pre1"], stats["pre1"]) = pre0.init(keys[0]), pre1.init(keys[1])
    for k, op in enumerate(self._cell_ops(spec)):
      params["ops"][str(k)], stats["ops"][str(k)] = op.init(keys[2 + k])
    return params, stats

  def init_variables(self, key) -> dict:
    """``{'params': ..., 'batch_stats': ...}`` with PyTorch's default initialisation."""
    self._check()
    k_stem, k_cells, k_aux, k_cls = jax.random.split(key, 4)
    C = self.C
    params, stats = macro.stem_init(k_stem, self.macro, C, self.stem_multiplier)
    if self._lhd:  # LHD's second stem, 3 -> C, beside the 3C one
      params["stem0"], stats["stem0"] = ops.conv_bn_init(jax.random.fold_in(k_stem, 1), 3, 3, 3, C)
    plan = self.plan()
    for g in self.groups():
      params[g.name], stats[g.name] = macro.stack_init(
          lambda k, spec=g.spec: self._init_cell(spec, k), jax.random.fold_in(k_cells, g.start), g.size)
    mult = lambda spec: self._multiplier(spec.reduction)
    if self.auxiliary:
      spec = plan[self.aux_position]
      params["aux_head"], stats["aux_head"] = aux_head_init(k_aux, (mult(spec) + self._lhd) * spec.C, self.num_classes)
    C_last = (mult(plan[-1]) + self._lhd) * plan[-1].C  # (LHD: concat(sum, concat))
    params["classifier"] = ops.linear_init(k_cls, C_last, self.num_classes)
    return {"params": params, "batch_stats": stats}

  # ------------------------------------------------------------------------------------ apply
  def _cell(self, spec, params, stats, s0, s1, key, train, drop_prob):
    if not self._lhd and spec.reduction and self.genotype.fixed_reduce:
      return frc.apply(params, stats, s0, s1, spec, train, self.conv_impl, key=key, drop_prob=drop_prob)
    pairs, concat = self.genotype.cell(spec.reduction)
    pre0, pre1 = self._preprocess(spec)
    new = {"ops": {}}
    s0, new["pre0"] = pre0.apply(params["pre0"], stats["pre0"], s0, train)
    s1, new["pre1"] = pre1.apply(params["pre1"], stats["pre1"], s1, train)
    states = [s0, s1]
    cell_ops = self._cell_ops(spec)
    for entries in self.genotype.nodes(spec.reduction):
      node = None
      for entry in entries:
        k = entry if self._lhd else entry[0]
        op = cell_ops[k]
        h, new["ops"][str(k)] = op.apply(params["ops"][str(k)], stats["ops"][str(k)], states[pairs[k][1]],
                                         train, self.conv_impl)
        if train and key is not None and not op.is_identity:
          h = drop_path(jax.random.fold_in(key, k), h, drop_prob)
        node = h if node is None else node + h
      states.append(node)  # (LHD: None for a node without ops; _check makes sure nothing reads it)
    if self._lhd:
      return (sum(states[2 + j] for j in sorted(concat["sum"])),
              jnp.concatenate([states[2 + j] for j in sorted(concat["concat"])], axis=-1)), new
    return jnp.concatenate([states[i] for i in concat], axis=-1), new

  def _aux_head(self, p, s, x, train):
    return aux_head_apply(p, s, x, train, self.macro)

  def forward(self, params, batch_stats, images, *, train: bool = False, key=None, drop_path_prob=None):
    """Pure forward pass: ``(logits, aux_logits, new_batch_stats)``.

    Args:
      images: ``(B, H, W, 3)`` normalised (32-px for 'cifar', 224-px for 'imagenet').
      train: batch statistics and auxiliary logits if True; running statistics if False.
      key: PRNG key for drop path (no drop path without it).
      drop_path_prob: p for this call (a traced scalar is fine); defaults to the attribute.
    """
    self._check()
    macro.check_images(images, layers=self.layers, auxiliary=self.auxiliary and train, macro=self.macro,
                       what="Network.forward", aux_position=self.aux_position)
    p = self.drop_path_prob if drop_path_prob is None else drop_path_prob
    s0, s1, new_stats = macro.stem_apply(params, batch_stats, images, train, self.macro)
    if self._lhd:
      s0, new_stats["stem0"] = ops.conv_bn_apply(params["stem0"], batch_stats["stem0"], images, train, padding=1)

    def cell_fn(spec, cp, cs, c0, c1, k):
      return self._cell(spec, cp, cs, c0, c1, k, train, p)

    taps = (self.aux_position,) if (self.auxiliary and train) else ()
    out, cell_stats, tapped = macro.run_cells(self.groups(), cell_fn, params, batch_stats, s0, s1,
                                              key=key if train else None, taps=taps,
                                              chain="outputs" if self._lhd else "darts")
    if self._lhd:
      out = jnp.concatenate(out, axis=-1)
      tapped = {t: jnp.concatenate(v, axis=-1) for t, v in tapped.items()}
    new_stats.update(cell_stats)
    aux_logits = None
    if self.auxiliary:
      if train:
        aux_logits, new_stats["aux_head"] = self._aux_head(params["aux_head"], batch_stats["aux_head"],
                                                           tapped[self.aux_position], train)
      else:
        new_stats["aux_head"] = batch_stats["aux_head"]
    logits = ops.linear_apply(params["classifier"], macro.global_avg_pool(out))
    return logits, aux_logits, new_stats

  # ------------------------------------------------------------------------------------ linen
  @nn.compact
  def __call__(self, images, train: bool = False, drop_path_prob=None):
    return macro.linen_forward(self, images, train, drop_path_prob)


def count_params(params: Any, *, exclude: tuple[str, ...] = ("aux_head",)) -> int:
  """Number of parameters; top-level entries named in ``exclude`` are left out (by default the
  auxiliary head, as DARTS reports model sizes [quark0 ``utils.count_parameters_in_MB``])."""
  if isinstance(params, dict) and "params" in params and "batch_stats" in params:
    params = params["params"]
  if isinstance(params, dict):
    params = {k: v for k, v in params.items() if k not in exclude}
  return int(sum(x.size for x in jax.tree.leaves(params)))
