"""The weight-sharing supernet of the ENAS micro space (ENAS search, and NAO-WS in jnas), NHWC.

One set of shared weights serves every architecture ("arc") of the 5-op space
(``jnas.space_ops.ENAS_OPS``: sep_conv_3x3, sep_conv_5x5, avg_pool_3x3, max_pool_3x3, identity), and
the arc is a *traced* input: ``{'inputs', 'ops'}`` int arrays (2, B, 2) (cell type, node, branch).
After ENAS-TF's search graph [melodyguan/enas ``micro_child.py`` ``_enas_layer``, ``_enas_cell``;
other_spaces.md §1.1 "Search supernet", §1.8]:

* a cell's inputs are calibrated to F channels (FR with ReLU on a resolution mismatch, ReLU-1x1-BN
  on a channel mismatch), then ReLU-1x1-BN on s1 (``layer_base``);
* node j, branch k: x = states[i] (``jnp.take`` on the stacked states); y = op(x) by ``lax.switch``;
  the separable convs hold one weight set (and BN affine) per possible input index i, per node and
  branch (arrays with a leading axis of B + 1 input slots, indexed by i; node j uses j + 2 of them,
  so that the nodes share one ``lax.scan`` body, which keeps the compile small); node = y_1 + y_2;
* the output: ReLU(concat of unused states) -> 1x1 conv -> BN, written with static shapes as
  BN(sum_s m_s ReLU(h_s) W_s), m_s = [state s unused], W_s: the F x F block of state s (exact: ENAS
  gathers one block per state);
* every BN uses batch statistics and keeps none (ENAS's search BNs), so the supernet has no
  ``batch_stats``; no op is strided: a reduction layer applies FR to the previous output, reads
  [prev, FR(prev)] and runs a stride-1 cell with the reduce arc (F doubles there);
* macro: stem 3x3 conv 3 -> 3F + BN; ``layers`` = L + 2 cells with reductions at [L//3, 2(L//3) + 1];
  head ReLU -> GAP -> dropout -> linear.

Departures: jnas has no auxiliary head and no drop path in the search (ENAS's script turns the aux
head on; its drop path has no effect in search). NB's NAO-WS strides the ops of its reduction
cells and keeps BN running statistics shared across input indices; jnas's NAO-WS uses this
ENAS-style supernet (say so where NAO uses it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jnas import kernels, ops
from jnas.space_ops import factorized_reduce, pool

__all__ = ["WSNet"]

N_OPS = 5


def _bn(x, p=None):
  y, _ = kernels.batch_norm(x, {"mean": jnp.zeros(x.shape[-1]), "var": jnp.ones(x.shape[-1])}, train=True,
                            scale=None if p is None else p["scale"], bias=None if p is None else p["bias"])
  return y


def _bn_params(C):
  return {"scale": jnp.ones((C,), jnp.float32), "bias": jnp.zeros((C,), jnp.float32)}


def _rcb_init(key, c_in, c_out):
  return {"w": ops.uniform_init(key, (c_in, c_out), c_in), "bn": _bn_params(c_out)}


def _rcb(p, x):
  return _bn(kernels.pointwise(jax.nn.relu(x), p["w"]), p["bn"])


def _fr(p, x, relu):
  op = factorized_reduce(x.shape[-1], p["w1"].shape[1] * 2, True, relu=relu)
  stats = {"bn": {"mean": jnp.zeros(p["w1"].shape[1] * 2), "var": jnp.ones(p["w1"].shape[1] * 2)}}
  return op.apply(p, stats, x, True)[0]


def _fr_init(key, c_in, c_out):
  return factorized_reduce(c_in, c_out, True).init(key)[0]


def _sep_init(key, n_slots, k, C):
  keys = jax.random.split(key, 4)
  one = lambda kk, shape, fan: ops.uniform_init(kk, (n_slots,) + shape, fan)
  return {"dw1": one(keys[0], (k, k, C), k * k), "pw1": one(keys[1], (C, C), C),
          "dw2": one(keys[2], (k, k, C), k * k), "pw2": one(keys[3], (C, C), C),
          "bn1": {"scale": jnp.ones((n_slots, C)), "bias": jnp.zeros((n_slots, C))},
          "bn2": {"scale": jnp.ones((n_slots, C)), "bias": jnp.zeros((n_slots, C))}}


def _sep(p, i, x, k, impl):
  take = lambda a: jnp.take(a, i, axis=0)
  for n in ("1", "2"):
    y = kernels.depthwise_conv(jax.nn.relu(x), take(p["dw" + n]), stride=1, padding=k // 2, impl=impl)
    x = _bn(kernels.pointwise(y, take(p["pw" + n])), jax.tree.map(take, p["bn" + n]))
  return x


class CellPlan(NamedTuple):
  reduction: bool
  reduce_s0: bool  # s0 is at twice s1's resolution
  C_pp: int
  C_p: int
  C: int


class WSNet(NamedTuple):
  """The supernet's static shape: F (``C``), ``layers`` cells in all, B nodes, ``num_classes``,
  head ``dropout``; ``conv_impl`` of the depthwise convs (``jnas.kernels``; default 'xla': the
  library convolution compiles this switch-heavy graph about 2x faster than 'shift' on XLA:CPU). ``init(key) -> params``; ``forward(params, images, arc, key=None, train=True)
  -> logits``."""

  C: int = 20
  layers: int = 8
  num_nodes: int = 5
  num_classes: int = 10
  dropout: float = 0.1
  stem_multiplier: int = 3
  conv_impl: str = "xla"

  @property
  def reductions(self):
    L = self.layers - 2
    return L // 3, 2 * (L // 3) + 1

  def plan(self) -> list[CellPlan]:
    red = set(self.reductions)
    C_pp = C_p = self.stem_multiplier * self.C
    C, out, prev_red = self.C, [], False
    for i in range(self.layers):
      if i in red:
        C *= 2
        out.append(CellPlan(True, True, C_p, C, C))  # inputs [prev, FR(prev)]
      else:
        out.append(CellPlan(False, prev_red, C_pp, C_p, C))
      C_pp, C_p, prev_red = C_p, C, i in red
    return out

  def _init_cell(self, key, spec: CellPlan):
    B, C = self.num_nodes, spec.C
    keys = iter(jax.random.split(key, 6 + 4 * B))
    p = {}
    if spec.reduction:
      p["reduce"] = _fr_init(next(keys), spec.C_pp, C)
    if spec.reduce_s0:
      p["pre0"] = _fr_init(next(keys), spec.C_pp, C)
    elif spec.C_pp != C:
      p["pre0"] = _rcb_init(next(keys), spec.C_pp, C)
    if spec.C_p != C:
      p["pre1"] = _rcb_init(next(keys), spec.C_p, C)
    p["base"] = _rcb_init(next(keys), C, C)
    # (node, branch) stacked, B + 1 input slots each (node j uses slots 0..j+1): one scanned node body
    p["nodes"] = jax.vmap(jax.vmap(lambda k: {"sep3": _sep_init(jax.random.fold_in(k, 3), B + 1, 3, C),
                                              "sep5": _sep_init(jax.random.fold_in(k, 5), B + 1, 5, C)}))(
        jax.random.split(next(keys), (B, 2)))
    p["out_w"] = ops.uniform_init(next(keys), (B + 2, C, C), C)
    p["out_bn"] = _bn_params(C)
    return p

  def init(self, key) -> dict:
    k_stem, k_cells, k_cls = jax.random.split(key, 3)
    Cs = self.stem_multiplier * self.C
    params = {"stem": {"w": ops.uniform_init(k_stem, (3, 3, 3, Cs), 27), "bn": _bn_params(Cs)},
              "cells": [self._init_cell(jax.random.fold_in(k_cells, i), spec) for i, spec in enumerate(self.plan())]}
    C_last = self.plan()[-1].C
    params["classifier"] = ops.linear_init(k_cls, C_last, self.num_classes)
    return params

  def _cell(self, p, spec: CellPlan, s0, s1, inputs, op_ids):
    B = self.num_nodes
    if spec.reduction:  # ENAS's reduction layer: [prev, FR(prev)], then a stride-1 cell
      s0, s1 = s1, _fr(p["reduce"], s1, relu=False)
    if "pre0" in p:
      s0 = _fr(p["pre0"], s0, relu=True) if spec.reduce_s0 else _rcb(p["pre0"], s0)
    if "pre1" in p:
      s1 = _rcb(p["pre1"], s1)
    s1 = _rcb(p["base"], s1)
    states = jnp.stack([s0, s1] + [jnp.zeros_like(s1)] * B)
    avg, mx = pool("avg", 3, 1, pads="same", count_include_pad=False), pool("max", 3, 1, pads="same",
                                                                            count_include_pad=False)

    def node_fn(states, xs):
      q_node, ins, ids, j = xs
      node = 0.0
      for k in range(2):
        i, o, q = ins[k], ids[k], jax.tree.map(lambda a: a[k], q_node)
        x = jnp.take(states, i, axis=0)
        branches = [lambda x: _sep(q["sep3"], i, x, 3, self.conv_impl), lambda x: _sep(q["sep5"], i, x, 5, self.conv_impl),
                    lambda x: avg.apply({}, {}, x, True)[0], lambda x: mx.apply({}, {}, x, True)[0], lambda x: x]
        node = node + lax.switch(o, branches, x)
      return lax.dynamic_update_index_in_dim(states, node, j + 2, 0), None

    states, _ = lax.scan(node_fn, states, (p["nodes"], inputs, op_ids, jnp.arange(B)))
    used = jnp.zeros((B + 2,), bool).at[inputs.reshape(-1)].set(True)
    mask = (~used).astype(s1.dtype)
    out = jnp.einsum("s,sbhwc,scd->bhwd", mask, jax.nn.relu(states), p["out_w"])
    return _bn(out, p["out_bn"])

  def forward(self, params, images, arc, *, key=None, train: bool = True):
    """Logits of ``images`` under ``arc`` (BN in batch mode always; head dropout if train and key)."""
    x = _bn(kernels.conv(images, params["stem"]["w"], padding=1), params["stem"]["bn"])
    s0 = s1 = x
    for p, spec in zip(params["cells"], self.plan()):
      c = 1 if spec.reduction else 0
      out = self._cell(p, spec, s0, s1, arc["inputs"][c], arc["ops"][c])
      s0, s1 = s1, out
    h = jnp.mean(jax.nn.relu(s1), axis=(1, 2))
    if train and key is not None and self.dropout > 0:
      keep = 1.0 - self.dropout
      h = h * jax.random.bernoulli(key, keep, h.shape).astype(h.dtype) / keep
    return ops.linear_apply(params["classifier"], h)
