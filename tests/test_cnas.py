"""CNAS: its two ops (parameter counts from the layer shapes, numpy references, channel order), the
6-node cell in genotypes, the discrete network, the supernet and retraining, and the method config.

Compile time dominates, so every network here is tiny (C=16, 8x8 images) and runs with most XLA
optimisations off; parameter counts come from traced shapes (``jax.eval_shape``), not from
running an initialisation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas import ops, space, supernet
from jnas import train as T
from jnas.genotype import KNOWN_OPS, Genotype, derive_genotype, parse
from jnas.network import count_params
from jnas.protocols import get_protocol
from jnas.search import cnas
from jnas.search.registry import config_for

# A 6-node genotype with both new ops on stride-1 and stride-2 edges (and a 'none').
G6_TEXT = (
    "Genotype(normal=[('cweight_com', 0), ('shuffle_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 2), "
    "('avg_pool_3x3', 1), ('cweight_com', 3), ('dil_conv_3x3', 4), ('max_pool_3x3', 0), ('shuffle_conv_3x3', 5), "
    "('skip_connect', 2), ('cweight_com', 6), ('none', 1)], normal_concat=range(2, 8), "
    "reduce=[('cweight_com', 0), ('shuffle_conv_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), "
    "('shuffle_conv_3x3', 1), ('cweight_com', 3), ('avg_pool_3x3', 0), ('sep_conv_3x3', 4), ('skip_connect', 1), "
    "('dil_conv_3x3', 5), ('shuffle_conv_3x3', 6), ('cweight_com', 2)], reduce_concat=range(2, 8))")
G6 = parse(G6_TEXT)
# For retraining on one (reduction) cell: G6 with a reduction cell of the new ops, skips and pools only.
G6_TRAIN = parse(
    "Genotype(normal=[('cweight_com', 0), ('shuffle_conv_3x3', 1), ('skip_connect', 0), ('cweight_com', 2), "
    "('avg_pool_3x3', 1), ('cweight_com', 3), ('shuffle_conv_3x3', 4), ('max_pool_3x3', 0), "
    "('shuffle_conv_3x3', 5), ('skip_connect', 2), ('cweight_com', 6), ('none', 1)], normal_concat=range(2, 8), "
    "reduce=[('cweight_com', 0), ('shuffle_conv_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), "
    "('shuffle_conv_3x3', 1), ('cweight_com', 3), ('avg_pool_3x3', 0), ('skip_connect', 4), ('skip_connect', 1), "
    "('cweight_com', 5), ('shuffle_conv_3x3', 6), ('cweight_com', 2)], reduce_concat=range(2, 8))")


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _fill(shapes, seed=0):
  """Variables of ``shapes`` (``{'params', 'batch_stats'}`` of ShapeDtypeStruct) without compiling an
  init program: parameters U(-0.3, 0.3), BN running means 0 and variances 1."""
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.3, 0.3, s.shape).astype(s.dtype)), shapes["params"])
  stats = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.full(s.shape, 1.0 if path[-1].key == "var" else 0.0, s.dtype), shapes["batch_stats"])
  return {"params": params, "batch_stats": stats}


# ------------------------------------------------------------------------------ the ops' sizes
# Parameter counts from the CNAS layer shapes (tianbaochou/CNAS darts/operations.py):
#   cweight_com, h = C // 16: Linear(C, h) C*h + h; Linear(h, C) h*C + C; at stride 2 also
#     Conv2d(C, C, 3, groups=C, bias=False) 9*C and BatchNorm2d(C) 2*C (affine only).
#     C=16, h=1: 16 + 1 + 16 + 16 = 49; stride 2: + 144 (+ 32) = 193 (225).
#     C=32, h=2: 64 + 2 + 64 + 32 = 162; stride 2: + 288 (+ 64) = 450 (514).
#   shuffle_conv_3x3, m = C / 4: Conv2d(C, m, 1, groups=4) m * C/4; Conv2d(m, m, 3, groups=m) 9*m;
#     Conv2d(m, C, 1, groups=4) C * m/4; BNs of m, m, C channels 2m + 2m + 2C (affine only);
#     the stride-2 shortcut (an average pool) has none.
#     C=16, m=4: 16 + 36 + 16 = 68 (+ 8 + 8 + 32 = 116).  C=32, m=8: 64 + 72 + 64 = 200 (+ 96 = 296).
@pytest.mark.parametrize("name, C, stride, affine, expected", [
    ("cweight_com", 16, 1, True, 49), ("cweight_com", 16, 1, False, 49),
    ("cweight_com", 16, 2, True, 225), ("cweight_com", 16, 2, False, 193),
    ("cweight_com", 32, 1, True, 162), ("cweight_com", 32, 2, True, 514), ("cweight_com", 32, 2, False, 450),
    ("shuffle_conv_3x3", 16, 1, True, 116), ("shuffle_conv_3x3", 16, 2, True, 116),
    ("shuffle_conv_3x3", 16, 1, False, 68), ("shuffle_conv_3x3", 16, 2, False, 68),
    ("shuffle_conv_3x3", 32, 1, True, 296), ("shuffle_conv_3x3", 32, 2, False, 200),
])
def test_op_parameter_counts(name, C, stride, affine, expected):
  params, _ = jax.eval_shape(ops.make_op(name, C, stride, affine).init, jax.random.key(0))
  assert _count(params) == expected


@pytest.mark.parametrize("name", ["cweight_com", "shuffle_conv_3x3"])
@pytest.mark.parametrize("stride, size, out", [(1, 8, 8), (2, 8, 4), (2, 7, 4)])
def test_op_output_shapes(name, stride, size, out):
  op = ops.make_op(name, 16, stride, affine=False)
  p, s = jax.eval_shape(op.init, jax.random.key(1))
  y, ns = jax.eval_shape(lambda p, s, x: op.apply(p, s, x, True), p, s, jax.ShapeDtypeStruct((2, size, size, 16),
                                                                                            jnp.float32))
  assert y.shape == (2, out, out, 16)
  assert jax.tree.structure(ns) == jax.tree.structure(s)  # (scans carry the statistics)


def test_cnas_primitives_and_op_tables():
  assert space.CNAS_PRIMITIVES == ("none", "skip_connect", "cweight_com", "avg_pool_3x3", "max_pool_3x3",
                                   "sep_conv_3x3", "dil_conv_3x3", "shuffle_conv_3x3")
  assert set(space.CNAS_PRIMITIVES) <= set(ops.OP_NAMES) and set(space.CNAS_PRIMITIVES) <= KNOWN_OPS


# ------------------------------------------------------------------------- numpy references
def _np_bn(x, scale=None, bias=None):
  """Train-mode BatchNorm2d: batch mean and biased variance over (B, H, W), eps 1e-5."""
  y = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5)
  return y if scale is None else y * scale + bias


def _np_depthwise3x3(x, w, stride):
  """out[b, i, j, c] = sum_{di, dj} xpad[b, i*s + di, j*s + dj, c] w[di, dj, c], padding 1."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ho, wo = (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
  for i in range(ho):
    for j in range(wo):
      out[:, i, j] = np.einsum("bhwc,hwc->bc", xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3], w)
  return out


