"""The ENAS and NAO op families (the DARTS and NSGA-Net ops are ``jnas.ops``'s), NHWC.

Each op is a ``jnas.ops.Op(init, apply, is_identity)``, C channels in and out, built by
``make_op(family, name, C, stride, affine)``. Definitions [other_spaces.md §1.1, §2.1]:

ENAS (melodyguan/enas ``micro_child.py`` ``_fixed_layer``; TensorFlow 'SAME' padding, which at
stride 2 on an even size pads (k - 2) // 2 before and the rest after, i.e. one more pixel at the
bottom/right than PyTorch's symmetric k // 2):

  sep_conv_k    2 x [ReLU -> depthwise kxk (stride s on the first only) -> pointwise 1x1 -> BN]
  avg_pool_3x3  3x3 average, stride s, the padded cells left out of the mean; no BN
  max_pool_3x3  3x3 max, stride s
  identity      x; at stride 2 FactorizedReduce *without* ReLU (``factorized_reduce(relu=False)``)

NAO (NAS-Benchmark's NAO ``operations.py`` / ``model.py``, PyTorch symmetric padding; the op ids
of NB's ``model.py`` are ``jnas.cellspace.NAO_OPS``' positions):

  sep_conv_k              DARTS's SepConv (ReLU dw pw BN, twice)
  avg_pool_3x3            count_include_pad=False (the small space's op 2)
  max_pool_3x3(_large)    MaxPool2d(3, s, 1)
  identity(_large)        x; at stride 2 FactorizedReduce without ReLU
  conv_1x1, conv_3x3      ReLU -> conv (stride s) -> BN
  conv_1x3_3x1, conv_1x7_7x1  ReLU -> conv (1,k) stride (1,s) -> BN -> ReLU -> conv (k,1) stride (s,1) -> BN
  max_pool_2x2, avg_pool_2x2  zero-pad right/bottom by 1 (zeros, also for max), 2x2 pool stride s,
                          no padding; the average counts the padded zeros
  max_pool_5x5            MaxPool2d(5, s, 2)
  avg_pool_3x3_large, avg_pool_5x5  AvgPool2d(k, s, k // 2) counting the padding (PyTorch's default)

Initialisation is PyTorch's default for every family (``jnas.ops.uniform_init``); ENAS-TF draws
He-normal weights, which jnas does not reproduce.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jnas import kernels, ops
from jnas.ops import Op, bn_apply, bn_init, identity, uniform_init

__all__ = ["make_op", "factorized_reduce", "tf_same_pads", "ENAS_OPS", "NAO_OPS"]

ENAS_OPS = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "identity")
NAO_OPS = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "identity", "identity_large",
           "conv_1x1", "conv_3x3", "conv_1x3_3x1", "conv_1x7_7x1", "max_pool_2x2", "max_pool_3x3_large",
           "max_pool_5x5", "avg_pool_2x2", "avg_pool_3x3_large", "avg_pool_5x5")


def tf_same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
  """TensorFlow 'SAME' padding (before, after) of one spatial axis: total
  max((ceil(size / s) - 1) s + d (k - 1) + 1 - size, 0), the extra pixel after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + dilation * (k - 1) + 1 - size, 0)
  return total // 2, total - total // 2


def _pad(x, pads_h, pads_w, value=0.0):
  return jnp.pad(x, ((0, 0), pads_h, pads_w, (0, 0)), constant_values=value)


def factorized_reduce(C_in: int, C_out: int, affine: bool, relu: bool = False) -> Op:
  """FactorizedReduce: [ReLU] -> two 1x1 stride-2 convs, the second on x shifted by one pixel
  (right/bottom zero padding, so odd sizes work as in ENAS/NAO) -> concat -> BN."""
  if C_out % 2:
    raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")

  init = ops.factorized_reduce(C_in, C_out, affine).init  # (the same parameters as DARTS's)

  def apply(p, s, x, train, impl="auto"):
    if relu:
      x = jax.nn.relu(x)
    shifted = _pad(x, (0, 1), (0, 1))[:, 1:, 1:, :]
    y = jnp.concatenate([kernels.pointwise(x[:, ::2, ::2, :], p["w1"], impl=impl),
                         kernels.pointwise(shifted[:, ::2, ::2, :], p["w2"], impl=impl)], axis=-1)
    y, bn = bn_apply(p["bn"], s["bn"], y, train)
    return y, {"bn": bn}

  return Op(init, apply)


