"""GDAS-FRC's fixed reduction cell [xautodl ``cell_operations.GDAS_Reduction_Cell``], NHWC.

The cell has no architecture parameters. With s0, s1 preprocessed to C channels as in a DARTS cell
(s0: FactorizedReduce after a reduction, else ReLU-1x1 conv-BN; s1: ReLU-1x1 conv-BN):

  B(x) = BN(conv1x1(ReLU(BN(conv3x1_s(2,1)(conv1x3_s(1,2)(ReLU(x)))))))    (both convs grouped, 8 groups)
  out  = concat[B_0(s0), B_1(s1), BN(maxpool3x3_s2(s0)), BN(maxpool3x3_s2(s1))]    (4C channels)

B_0 and B_1 have their own weights. In the search (``affine=False``) every BN is affine-free and the
convolutions have a bias (xautodl: ``bias = not affine``); in the final network (``affine=True``)
the BNs are affine and the convolutions have no bias. Drop path (training only) applies to each of
the four branches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jnas import kernels, ops

MULTIPLIER = 4  # branches concatenated at the output
GROUPS = 8


def _grouped_init(key, kh, kw, C, bias: bool):
  kw_, kb = jax.random.split(key)
  fan_in = (C // GROUPS) * kh * kw
  p = {"w": ops.uniform_init(kw_, (kh, kw, C // GROUPS, C), fan_in)}
  if bias:
    p["b"] = ops.uniform_init(kb, (C,), fan_in)
  return p


def _grouped_conv(p, x, stride, padding):
  y = lax.conv_general_dilated(x, p["w"], stride, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               feature_group_count=GROUPS)
  return y + p["b"].reshape(1, 1, 1, -1) if "b" in p else y


def _branch_init(key, C, affine):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  bn1_p, bn1_s = ops.bn_init(C, affine)
  bn2_p, bn2_s = ops.bn_init(C, affine)
  pw = {"w": ops.uniform_init(k3, (C, C), C)}
  if not affine:
    pw["b"] = ops.uniform_init(k4, (C,), C)
  params = {"conv13": _grouped_init(k1, 1, 3, C, not affine), "conv31": _grouped_init(k2, 3, 1, C, not affine),
            "bn1": bn1_p, "pw": pw, "bn2": bn2_p}
  return params, {"bn1": bn1_s, "bn2": bn2_s}


def _branch_apply(p, s, x, train, impl):
  y = _grouped_conv(p["conv13"], jax.nn.relu(x), (1, 2), ((0, 0), (1, 1)))
  y = _grouped_conv(p["conv31"], y, (2, 1), ((1, 1), (0, 0)))
  y, bn1 = ops.bn_apply(p["bn1"], s["bn1"], y, train)
  y = kernels.pointwise(jax.nn.relu(y), p["pw"]["w"], impl=impl)
  if "b" in p["pw"]:
    y = y + p["pw"]["b"].reshape(1, 1, 1, -1)
  y, bn2 = ops.bn_apply(p["bn2"], s["bn2"], y, train)
  return y, {"bn1": bn1, "bn2": bn2}


def _preprocess(spec, affine):
  pre0 = (ops.factorized_reduce(spec.C_pp, spec.C, affine) if spec.reduction_prev
          else ops.relu_conv_bn(spec.C_pp, spec.C, affine))
  return pre0, ops.relu_conv_bn(spec.C_p, spec.C, affine)


def check(C: int) -> None:
  if C % GROUPS:
    raise ValueError(f"the GDAS-FRC reduction cell needs channels divisible by {GROUPS}, got {C}")


def init(key, spec, affine: bool):
  """``(params, stats)`` of one fixed reduction cell for ``spec`` (a ``macro.CellSpec``)."""
  check(spec.C)
  pre0, pre1 = _preprocess(spec, affine)
  k0, k1, kb0, kb1 = jax.random.split(key, 4)
  params, stats = {}, {}
  (params["pre0"], stats["pre0"]), (params["pre1"], stats["pre1"]) = pre0.init(k0), pre1.init(k1)
  for name, k in (("branch0", kb0), ("branch1", kb1)):
    params[name], stats[name] = _branch_init(k, spec.C, affine)
  for name in ("pool0", "pool1"):
    params[name], stats[name] = ops.bn_init(spec.C, affine)
  return params, stats


def apply(params, stats, s0, s1, spec, train: bool, conv_impl: str = "auto", key=None, drop_prob=0.0):
  """``(out (B, H/2, W/2, 4C), new_stats)``; drop path on each branch when ``key`` is given."""
  from jnas.network import drop_path  # network imports this module's cell through Network

  pre0, pre1 = _preprocess(spec, "scale" in params["pool0"])
  new = {}
  s0, new["pre0"] = pre0.apply(params["pre0"], stats["pre0"], s0, train)
  s1, new["pre1"] = pre1.apply(params["pre1"], stats["pre1"], s1, train)
  outs = []
  for k, (name, x) in enumerate((("branch0", s0), ("branch1", s1))):
    y, new[name] = _branch_apply(params[name], stats[name], x, train, conv_impl)
    outs.append(y)
  for name, x in (("pool0", s0), ("pool1", s1)):
    y, new[name] = ops.bn_apply(params[name], stats[name], kernels.max_pool(x, 3, 2, 1), train)
    outs.append(y)
  if train and key is not None:
    outs = [drop_path(jax.random.fold_in(key, k), y, drop_prob) for k, y in enumerate(outs)]
  return jnp.concatenate(outs, axis=-1), new