def _np_group_conv1x1(x, w, groups):
  """Group k of the outputs is x's group k of channels times its block of w (C_in/g, C_out)."""
  ci, co = x.shape[-1] // groups, w.shape[1] // groups
  return np.concatenate([x[..., k * ci:(k + 1) * ci] @ w[:, k * co:(k + 1) * co] for k in range(groups)], -1)


def _np_shuffle(x, groups):
  """out[..., j * groups + g] = x[..., g * (C / groups) + j] (CNAS ``Shuffle``: view, permute)."""
  n = x.shape[-1] // groups
  out = np.empty_like(x)
  for g in range(groups):
    for j in range(n):
      out[..., j * groups + g] = x[..., g * n + j]
  return out


def _np_avg_pool3x3_s2_with_pad(x):
  """nn.AvgPool2d(3, stride=2, padding=1): zero padding counted (count_include_pad=True)."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  return np.stack([np.stack([xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum((1, 2)) / 9 for j in range(wo)], 1)
                   for i in range(ho)], 1)


def _random_op(op, rng):
  """The op's parameters (shapes from its init) and statistics, with random values everywhere (BN
  scales and biases too: init's 1 and 0 would hide a mix-up), and a jitted train-mode apply."""
  p, s = jax.eval_shape(op.init, jax.random.key(0))
  p = jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.5, 1.5, a.shape).astype(np.float32)), p)
  s = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), s)
  return p, s, jax.jit(lambda p, s, x: op.apply(p, s, x, True))


