"""The discrete network of a ``jnas.cellspace.SpaceGenotype`` (ENAS, NAO, NSGA-Net), NHWC.

The macro structure follows the space's ``MacroSpec`` and the network's attributes
[other_spaces.md §1.2, §2.2, §3.2, §5]:

* stem: 'cifar' 3x3 conv 3 -> 3C + BN, both inputs of cell 0; 'imagenet' the DARTS two-stem
  (stem0 C/2 -> C with stride 4, stem1 stride 2: 224 -> 28 px), cell 0 reading them as after a
  reduction;
* cells: 'darts' layout (reductions at L//3, 2L//3; NSGA-Net) or 'inserted' (ENAS, NAO: L + 2 cells,
  reductions at [L//3, 2(L//3) + 1] of ``layers`` = L + 2 cells); channels double at reductions,
  or with ``filter_increment`` = d > 0 cell i has C + i d channels and reductions only halve the
  resolution (NSGA-Net's PyramidNetworkCIFAR);
* a cell: the space's preprocessing of (s0, s1) to C channels; node j = op_1(state_{i_1}) +
  op_2(state_{i_2}) (stride 2 on cell inputs of a reduction cell); output = the concat of the
  space's output states (``CellSpace.concat``), where an unused cell input of a reduction cell first
  goes through FactorizedReduce without ReLU (ENAS, NAO); ``se``: squeeze-and-excitation on the
  concat (GAP -> FC c -> c/16 -> ReLU -> FC -> sigmoid -> channel scale, no biases; NSGA-Net);
* the auxiliary head (DARTS's, ``jnas.network.aux_head_apply``) after the space's aux cell; the head:
  [ReLU (ENAS)] -> GAP -> [dropout ``head_dropout``] -> linear [no bias (ENAS)].

Drop path (training, with a key): every non-identity op output times a per-sample Bernoulli mask
over keep. ``drop_path_schedule='linear'`` uses p as given (DARTS: p_max e / E, set by the
caller); 'scheduled' is ScheduledDropPath (ENAS, NAO): cell l of L drops with p (l + 1) / L, the
caller passing p = (1 - keep) min(1, (t + 1) / T). ``drop_path_exempt='inputs_4_5'`` is NB-NAO's
bug (the input index, not the op, decides: states 4 and 5 are never dropped, identities are).

Where jnas departs from the codes: every space uses DARTS's auxiliary head (ENAS's has an hw x hw
'SAME' conv, at the same position) and PyTorch's default initialisation and BN momentum 0.1
(ENAS-TF: He-normal, decay 0.9).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jnas import cellspace, macro, ops, space_ops
from jnas.network import aux_head_apply, aux_head_init, drop_path

__all__ = ["SpaceNetwork", "SpaceCell"]


class SpaceCell(NamedTuple):
  reduction: bool
  reduction_prev: bool
  C_pp: int
  C_p: int
  C: int


def _se_init(key, c: int):
  h = max(c // 16, 1)
  k1, k2 = jax.random.split(key)
  return {"fc1": ops.uniform_init(k1, (c, h), c), "fc2": ops.uniform_init(k2, (h, c), h)}


def _se_apply(p, x):
  g = jax.nn.sigmoid(jax.nn.relu(jnp.mean(x, axis=(1, 2)) @ p["fc1"]) @ p["fc2"])
  return x * g[:, None, None, :]


class SpaceNetwork(nn.Module):
  """The network of a ``SpaceGenotype`` (see the module docstring); the interface of ``jnas.Network``
  (``init_variables``, ``forward`` -> (logits, aux_logits, new_batch_stats), linen ``__call__``).

  Attributes: genotype; C (initial channels); layers (cells in all, reductions included);
  num_classes; auxiliary; drop_path_prob (default p); macro ('cifar' | 'imagenet');
  filter_increment (0: double at reductions); se; head_dropout; drop_path_schedule ('linear' |
  'scheduled'); drop_path_exempt ('identity' | 'inputs_4_5'); stem_multiplier; conv_impl; scan
  (consecutive identical cells share one compiled body).
  """

  genotype: Any
  C: int = 36
  layers: int = 20
  num_classes: int = 10
  auxiliary: bool = False
  drop_path_prob: float = 0.0
  macro: str = "cifar"
  filter_increment: int = 0
  se: bool = False
  head_dropout: float = 0.0
  drop_path_schedule: str = "linear"
  drop_path_exempt: str = "identity"
  stem_multiplier: int = 3
  conv_impl: str = "auto"
  scan: bool = True

  # ------------------------------------------------------------------------------ static layout
  @property
  def space(self) -> cellspace.CellSpace:
    return self.genotype.cell_space

  def _check(self):
    if not isinstance(self.genotype, cellspace.SpaceGenotype):
      raise ValueError(f"SpaceNetwork needs a jnas.cellspace.SpaceGenotype, got {type(self.genotype).__name__}")
    if self.macro not in ("cifar", "imagenet"):
      raise ValueError(f"unknown macro structure {self.macro!r}; use 'cifar' or 'imagenet'")
    if self.space.macro.layout == "inserted" and self.layers < 3:
      raise ValueError(f"the {self.space.name} layout needs at least 3 cells (2 reductions), got {self.layers}")
    if self.drop_path_schedule not in ("linear", "scheduled"):
      raise ValueError(f"drop_path_schedule must be 'linear' or 'scheduled', got {self.drop_path_schedule!r}")
    if self.drop_path_exempt not in ("identity", "inputs_4_5"):
      raise ValueError(f"drop_path_exempt must be 'identity' or 'inputs_4_5', got {self.drop_path_exempt!r}")
    if not 0.0 <= self.head_dropout < 1.0:
      raise ValueError(f"head_dropout must lie in [0, 1), got {self.head_dropout}")

  @property
  def reductions(self) -> tuple[int, int]:
    return self.space.macro.reductions(self.layers)

  @property
  def aux_position(self) -> int:
    return self.space.macro.aux_position(self.layers)

  def _width(self, reduction: bool) -> int:
    return len(self.genotype.cell(reduction)[1])

  def plan(self) -> list[SpaceCell]:
    reductions = set(self.reductions)
    C_stem = self.stem_multiplier * self.C if self.macro == "cifar" else self.C
    C_pp, C_p, C_cur = C_stem, C_stem, self.C
    reduction_prev = self.macro == "imagenet"
    plan = []
    for i in range(self.layers):
      reduction = i in reductions
      if self.filter_increment:
        C_cur = self.C + i * self.filter_increment
      elif reduction:
        C_cur *= 2
      plan.append(SpaceCell(reduction, reduction_prev, C_pp, C_p, C_cur))
      C_pp, C_p, reduction_prev = C_p, self._width(reduction) * C_cur, reduction
    return plan

  def groups(self) -> list[macro.Group]:
    return macro.group_cells(self.plan(), self.scan)

  def _preprocess(self, spec: SpaceCell):
    """(pre0, pre1, base) ops; None where the space skips one."""
    rule, C = self.space.preprocess, spec.C
    if rule == "always":
      pre0 = (space_ops.factorized_reduce(spec.C_pp, C, True, relu=True) if spec.reduction_prev
              else ops.relu_conv_bn(spec.C_pp, C, True))
      return pre0, ops.relu_conv_bn(spec.C_p, C, True), None
    if spec.reduction_prev:
      pre0 = space_ops.factorized_reduce(spec.C_pp, C, True, relu=True)
    else:
      pre0 = ops.relu_conv_bn(spec.C_pp, C, True) if spec.C_pp != C else None
    pre1 = ops.relu_conv_bn(spec.C_p, C, True) if spec.C_p != C else None
    base = ops.relu_conv_bn(C, C, True) if rule == "if_needed_base" else None
    return pre0, pre1, base

  def _cell_ops(self, spec: SpaceCell):
    pairs, _ = self.genotype.cell(spec.reduction)
    return [self.space.make_op(name, spec.C, 2 if (spec.reduction and i < 2) else 1) for name, i in pairs]

  def _reduced_inputs(self, spec: SpaceCell) -> list[int]:
    """Unused cell inputs of a reduction cell in its concat (each through FR without ReLU)."""
    _, concat = self.genotype.cell(spec.reduction)
    return [i for i in concat if i < 2] if spec.reduction else []

  # ------------------------------------------------------------------------------------- init
  def _init_cell(self, spec: SpaceCell, key):
    keys = iter(jax.random.split(key, 8 + 2 * len(self.genotype.cell(spec.reduction)[0])))
    params, stats = {"ops": {}}, {"ops": {}}
    for name, op in zip(("pre0", "pre1", "base"), self._preprocess(spec)):
      if op is not None:
        params[name], stats[name] = op.init(next(keys))
    for k, op in enumerate(self._cell_ops(spec)):
      params["ops"][str(k)], stats["ops"][str(k)] = op.init(next(keys))
    for i in self._reduced_inputs(spec):
      params[f"fr{i}"], stats[f"fr{i}"] = space_ops.factorized_reduce(spec.C, spec.C, True).init(next(keys))
    if self.se:
      params["se"] = _se_init(next(keys), self._width(spec.reduction) * spec.C)
    return params, stats

  def init_variables(self, key) -> dict:
    """``{'params': ..., 'batch_stats': ...}`` (PyTorch's default initialisation)."""
    self._check()
    k_stem, k_cells, k_aux, k_cls = jax.random.split(key, 4)
    C = self.C
    params, stats = macro.stem_init(k_stem, self.macro, C, self.stem_multiplier)
    plan = self.plan()
    for g in self.groups():
      params[g.name], stats[g.name] = macro.stack_init(
          lambda k, spec=g.spec: self._init_cell(spec, k), jax.random.fold_in(k_cells, g.start), g.size)
    if self.auxiliary:
      spec = plan[self.aux_position]
      params["aux_head"], stats["aux_head"] = aux_head_init(k_aux, self._width(spec.reduction) * spec.C,
                                                            self.num_classes)
    C_last = self._width(plan[-1].reduction) * plan[-1].C
    cls = ops.linear_init(k_cls, C_last, self.num_classes)
    params["classifier"] = cls if self.space.macro.head_bias else {"w": cls["w"]}
    return {"params": params, "batch_stats": stats}

  # ------------------------------------------------------------------------------------ apply
  def _cell(self, spec, params, stats, s0, s1, key, train, drop_prob):
    pairs, concat = self.genotype.cell(spec.reduction)
    new = {"ops": {}}
    pre = dict(zip(("pre0", "pre1", "base"), self._preprocess(spec)))
    if pre["pre0"] is not None:
      s0, new["pre0"] = pre["pre0"].apply(params["pre0"], stats["pre0"], s0, train, self.conv_impl)
    if pre["pre1"] is not None:
      s1, new["pre1"] = pre["pre1"].apply(params["pre1"], stats["pre1"], s1, train, self.conv_impl)
    if pre["base"] is not None:
      s1, new["base"] = pre["base"].apply(params["base"], stats["base"], s1, train, self.conv_impl)
    states = [s0, s1]
    cell_ops = self._cell_ops(spec)
    for j in range(len(pairs) // 2):
      node = None
      for k in (2 * j, 2 * j + 1):
        op, i = cell_ops[k], pairs[k][1]
        h, new["ops"][str(k)] = op.apply(params["ops"][str(k)], stats["ops"][str(k)], states[i], train,
                                         self.conv_impl)
        exempt = op.is_identity if self.drop_path_exempt == "identity" else i in (4, 5)
        if train and key is not None and not exempt:
          h = drop_path(jax.random.fold_in(key, k), h, drop_prob)
        node = h if node is None else node + h
      states.append(node)
    outs = []
    for i in concat:
      x = states[i]
      if spec.reduction and i < 2:
        x, new[f"fr{i}"] = space_ops.factorized_reduce(spec.C, spec.C, True).apply(
            params[f"fr{i}"], stats[f"fr{i}"], x, train, self.conv_impl)
      outs.append(x)
    out = jnp.concatenate(outs, axis=-1)
    if self.se:
      out = _se_apply(params["se"], out)
    return out, new

  def forward(self, params, batch_stats, images, *, train: bool = False, key=None, drop_path_prob=None):
    """Pure forward pass: ``(logits, aux_logits, new_batch_stats)`` (as ``jnas.Network.forward``)."""
    self._check()
    macro.check_images(images, layers=self.layers, auxiliary=self.auxiliary and train, macro=self.macro,
                       what=f"{self.space.name} network", aux_position=self.aux_position,
                       reductions=self.reductions)
    p = self.drop_path_prob if drop_path_prob is None else drop_path_prob
    s0, s1, new_stats = macro.stem_apply(params, batch_stats, images, train, self.macro)
    use_key = key if train else None
    cell_keys = jax.random.split(jax.random.fold_in(use_key, 1), self.layers) if use_key is not None else None
    scheduled = self.drop_path_schedule == "scheduled"
    aux_at = self.aux_position if (self.auxiliary and train) else None
    tapped = None
    for g in self.groups():
      gp, gs = params[g.name], batch_stats[g.name]
      layer = jnp.arange(g.start, g.start + g.size)
      keys = cell_keys[g.start:g.start + g.size] if cell_keys is not None else None

      def body(carry, xs, spec=g.spec):
        c0, c1 = carry
        cp, cs, ck, l = xs
        prob = p * (l + 1) / self.layers if scheduled else p
        out, ns = self._cell(spec, cp, cs, c0, c1, ck, train, prob)
        return (c1, out), ns

      if g.size == 1:
        take = lambda t: jax.tree.map(lambda a: a[0], t)
        (s0, s1), ns = body((s0, s1), (take(gp), take(gs), None if keys is None else keys[0], layer[0]))
        ns = jax.tree.map(lambda a: a[None], ns)
      else:
        (s0, s1), ns = jax.lax.scan(body, (s0, s1), (gp, gs, keys, layer))
      if aux_at is not None and g.start <= aux_at < g.start + g.size:
        if aux_at != g.start + g.size - 1:
          raise ValueError(f"cell {aux_at} carries the auxiliary head but is not the last of its scanned group")
        tapped = s1
      new_stats[g.name] = ns
    aux_logits = None
    if self.auxiliary:
      if train:
        aux_logits, new_stats["aux_head"] = aux_head_apply(params["aux_head"], batch_stats["aux_head"], tapped,
                                                           train, self.macro)
      else:
        new_stats["aux_head"] = batch_stats["aux_head"]
    out = jax.nn.relu(s1) if self.space.macro.head_relu else s1
    h = macro.global_avg_pool(out)
    if train and self.head_dropout > 0 and key is not None:
      keep = 1.0 - self.head_dropout
      mask = jax.random.bernoulli(jax.random.fold_in(key, 2), keep, h.shape)
      h = h * mask.astype(h.dtype) / keep
    logits = h @ params["classifier"]["w"]
    if "b" in params["classifier"]:
      logits = logits + params["classifier"]["b"][None, :]
    return logits, aux_logits, new_stats

  # ------------------------------------------------------------------------------------ linen
  @nn.compact
  def __call__(self, images, train: bool = False, drop_path_prob=None):
    return macro.linen_forward(self, images, train, drop_path_prob)
