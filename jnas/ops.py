"""The candidate operations of the DARTS space as pure functions, NHWC [paper_protocol.md §1.1].

Each op is an ``Op(init, apply)`` pair built by ``make_op(name, C, stride, affine, pool_bn)`` from
its family's table (``DARTS_OPS``, ``LHD_OPS``: name -> builder; the ENAS and NAO families are in
``jnas.space_ops``, and each cell space's vocabulary is ``jnas.cellspace.CELL_SPACES[name].ops``):

* ``init(key) -> (params, stats)``: PyTorch default initialisation (weights U(±1/sqrt(fan_in)),
  BN scale 1 / bias 0) so a jnas network starts where the PyTorch code starts;
* ``apply(params, stats, x, train, impl) -> (y, new_stats)``.

Definitions follow quark0/darts ``cnn/operations.py``: ReLU-Conv-BN order; ``sep_conv`` applied
twice with only the first depthwise conv strided; ``dil_conv`` with dilation 2; ``skip_connect`` at
stride 2 is ``FactorizedReduce``; average pooling excludes the padding. BN affine is off in the
search and on in retraining; in the search every pooling op is followed by an affine-free BN
(quark0 ``MixedOp``), in the final network only with ``pool_bn=True`` (the pt.darts/NAS-Benchmark
``PoolBN``; quark0's default is no BN).

The op set of Yang et al. §5.2 ("macro vs micro"), which the paper does not define precisely, is
defined here as: ``conv_KxK`` (K in 1, 3, 7, 11) = ReLU -> dense KxK conv C->C, stride s, padding
K//2, no bias -> BN; ``max_pool_5x5`` = 5x5 max pool, padding 2, stride s (with BN where pooling has
BN); ``max_pool_3x3``, ``skip_connect`` and ``none`` as in DARTS.

CNAS's two ops (Weng et al., IEEE Access 2019; tianbaochou/CNAS ``darts/operations.py``, copied
unchanged in NAS-Benchmark ``CNAS/darts/operations.py``): ``cweight_com`` (squeeze-and-excitation
channel attention) and ``shuffle_conv_3x3`` (a ShuffleNet unit, built by ``shuffle_conv``); their
docstrings give the definitions and where jnas departs from the code.

The LHD space's ops (``make_op(..., family='lhd')``; Zhang and Ding, ICML 2023, chaoji90/LHD
``search/operations_five_dr.py``, the same file in ``eval/``): ``sep_conv_k`` and ``dil_conv_k`` are
one ReLU -> depthwise kxk conv (dilation 1 or 2, the stride) -> BN, with no pointwise 1x1 and no
second block; pooling is always followed by an affine-free BN, in the search and in the final
network; ``skip_connect`` (a FactorizedReduce at stride 2) as in DARTS. The op names are DARTS's:
the family says which definitions they mean.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnas import kernels


class Op(NamedTuple):
  init: Callable[[Any], tuple[dict, dict]]
  apply: Callable[..., tuple[Any, dict]]
  is_identity: bool = False


# ------------------------------------------------------------------------------ building blocks
def uniform_init(key, shape, fan_in):
  """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def bn_init(C: int, affine: bool) -> tuple[dict, dict]:
  params = {"scale": jnp.ones((C,), jnp.float32), "bias": jnp.zeros((C,), jnp.float32)} if affine else {}
  return params, {"mean": jnp.zeros((C,), jnp.float32), "var": jnp.ones((C,), jnp.float32)}


def bn_apply(params, stats, x, train):
  return kernels.batch_norm(x, stats, train=train, scale=params.get("scale"), bias=params.get("bias"))


def conv_bn_init(key, kh: int, kw: int, c_in: int, c_out: int) -> tuple[dict, dict]:
  """A bias-free kh x kw conv followed by an affine BN (stems, auxiliary head)."""
  bn_p, bn_s = bn_init(c_out, True)
  return {"w": uniform_init(key, (kh, kw, c_in, c_out), c_in * kh * kw), "bn": bn_p}, {"bn": bn_s}


def conv_bn_apply(p, s, x, train, stride=1, padding=0):
  y, bn = bn_apply(p["bn"], s["bn"], kernels.conv(x, p["w"], stride=stride, padding=padding), train)
  return y, {"bn": bn}


def linear_init(key, n_in: int, n_out: int) -> dict:
  """PyTorch ``nn.Linear``: weight and bias U(±1/sqrt(n_in))."""
  kw, kb = jax.random.split(key)
  return {"w": uniform_init(kw, (n_in, n_out), n_in), "b": uniform_init(kb, (n_out,), n_in)}