def _dw(x, w, k, stride, same, impl):
  """Depthwise kxk conv, stride s: TF 'SAME' pads (``same``) or PyTorch's symmetric k // 2."""
  if not same:
    return kernels.depthwise_conv(x, w, stride=stride, padding=k // 2, impl=impl)
  ph, pw = tf_same_pads(x.shape[1], k, stride), tf_same_pads(x.shape[2], k, stride)
  if ph[0] == ph[1] and pw[0] == pw[1] and ph == pw:
    return kernels.depthwise_conv(x, w, stride=stride, padding=ph[0], impl=impl)
  return kernels.depthwise_conv(_pad(x, ph, pw), w, stride=stride, padding=0, impl=impl)


def sep_conv(C: int, k: int, stride: int, affine: bool, same: bool) -> Op:
  """2 x [ReLU -> depthwise kxk -> pointwise -> BN], only the first depthwise conv strided."""
  def init(key):
    keys = jax.random.split(key, 4)
    p, s = {}, {}
    for i in range(2):
      bn_p, bn_s = bn_init(C, affine)
      p[f"op{i + 1}"] = {"dw": uniform_init(keys[2 * i], (k, k, C), k * k),
                         "pw": uniform_init(keys[2 * i + 1], (C, C), C), "bn": bn_p}
      s[f"op{i + 1}"] = {"bn": bn_s}
    return p, s

  def apply(p, s, x, train, impl="auto"):
    new = {}
    for i, st in ((1, stride), (2, 1)):
      q = p[f"op{i}"]
      y = kernels.pointwise(_dw(jax.nn.relu(x), q["dw"], k, st, same, impl), q["pw"], impl=impl)
      x, bn = bn_apply(q["bn"], s[f"op{i}"]["bn"], y, train)
      new[f"op{i}"] = {"bn": bn}
    return x, new

  return Op(init, apply)


def _window(x, op, init, k, stride, pads_h, pads_w):
  return lax.reduce_window(x, init, op, (1, k, k, 1), (1, stride, stride, 1),
                           ((0, 0), pads_h, pads_w, (0, 0)))


def pool(kind: str, k: int, stride: int, *, pads: str, count_include_pad: bool) -> Op:
  """k x k max or average pooling at ``stride`` with padding ``pads``: 'same' (TF), 'symmetric'
  (PyTorch k // 2) or 'right' (zeros on the right/bottom: NAO's 2x2 pools, a zero also for max)."""
  def apply(p, s, x, train, impl="auto"):
    del p, impl, train
    H, W = x.shape[1:3]
    if pads == "same":
      ph, pw = tf_same_pads(H, k, stride), tf_same_pads(W, k, stride)
    elif pads == "symmetric":
      ph = pw = (k // 2, k // 2)
    else:
      ph = pw = (0, 1)
    if kind == "max":
      if pads == "right":  # F.pad with zeros, then an unpadded max pool
        x, ph, pw = _pad(x, ph, pw), (0, 0), (0, 0)
      if ph == pw and ph[0] == ph[1]:
        return kernels.max_pool(x, k, stride, ph[0]), s
      return _window(x, lax.max, -jnp.inf, k, stride, ph, pw), s
    total = _window(x, lax.add, 0.0, k, stride, ph, pw)
    if count_include_pad:
      return total / (k * k), s
    ones = jnp.ones((1, H, W, 1), x.dtype)
    return total / _window(ones, lax.add, 0.0, k, stride, ph, pw), s

  return Op(lambda key: ({}, {}), apply)


def conv_pair(C: int, k: int, stride: int, affine: bool) -> Op:
  """NAO's factorised conv: ReLU -> conv (1,k) stride (1,s) -> BN -> ReLU -> conv (k,1) stride (s,1) -> BN."""
  def init(key):
    k1, k2 = jax.random.split(key)
    (b1, s1), (b2, s2) = bn_init(C, affine), bn_init(C, affine)
    return ({"w1": uniform_init(k1, (1, k, C, C), k * C), "bn1": b1, "w2": uniform_init(k2, (k, 1, C, C), k * C),
             "bn2": b2}, {"bn1": s1, "bn2": s2})

  def apply(p, s, x, train, impl="auto"):
    y = kernels.conv(jax.nn.relu(x), p["w1"], stride=(1, stride), padding=(0, k // 2), impl=impl)
    y, n1 = bn_apply(p["bn1"], s["bn1"], y, train)
    y = kernels.conv(jax.nn.relu(y), p["w2"], stride=(stride, 1), padding=(k // 2, 0), impl=impl)
    y, n2 = bn_apply(p["bn2"], s["bn2"], y, train)
    return y, {"bn1": n1, "bn2": n2}

  return Op(init, apply)


def make_op(family: str, name: str, C: int, stride: int, affine: bool = True) -> Op:
  """The op ``name`` of the ENAS or NAO family on C channels at ``stride`` (see the module docstring)."""
  if stride not in (1, 2):
    raise ValueError(f"op stride must be 1 or 2, got {stride}")
  if family == "enas":
    if name not in ENAS_OPS:
      raise ValueError(f"unknown ENAS op {name!r}; the ENAS space has {', '.join(ENAS_OPS)}")
    if name.startswith("sep_conv"):
      return sep_conv(C, int(name[-1]), stride, affine, same=True)
    if name.endswith("pool_3x3"):
      return pool(name[:3], 3, stride, pads="same", count_include_pad=False)
    return identity() if stride == 1 else factorized_reduce(C, C, affine, relu=False)
  if family != "nao":
    raise ValueError(f"unknown op family {family!r}; jnas.space_ops has 'enas' and 'nao'")
  if name not in NAO_OPS:
    raise ValueError(f"unknown NAO op {name!r}; the NAO space has {', '.join(NAO_OPS)}")
  if name.startswith("sep_conv"):
    return sep_conv(C, int(name[-1]), stride, affine, same=False)
  if name.startswith("identity"):
    return identity() if stride == 1 else factorized_reduce(C, C, affine, relu=False)
  if name in ("conv_1x1", "conv_3x3"):
    k = int(name[-1])
    return ops.conv_bn(C, (k, k), (stride, stride), affine)
  if name in ("conv_1x3_3x1", "conv_1x7_7x1"):
    return conv_pair(C, int(name[7]), stride, affine)
  k = int(name[len("max_pool_")])
  if k == 2:
    return pool(name[:3], 2, stride, pads="right", count_include_pad=True)
  include = name in ("avg_pool_3x3_large", "avg_pool_5x5")
  return pool(name[:3], k, stride, pads="symmetric", count_include_pad=include)