@pytest.mark.parametrize("stride", [1, 2])
def test_cweight_com_equals_numpy(stride):
  rng = np.random.default_rng(0)
  p, s, apply = _random_op(ops.make_op("cweight_com", 16, stride, affine=True), rng)
  x = rng.normal(size=(3, 5, 5, 16)).astype(np.float32)
  y, _ = apply(p, s, jnp.asarray(x))
  P = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  z = x.astype(np.float64).mean((1, 2))  # (B, C): global average pool
  h = np.maximum(z @ P["fc1"]["w"] + P["fc1"]["b"], 0)  # (B, 1): C // 16 = 1 hidden unit
  gate = 1 / (1 + np.exp(-(h @ P["fc2"]["w"] + P["fc2"]["b"])))
  ref = x * gate[:, None, None, :]
  if stride == 2:
    ref = _np_bn(_np_depthwise3x3(ref, P["dw"], 2), P["bn"]["scale"], P["bn"]["bias"])
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_shuffle_conv_equals_numpy(stride):
  rng = np.random.default_rng(1)
  p, s, apply = _random_op(ops.make_op("shuffle_conv_3x3", 16, stride, affine=True), rng)
  x = rng.normal(size=(3, 6, 6, 16)).astype(np.float32)
  y, _ = apply(p, s, jnp.asarray(x))
  P = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  bn = lambda v, k: _np_bn(v, P[k]["scale"], P[k]["bias"])
  r = np.maximum(bn(_np_group_conv1x1(x.astype(np.float64), P["pw1"], 4), "bn1"), 0)  # (.., 4)
  r = bn(_np_depthwise3x3(_np_shuffle(r, 4), P["dw"], stride), "bn2")
  r = bn(_np_group_conv1x1(r, P["pw2"], 4), "bn3")  # (.., 16)
  shortcut = x if stride == 1 else _np_avg_pool3x3_s2_with_pad(x.astype(np.float64))
  np.testing.assert_allclose(np.asarray(y), np.maximum(r + shortcut, 0), rtol=1e-4, atol=1e-4)