def linear_apply(p, x):
  return x @ p["w"] + p["b"][None, :]


def relu_conv_bn(C_in: int, C_out: int, affine: bool) -> Op:
  """ReLUConvBN with a 1x1 kernel (the cell preprocessing) [quark0 ``ReLUConvBN``]."""
  def init(key):
    bn_p, bn_s = bn_init(C_out, affine)
    return {"w": uniform_init(key, (C_in, C_out), C_in), "bn": bn_p}, {"bn": bn_s}

  def apply(p, s, x, train, impl="auto"):
    y, bn = bn_apply(p["bn"], s["bn"], kernels.pointwise(jax.nn.relu(x), p["w"], impl=impl), train)
    return y, {"bn": bn}

  return Op(init, apply)


def factorized_reduce(C_in: int, C_out: int, affine: bool) -> Op:
  """ReLU -> two 1x1 stride-2 convs (the second on the input shifted by one pixel) -> concat -> BN."""
  if C_out % 2:
    raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")

  def init(key):
    k1, k2 = jax.random.split(key)
    bn_p, bn_s = bn_init(C_out, affine)
    return {"w1": uniform_init(k1, (C_in, C_out // 2), C_in),
            "w2": uniform_init(k2, (C_in, C_out // 2), C_in), "bn": bn_p}, {"bn": bn_s}

  def apply(p, s, x, train, impl="auto"):
    x = jax.nn.relu(x)
    y = jnp.concatenate([kernels.pointwise(x[:, ::2, ::2, :], p["w1"], impl=impl),
                         kernels.pointwise(x[:, 1::2, 1::2, :], p["w2"], impl=impl)], axis=-1)
    y, bn = bn_apply(p["bn"], s["bn"], y, train)
    return y, {"bn": bn}

  return Op(init, apply)


def _dw_pw_init(key, k, C_in, C_out):
  k1, k2 = jax.random.split(key)
  return uniform_init(k1, (k, k, C_in), k * k), uniform_init(k2, (C_in, C_out), C_in)


def dil_conv(C: int, k: int, stride: int, dilation: int, affine: bool) -> Op:
  """ReLU -> depthwise kxk (dilation, stride) -> pointwise 1x1 -> BN [quark0 ``DilConv``]."""
  pad = dilation * (k - 1) // 2

  def init(key):
    dw, pw = _dw_pw_init(key, k, C, C)
    bn_p, bn_s = bn_init(C, affine)
    return {"dw": dw, "pw": pw, "bn": bn_p}, {"bn": bn_s}

  def apply(p, s, x, train, impl="auto"):
    y = kernels.depthwise_conv(jax.nn.relu(x), p["dw"], stride=stride, padding=pad, dilation=dilation, impl=impl)
    y, bn = bn_apply(p["bn"], s["bn"], kernels.pointwise(y, p["pw"], impl=impl), train)
    return y, {"bn": bn}

  return Op(init, apply)


def sep_conv(C: int, k: int, stride: int, affine: bool) -> Op:
  """``dil_conv`` with dilation 1 applied twice, only the first strided [quark0 ``SepConv``]."""
  first, second = dil_conv(C, k, stride, 1, affine), dil_conv(C, k, 1, 1, affine)

  def init(key):
    k1, k2 = jax.random.split(key)
    (p1, s1), (p2, s2) = first.init(k1), second.init(k2)
    return {"op1": p1, "op2": p2}, {"op1": s1, "op2": s2}

  def apply(p, s, x, train, impl="auto"):
    y, s1 = first.apply(p["op1"], s["op1"], x, train, impl)
    y, s2 = second.apply(p["op2"], s["op2"], y, train, impl)
    return y, {"op1": s1, "op2": s2}

  return Op(init, apply)


def depthwise_bn(C: int, k: int, stride: int, dilation: int, affine: bool) -> Op:
  """ReLU -> depthwise kxk (dilation, stride, padding dilation*(k-1)/2) -> BN: LHD's single-conv
  ``SepConv`` (dilation 1) and ``DilConv`` (dilation 2), without the 1x1 [LHD ``operations_five_dr.py``]."""
  pad = dilation * (k - 1) // 2

  def init(key):
    bn_p, bn_s = bn_init(C, affine)
    return {"dw": uniform_init(key, (k, k, C), k * k), "bn": bn_p}, {"bn": bn_s}

  def apply(p, s, x, train, impl="auto"):
    y = kernels.depthwise_conv(jax.nn.relu(x), p["dw"], stride=stride, padding=pad, dilation=dilation, impl=impl)
    y, bn = bn_apply(p["bn"], s["bn"], y, train)
    return y, {"bn": bn}

  return Op(init, apply)


def conv_bn(C: int, kernel: tuple[int, int], stride: tuple[int, int], affine: bool) -> Op:
  """ReLU -> dense conv C->C ('same' padding for odd kernels) -> BN."""
  kh, kw = kernel
  pad = (kh // 2, kw // 2)

  def init(key):
    bn_p, bn_s = bn_init(C, affine)
    return {"w": uniform_init(key, (kh, kw, C, C), C * kh * kw), "bn": bn_p}, {"bn": bn_s}

  def apply(p, s, x, train, impl="auto"):
    y = kernels.conv(jax.nn.relu(x), p["w"], stride=stride, padding=pad, impl=impl)
    y, bn = bn_apply(p["bn"], s["bn"], y, train)
    return y, {"bn": bn}

  return Op(init, apply)


def conv_7x1_1x7(C: int, stride: int, affine: bool) -> Op:
  """ReLU -> conv (1,7) stride (1,s) -> conv (7,1) stride (s,1) -> BN [quark0 OPS]."""
  def init(key):
    k1, k2 = jax.random.split(key)
    bn_p, bn_s = bn_init(C, affine)
    return {"w1": uniform_init(k1, (1, 7, C, C), 7 * C), "w2": uniform_init(k2, (7, 1, C, C), 7 * C),
            "bn": bn_p}, {"bn": bn_s}

  def apply(p, s, x, train, impl="auto"):
    y = kernels.conv(jax.nn.relu(x), p["w1"], stride=(1, stride), padding=(0, 3), impl=impl)
    y = kernels.conv(y, p["w2"], stride=(stride, 1), padding=(3, 0), impl=impl)
    y, bn = bn_apply(p["bn"], s["bn"], y, train)
    return y, {"bn": bn}

  return Op(init, apply)


def pool(kind: str, C: int, k: int, stride: int, bn: bool, affine: bool) -> Op:
  """k x k max/avg pooling, padding k//2, optionally followed by BN (search: always, affine off)."""
  pad = k // 2

  def init(key):
    del key
    if not bn:
      return {}, {}
    bn_p, bn_s = bn_init(C, affine)
    return {"bn": bn_p}, {"bn": bn_s}

  def apply(p, s, x, train, impl="auto"):
    del impl
    if kind == "max":
      y = kernels.max_pool(x, k, stride, pad)
    else:
      y = kernels.avg_pool(x, k, stride, pad, count_include_pad=False)
    if not bn:
      return y, s
    y, new = bn_apply(p.get("bn", {}), s["bn"], y, train)
    return y, {"bn": new}

  return Op(init, apply)


def channel_shuffle(x, groups: int):
  """ShuffleNet's channel shuffle on NHWC, as PyTorch's view (groups, C/groups) -> transpose ->
  flatten: output channel j * groups + g is input channel g * (C / groups) + j [CNAS ``Shuffle``,
  PC-DARTS ``channel_shuffle``]."""
  *lead, C = x.shape
  return jnp.swapaxes(x.reshape(*lead, groups, C // groups), -1, -2).reshape(*lead, C)


def group_pointwise(x, w, groups: int):
  """1x1 convolution in ``groups`` groups, no bias (PyTorch ``Conv2d(C_in, C_out, 1, groups=g)``);
  ``w: (C_in / g, C_out)``: output channels [k C_out/g, (k+1) C_out/g) read input channels
  [k C_in/g, (k+1) C_in/g) only."""
  return lax.conv_general_dilated(x, w[None, None], (1, 1), ((0, 0), (0, 0)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


SE_REDUCTION = 16
SHUFFLE_GROUPS = 4


def cweight_com(C: int, stride: int, affine: bool, reduction: int = SE_REDUCTION) -> Op:
  """CNAS ``cweight_com``: squeeze-and-excitation channel attention [CNAS ``CWeightCom``]:

    y = x * sigmoid(W_2 ReLU(W_1 GAP(x) + b_1) + b_2),  W_1: C -> h, W_2: h -> C, h = max(C // 16, 1),

  both FCs with bias (``nn.Linear``). At stride 2, y then goes through a depthwise 3x3 conv
  (stride 2, padding 1, no bias) and BN (affine as the op's; off in the search). No ReLU anywhere
  else, and no BN at stride 1.

  Warning: the code's hidden width is ``C // 16``, which is 0 for C < 16 (a gate equal to
  sigmoid(b_2), with b_2 initialised to 0); jnas uses ``max(C // 16, 1)``, the same for C >= 16
  (CNAS searches at C = 16: width 1, and retrains at C = 36: width 2).
  """
  hidden = max(C // reduction, 1)

  def init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"fc1": linear_init(k1, C, hidden), "fc2": linear_init(k2, hidden, C)}
    if stride == 1:
      return params, {}
    bn_p, bn_s = bn_init(C, affine)
    params.update(dw=uniform_init(k3, (3, 3, C), 9), bn=bn_p)
    return params, {"bn": bn_s}

  def apply(p, s, x, train, impl="auto"):
    gate = jax.nn.sigmoid(linear_apply(p["fc2"], jax.nn.relu(linear_apply(p["fc1"], jnp.mean(x, axis=(1, 2))))))
    y = x * gate[:, None, None, :]
    if stride == 1:
      return y, s
    y = kernels.depthwise_conv(y, p["dw"], stride=stride, padding=1, impl=impl)
    y, bn = bn_apply(p["bn"], s["bn"], y, train)
    return y, {"bn": bn}

  return Op(init, apply)


def shuffle_conv(C: int, stride: int, affine: bool, groups: int = SHUFFLE_GROUPS) -> Op:
  """CNAS ``shuffle_conv_3x3``: a ShuffleNet unit [CNAS ``ShuffleConv``], m = C / 4, g = 4:

    r = (BN . gconv1x1_g(m -> C) . BN . dw3x3_s . shuffle_g . ReLU . BN . gconv1x1_g(C -> m))(x)
    y = ReLU(r + shortcut(x)),  shortcut = identity (s = 1) or AvgPool 3x3/2, padding 1 (s = 2)

  All convs bias-free; the depthwise conv has padding 1; every BN has the op's affine (off in the
  search). Following the code: the op starts from x itself (no leading ReLU, unlike DARTS's
  ops); no ReLU after the depthwise conv's BN; the stride-2 shortcut keeps the C channels (input
  and output widths are equal) and its average counts the zero padding (``nn.AvgPool2d``'s
  default ``count_include_pad=True``, unlike the ``avg_pool_3x3`` op).

  Both group convs split m = C/4 channels into 4 groups, and the shuffle views m as (4, m/4), so
  C must be a multiple of 16 (PyTorch raises for the code's ``Conv2d`` otherwise): CNAS's search
  width C = 16 gives 16, 32, 64; the usual retraining width C = 36 (m = 9) cannot hold this op.
  """
  if C % (groups * groups):
    raise ValueError(f"shuffle_conv_3x3 needs C divisible by {groups * groups} (its {groups}-group 1x1 convs "
                     f"map C -> C/{groups} -> C, and C/{groups} must itself split into {groups} groups), "
                     f"got C={C}")
  mid = C // groups

  def init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    (b1, s1), (b2, s2), (b3, s3) = bn_init(mid, affine), bn_init(mid, affine), bn_init(C, affine)
    params = {"pw1": uniform_init(k1, (C // groups, mid), C // groups), "bn1": b1,
              "dw": uniform_init(k2, (3, 3, mid), 9), "bn2": b2,
              "pw2": uniform_init(k3, (mid // groups, C), mid // groups), "bn3": b3}
    return params, {"bn1": s1, "bn2": s2, "bn3": s3}

  def apply(p, s, x, train, impl="auto"):
    y, n1 = bn_apply(p["bn1"], s["bn1"], group_pointwise(x, p["pw1"], groups), train)
    y = channel_shuffle(jax.nn.relu(y), groups)
    y, n2 = bn_apply(p["bn2"], s["bn2"], kernels.depthwise_conv(y, p["dw"], stride=stride, padding=1, impl=impl),
                     train)
    y, n3 = bn_apply(p["bn3"], s["bn3"], group_pointwise(y, p["pw2"], groups), train)
    shortcut = x if stride == 1 else kernels.avg_pool(x, 3, stride, 1, count_include_pad=True)
    return jax.nn.relu(y + shortcut), {"bn1": n1, "bn2": n2, "bn3": n3}

  return Op(init, apply)


def identity() -> Op:
  return Op(lambda key: ({}, {}), lambda p, s, x, train, impl="auto": (x, s), is_identity=True)


def zero(stride: int) -> Op:
  """``none``: x * 0 at stride 1; every ``stride``-th pixel times 0 otherwise [quark0 ``Zero``]."""
  return Op(lambda key: ({}, {}),
            lambda p, s, x, train, impl="auto": (jnp.zeros_like(x[:, ::stride, ::stride, :]), s))


# ---------------------------------------------------------------------------------------- table
def _square_conv(k: int) -> Callable[..., Op]:
  return lambda C, stride, affine, pool_bn: conv_bn(C, (k, k), (stride, stride), affine)


def _skip(C: int, stride: int, affine: bool, pool_bn: bool) -> Op:
  """skip_connect: the identity, a FactorizedReduce at stride 2 [quark0]."""
  return identity() if stride == 1 else factorized_reduce(C, C, affine)


# The DARTS op family: name -> builder (C, stride, affine, pool_bn) -> Op [quark0 ``operations.py``;
# the DARTS variants' additions as their codes define them]. The one list of op names of the DARTS
# network and supernet (``OP_NAMES``, ``jnas.genotype.KNOWN_OPS``) is this table's keys.
DARTS_OPS: dict[str, Callable[..., Op]] = {
    "none": lambda C, stride, affine, pool_bn: zero(stride),
    "max_pool_3x3": lambda C, stride, affine, pool_bn: pool("max", C, 3, stride, pool_bn, affine),
    "avg_pool_3x3": lambda C, stride, affine, pool_bn: pool("avg", C, 3, stride, pool_bn, affine),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine, pool_bn: sep_conv(C, 3, stride, affine),
    "sep_conv_5x5": lambda C, stride, affine, pool_bn: sep_conv(C, 5, stride, affine),
    "dil_conv_3x3": lambda C, stride, affine, pool_bn: dil_conv(C, 3, stride, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine, pool_bn: dil_conv(C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine, pool_bn: sep_conv(C, 7, stride, affine),
    "conv_7x1_1x7": lambda C, stride, affine, pool_bn: conv_7x1_1x7(C, stride, affine),
    "conv_1x1": _square_conv(1),
    "conv_3x3": _square_conv(3),
    "conv_7x7": _square_conv(7),
    "conv_11x11": _square_conv(11),
    "max_pool_5x5": lambda C, stride, affine, pool_bn: pool("max", C, 5, stride, pool_bn, affine),
    "cweight_com": lambda C, stride, affine, pool_bn: cweight_com(C, stride, affine),
    "shuffle_conv_3x3": lambda C, stride, affine, pool_bn: shuffle_conv(C, stride, affine),
    # DARTS-'s auxiliary skip: a skip_connect with its own parameters (not a searchable op).
    "aux_skip": _skip,
}
OP_NAMES = tuple(DARTS_OPS)

# LHD's own definitions of the ops it shares with DARTS (see the module docstring).
LHD_OPS: dict[str, Callable[..., Op]] = {
    "max_pool_3x3": lambda C, stride, affine, pool_bn: pool("max", C, 3, stride, True, False),  # BN affine off
    "avg_pool_3x3": lambda C, stride, affine, pool_bn: pool("avg", C, 3, stride, True, False),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine, pool_bn: depthwise_bn(C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine, pool_bn: depthwise_bn(C, 5, stride, 1, affine),
    "dil_conv_3x3": lambda C, stride, affine, pool_bn: depthwise_bn(C, 3, stride, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine, pool_bn: depthwise_bn(C, 5, stride, 2, affine),
    "aux_skip": _skip,
}
LHD_OP_NAMES = tuple(n for n in LHD_OPS if n != "aux_skip")
OP_TABLES = {"darts": DARTS_OPS, "lhd": LHD_OPS}
OP_FAMILIES = tuple(OP_TABLES)


def make_op(name: str, C: int, stride: int, affine: bool, pool_bn: bool = False, family: str = "darts") -> Op:
  """The op ``name`` on C channels at ``stride`` (1 or 2) in an op ``family`` ('darts': quark0's
  definitions; 'lhd': LHD's, see the module docstring). Raises ``ValueError`` for unknown names."""
  if stride not in (1, 2):
    raise ValueError(f"op stride must be 1 or 2, got {stride}")
  if family not in OP_TABLES:
    raise ValueError(f"unknown op family {family!r}; use one of {OP_FAMILIES}")
  table = OP_TABLES[family]
  if name not in table:
    what = "LHD op" if family == "lhd" else "op"
    known = LHD_OP_NAMES if family == "lhd" else OP_NAMES
    raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
  return table[name](C, stride, affine, pool_bn)