def test_channel_shuffle_order():
  x = jnp.arange(8.0)[None, None, None, :]
  # C=8, 4 groups of 2: output channel j*4 + g is input channel g*2 + j
  assert ops.channel_shuffle(x, 4)[0, 0, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
  y = np.arange(16.0).reshape(1, 1, 1, 16)
  np.testing.assert_array_equal(ops.channel_shuffle(jnp.asarray(y), 4), _np_shuffle(y, 4))
  assert supernet.channel_shuffle is ops.channel_shuffle  # PC-DARTS's shuffle is the same map


def test_group_pointwise_is_block_diagonal():
  rng = np.random.default_rng(2)
  x, w = rng.normal(size=(2, 3, 3, 16)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(ops.group_pointwise(jnp.asarray(x), jnp.asarray(w), 4)),
                             _np_group_conv1x1(x, w, 4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("C", [6, 8, 12, 36])
def test_shuffle_conv_needs_channels_divisible_by_16(C):
  # 4-group convs C -> C/4 -> C: C/4 must split into 4 groups too (PyTorch's Conv2d raises likewise)
  with pytest.raises(ValueError, match=rf"shuffle_conv_3x3 needs C divisible by 16.*got C={C}"):
    ops.make_op("shuffle_conv_3x3", C, 1, affine=True)
  with pytest.raises(ValueError, match=r"shuffle_conv_3x3.*C=8"):
    cnas.CNASConfig(C=8)
  cnas.CNASConfig(C=8, primitives=("none", "skip_connect", "cweight_com"))  # fine without it


# -------------------------------------------------------------------------------- genotypes
def test_six_node_genotype_round_trip():
  assert G6.steps == 6 and G6.normal_concat == G6.reduce_concat == (2, 3, 4, 5, 6, 7)
  assert str(G6) == G6_TEXT and parse(str(G6)) == G6
  assert parse(G6.to_ptdarts_str()) == G6
  assert Genotype.from_json(G6.to_json()) == G6 and Genotype.from_json(G6.to_json()).hash() == G6.hash()
  assert G6.to_dict()["version"] == 1  # two pairs per node: the standard form
  rng = np.random.default_rng(3)
  alphas = {t: rng.normal(size=(27, 8)) for t in ("normal", "reduce")}
  g = derive_genotype(alphas, primitives=space.CNAS_PRIMITIVES)
  assert g.steps == 6 and g.normal_concat == tuple(range(2, 8)) and "none" not in g.ops()
  assert parse(str(g)) == g


# ---------------------------------------------------------------------------- the networks
def _op_count(name, C, stride):
  """An op's parameters in the discrete network (affine BN; pools without BN)."""
  if name in ("none", "max_pool_3x3", "avg_pool_3x3") or (name == "skip_connect" and stride == 1):
    return 0
  if name == "skip_connect":  # FactorizedReduce: two 1x1 convs C -> C/2, BN(C)
    return C * C + 2 * C
  if name == "sep_conv_3x3":  # twice (depthwise 3x3, 1x1, BN)
    return 2 * (9 * C + C * C + 2 * C)
  if name == "dil_conv_3x3":
    return 9 * C + C * C + 2 * C
  if name == "cweight_com":
    h = max(C // 16, 1)
    return 2 * C * h + h + C + (11 * C if stride == 2 else 0)
  m = C // 4  # shuffle_conv_3x3
  return m * C // 4 + 9 * m + C * m // 4 + 4 * m + 2 * C


def _network_count(genotype, C, cells, classes=10):
  """Stem 3x3 conv 3 -> 3C + BN; per cell (reduction, C_pp, C_p, C_cell): two preprocessing 1x1
  convs + BN (ReLUConvBN or FactorizedReduce: both C_in * C + 2C) and its ops; classifier 6C_last -> 10."""
  n = 27 * 3 * C + 2 * 3 * C
  for reduction, C_pp, C_p, Cc in cells:
    n += C_pp * Cc + 2 * Cc + C_p * Cc + 2 * Cc
    pairs = genotype.cell(reduction)[0]
    n += sum(_op_count(name, Cc, 2 if (reduction and i < 2) else 1) for name, i in pairs)
  return n + 6 * cells[-1][3] * classes + classes


def test_discrete_network_six_nodes(fast_compile):
  net = jnas.Network(G6, C=16, layers=3)
  shapes = jax.eval_shape(net.init_variables, jax.random.key(0))
  # 3 cells [normal, reduction, reduction]; each cell outputs 6 * its C channels
  cells = [(False, 48, 48, 16), (True, 48, 96, 32), (True, 96, 192, 64)]
  assert count_params(shapes) == _network_count(G6, 16, cells)
  assert shapes["params"]["classifier"]["w"].shape == (6 * 64, 10)
  v = _fill(shapes)
  logits, aux, _ = jax.jit(lambda v, x: net.forward(v["params"], v["batch_stats"], x, train=False))(
      v, jnp.ones((2, 8, 8, 3)))
  assert logits.shape == (2, 10) and aux is None and bool(jnp.all(jnp.isfinite(logits)))


def test_supernet_six_nodes(fast_compile):
  prims = ("none", "skip_connect", "cweight_com", "shuffle_conv_3x3")
  net = supernet.SearchNetwork(C=16, layers=3, steps=6, primitives=prims, stem_affine=False)
  shapes = jax.eval_shape(net.init_variables, jax.random.key(0))
  p = shapes["params"]
  assert p["stem"]["bn"] == {}  # CNAS: the search stem's BN has no affine parameters
  for name in ("cells_00", "cells_01", "cells_02"):
    # 27 edges: 2 * 6 from the cell inputs, 5 + 4 + 3 + 2 + 1 between the nodes; no affine BN anywhere
    assert p[name]["edges_in"]["cweight_com"]["fc1"]["w"].shape[:2] == (1, 12)
    assert p[name]["edges_mid"]["shuffle_conv_3x3"]["pw1"].shape[:2] == (1, 15)
    assert p[name]["edges_mid"]["shuffle_conv_3x3"]["bn1"] == {}
  assert p["classifier"]["w"].shape == (6 * 64, 10)  # the last cell concatenates its 6 nodes
  weights = {t: jnp.full((27, len(prims)), 1 / len(prims)) for t in ("normal", "reduce")}
  v = _fill(shapes)
  logits, _ = jax.jit(lambda v, x, w: net.forward(v["params"], v["batch_stats"], x, w, train=True))(
      v, jnp.ones((2, 8, 8, 3)), weights)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  with pytest.raises(ValueError, match=r"\(27, 4\)"):
    net.forward(v["params"], v["batch_stats"], jnp.ones((2, 8, 8, 3)), {t: jnp.ones((14, 4)) for t in weights})


def test_train_genotypes_six_nodes(fast_compile):
  ds = jnas.data.load_digits(size=8, channels=3)
  protocol = get_protocol("darts", C=16, layers=1, epochs=1, batch_size=32, auxiliary_weight=0.0, cutout_length=0,
                          train_images=64, test_images=32)
  (r,) = T.train_genotypes([G6_TRAIN], [0], protocol, ds.train, ds.test, num_classes=10, mean=ds.mean, std=ds.std,
                           quiet=True)
  assert r["status"] == "ok" and np.all(np.isfinite(r["train_loss"]))
  # one cell, a reduction (C = 32) reading the 48-channel stem twice
  assert r["params"] == _network_count(G6_TRAIN, 16, [(True, 48, 48, 32)])


# ------------------------------------------------------------------------------- the method
def test_cnas_config_and_build():
  c = cnas.CNASConfig()
  assert (c.order, c.steps, c.layers, c.C, c.batch_size, c.epochs) == ("first", 6, 6, 16, 32, 60)
  assert (c.w_lr, c.w_lr_min, c.w_momentum, c.w_weight_decay, c.grad_clip) == (0.025, 0.003, 0.9, 3e-4, 5.0)
  assert (c.a_lr, c.a_b1, c.a_b2, c.a_weight_decay, c.warmup_epochs) == (3e-4, 0.5, 0.999, 1e-3, 0)
  assert c.primitives == space.CNAS_PRIMITIVES and not c.stem_affine
  assert config_for(cnas.SPEC, "cpu").C == 16 and cnas.SPEC.name == "cnas"
  method = cnas.SPEC(c, 10).stage(0, None).method
  net = method.net
  assert net.steps == 6 and not net.stem_affine and tuple(net.primitives) == space.CNAS_PRIMITIVES
  assert [s.reduction for s in net.plan()] == [False, False, True, False, True, False]
  state = jax.eval_shape(method.init, jax.random.key(0))
  assert {t: a.shape for t, a in state.arch.items()} == {"normal": (27, 8), "reduce": (27, 8)}
  rng = np.random.default_rng(4)
  g = method.derive({t: rng.normal(size=(27, 8)) for t in ("normal", "reduce")})
  assert g.steps == 6 and g.reduce_concat == tuple(range(2, 8))
