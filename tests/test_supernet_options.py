"""The supernet's static options against independent references, and the edge-weight functions.

References are written edge by edge from the papers' definitions (PC-DARTS's partial channels and
channel shuffle, per-edge op subsets, GDAS's single path and its straight-through gradient), on
tiny networks (C=8, 3 cells, 2 nodes, 8x8 images) so that compile time stays small.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jnas import ops, space
from jnas.search import edge_weights as ew
from jnas.supernet import SearchNetwork, init_alphas, make_op_mask

OPS = ("none", "skip_connect", "max_pool_3x3", "dil_conv_3x3")
STEPS = 2
E = space.num_edges(STEPS)


def _net(**kw):
  base = dict(C=8, layers=3, num_classes=3, steps=STEPS, primitives=OPS, conv_impl="xla")
  base.update(kw)
  return SearchNetwork(**base)


def _x(n=3):
  return jax.random.normal(jax.random.key(1), (n, 8, 8, 3))


def _weights(key, scale=3.0, steps=STEPS):
  a = init_alphas(key, steps=steps, num_ops=len(OPS), scale=scale)
  return {k: jax.nn.softmax(v, -1) for k, v in a.items()}


# ------------------------------------------------------------------------------ the reference
def _shuffle(x, K):
  """channel_shuffle by an explicit index map: out[..., j*K + g] = in[..., g*(C/K) + j]."""
  C = x.shape[-1]
  idx = np.empty(C, int)
  for g in range(K):
    for j in range(C // K):
      idx[j * K + g] = g * (C // K) + j
  return x[..., idx]


def _reference(net, params, stats, x, weights):
  """The search network edge by edge, op by op (train mode), from the option definitions."""
  K, STEPS = net.partial_channels, net.steps
  E = space.num_edges(STEPS)
  y, _ = ops.conv_bn_apply(params["stem"], stats["stem"], x, True, padding=1)
  s0 = s1 = y
  mid_order = [(i, j) for i in range(STEPS - 1) for j in range(i + 1, STEPS)]
  for grp in net.groups():
    spec = grp.spec
    t = "reduce" if spec.reduction else "normal"
    p = jax.tree.map(lambda a: a[0], params[grp.name])
    st = jax.tree.map(lambda a: a[0], stats[grp.name])
    mask = np.ones((E, len(OPS)), bool) if net.op_mask is None else np.asarray(net.op_mask[t == "reduce"])
    pre0, pre1 = net._preprocess(spec)
    states = [pre0.apply(p["pre0"], st["pre0"], s0, True)[0], pre1.apply(p["pre1"], st["pre1"], s1, True)[0]]
    for j in range(STEPS):
      node = 0.0
      for i in range(j + 2):
        if i < 2:
          set_name, pos, stride = "edges_in", i * STEPS + j, (2 if spec.reduction else 1)
        else:
          set_name, pos, stride = "edges_mid", mid_order.index((i - 2, j)), 1
        rows = net._set_rows(set_name)
        row = space.edge_index(i, j)
        xin = states[i]
        Cp = spec.C // K
        out = 0.0
        for o, name in enumerate(OPS):
          if not mask[row, o] or name == "none":
            continue
          k = sum(mask[r, o] for r in rows[:pos])  # the op's stack holds only the edges that have it
          op = ops.make_op(name, Cp, stride, affine=False, pool_bn=True)
          op_p = jax.tree.map(lambda a: a[k], p[set_name].get(name, {}))
          op_s = jax.tree.map(lambda a: a[k], st[set_name].get(name, {}))
          out = out + weights[t][row, o] * op.apply(op_p, op_s, xin[..., :Cp], True, "xla")[0]
        if K > 1:
          rest = xin[..., Cp:]
          if stride == 2:
            rest = lax.reduce_window(rest, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
          out = _shuffle(jnp.concatenate([out, rest], -1), K)
        if f"{t}_edges" in weights:
          out = weights[f"{t}_edges"][row] * out
        node = node + out
      states.append(node)
    s0, s1 = s1, jnp.concatenate(states[-STEPS:], axis=-1)
  return jnp.mean(s1, axis=(1, 2)) @ params["classifier"]["w"] + params["classifier"]["b"][None, :]


def _compare(net, weights):
  v = net.init_variables(jax.random.key(0))
  x = _x()
  ours, _ = jax.jit(functools.partial(net.forward, train=True))(v["params"], v["batch_stats"], x, weights)
  ref = jax.jit(functools.partial(_reference, net))(v["params"], v["batch_stats"], x, weights)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
  return v, ours


def test_partial_channels_with_edge_scale_equal_reference(fast_compile):
  w = _weights(jax.random.key(2))
  for t in ("normal", "reduce"):
    w[f"{t}_edges"] = jax.random.uniform(jax.random.fold_in(jax.random.key(3), len(t)), (E,), minval=0.2, maxval=2)
  _compare(_net(partial_channels=4), w)


def test_channel_shuffle_is_pytorch_channel_shuffle():
  from jnas.supernet import channel_shuffle
  x = jnp.arange(2 * 12, dtype=jnp.float32).reshape(2, 1, 1, 12)
  np.testing.assert_array_equal(channel_shuffle(x, 4), _shuffle(x, 4))
  assert channel_shuffle(x, 4)[0, 0, 0, :4].tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize("steps", [3])
def test_op_mask_with_partial_channels_equals_reference(fast_compile, steps):
  # 3 nodes: a reduction cell's edges between nodes run as several calls whose op sets differ
  n = space.num_edges(steps)
  rng = np.random.default_rng(1)
  masks = [rng.random((n, len(OPS))) < 0.5 for _ in range(2)]
  for m in masks:
    m[:, 3] |= ~m[:, 1:].any(axis=1)  # an op other than 'none' on every edge (the reference needs one)
  w = {t: jnp.where(jnp.asarray(m), ww, 0.0)
       for (t, ww), m in zip(_weights(jax.random.key(10), steps=steps).items(), masks)}
  _compare(_net(steps=steps, op_mask=make_op_mask(*masks), partial_channels=2), w)


def test_op_mask_runs_only_kept_ops_and_equals_reference(fast_compile):
  rng = np.random.default_rng(0)
  masks = [rng.random((E, len(OPS))) < 0.5 for _ in range(2)]
  for m in masks:
    m[:, 3] |= ~m.any(axis=1)  # every edge keeps an op
  net = _net(op_mask=make_op_mask(*masks))
  w = {t: jnp.where(jnp.asarray(m), ww, 0.0) for (t, ww), m in zip(_weights(jax.random.key(4)).items(), masks)}
  v, _ = _compare(net, w)
  full = _net()
  count = lambda tree: sum(a.size for a in jax.tree.leaves(tree))
  vf = full.init_variables(jax.random.key(0))

  def op_params(name, C, stride):  # quark0 definitions, affine-free BN
    if name == "dil_conv_3x3":
      return 3 * 3 * C + C * C
    return C * C if (name == "skip_connect" and stride == 2) else 0

  dropped = 0
  for spec in full.plan():
    m = masks[1] if spec.reduction else masks[0]
    for row, (src, _) in enumerate(space.edges(STEPS)):
      stride = 2 if spec.reduction and src < 2 else 1
      dropped += sum(op_params(name, spec.C, stride) for o, name in enumerate(OPS) if not m[row, o])
  assert dropped > 0 and count(v["params"]) == count(vf["params"]) - dropped
  # and pruned weights must not matter: the same net with the full layout gives the same logits
  x = _x()
  masked_logits, _ = jax.jit(functools.partial(net.forward, train=True))(v["params"], v["batch_stats"], x, w)
  full_logits, _ = jax.jit(functools.partial(full.forward, train=True))(vf["params"], vf["batch_stats"], x, w)
  np.testing.assert_allclose(masked_logits, full_logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- single path (GDAS)
@pytest.fixture(scope="module")
def single_path(fast_compile):
  net_sp, net_full = _net(single_path=True), _net()
  v = net_full.init_variables(jax.random.key(0))
  x, y = _x(4), jnp.array([0, 1, 2, 1])
  alpha = init_alphas(jax.random.key(5), steps=STEPS, num_ops=len(OPS), scale=1.0)
  key = jax.random.key(6)

  def loss(net, weights):
    logits, _ = net.forward(v["params"], v["batch_stats"], x, weights, train=True)
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(4), y])

  def hard(a):
    return {t: ew.gumbel_hard(jax.random.fold_in(key, i), a[t], 2.0) for i, t in enumerate(("normal", "reduce"))}

  def ours(a):  # what GDAS runs: the straight-through weights into the single-path net
    return loss(net_sp, {t: h[0] for t, h in hard(a).items()})

  def spec_form(a):  # sum_o onehot_o (o(x) h_o), on the net that computes every op
    return loss(net_full, {t: jax.nn.one_hot(h[1], len(OPS)) * h[0] for t, h in hard(a).items()})

  def naive(a):  # every op times h: the same value, the wrong gradient
    return loss(net_full, {t: h[0] for t, h in hard(a).items()})

  grads = jax.jit(lambda a: [jax.value_and_grad(f)(a) for f in (ours, spec_form, naive)])(alpha)
  return net_sp, v, x, alpha, hard, grads


def test_gdas_weights_are_one_hot_and_alpha_gradient_is_the_specs(single_path):
  net_sp, v, x, alpha, hard, ((l_ours, g_ours), (l_spec, g_spec), (l_naive, g_naive)) = single_path
  for t, (h, index, p) in hard(alpha).items():
    np.testing.assert_allclose(h, jax.nn.one_hot(index, len(OPS)), atol=1e-6)
    assert np.array_equal(index, np.argmax(p, -1))
  np.testing.assert_allclose(l_ours, l_spec, rtol=1e-5)
  np.testing.assert_allclose(l_naive, l_spec, rtol=1e-5)
  for t in ("normal", "reduce"):
    np.testing.assert_allclose(g_ours[t], g_spec[t], rtol=1e-4, atol=1e-7)
    assert float(jnp.abs(g_ours[t]).max()) > 0
  # the naive form lets every op's output into the alpha gradient: it differs
  assert not np.allclose(g_naive["normal"], g_spec["normal"], rtol=1e-2, atol=1e-6)


def test_single_path_runs_only_the_chosen_op(single_path):
  net_sp, v, x, alpha, hard, _ = single_path
  w = {t: h[0] for t, h in hard(alpha).items()}
  fwd = jax.jit(lambda params: net_sp.forward(params, v["batch_stats"], x, w, train=True)[0])
  before = fwd(v["params"])
  # rewrite the parameters of every dil_conv on edges whose sampled op is not dil_conv
  idx = {t: np.asarray(h[1]) for t, h in hard(alpha).items()}
  params = jax.tree.map(lambda a: a, v["params"])
  for grp in net_sp.groups():
    t = "reduce" if grp.spec.reduction else "normal"
    for set_name in ("edges_in", "edges_mid"):
      rows = net_sp._set_rows(set_name)
      keep = np.asarray([idx[t][r] == OPS.index("dil_conv_3x3") for r in rows])
      params[grp.name][set_name]["dil_conv_3x3"] = jax.tree.map(
          lambda a: jnp.where(keep.reshape((1, -1) + (1,) * (a.ndim - 2)), a, 7.0 * a + 1.0),
          params[grp.name][set_name]["dil_conv_3x3"])
  np.testing.assert_array_equal(fwd(params), before)


# -------------------------------------------------------------------------- dropout and scales
def test_skip_dropout_and_edge_drop_path(fast_compile):
  net = _net(op_dropout=("skip_connect",), edge_drop_path=True)
  plain = _net()
  v = net.init_variables(jax.random.key(0))
  x, w = _x(), _weights(jax.random.key(7))
  f = jax.jit(lambda key, p, q, w: net.forward(v["params"], v["batch_stats"], x, w, train=True, key=key,
                                               op_dropout_rate=p, drop_path_rate=q)[0])
  ref = jax.jit(lambda w: plain.forward(v["params"], v["batch_stats"], x, w, train=True)[0])(w)
  k1, k2 = jax.random.key(8), jax.random.key(9)
  np.testing.assert_allclose(f(k1, 0.0, 0.0, w), ref, rtol=1e-5, atol=1e-6)  # rate 0 = no dropout
  assert not np.allclose(f(k1, 0.5, 0.0, w), f(k2, 0.5, 0.0, w))
  assert not np.allclose(f(k1, 0.0, 0.5, w), f(k2, 0.0, 0.5, w))
  np.testing.assert_array_equal(f(k1, 0.5, 0.3, w), f(k1, 0.5, 0.3, w))  # same key, same draw
  no_skip = {t: a.at[:, OPS.index("skip_connect")].set(0.0) for t, a in w.items()}
  np.testing.assert_allclose(f(k1, 0.5, 0.0, no_skip), f(k2, 0.5, 0.0, no_skip), rtol=1e-6)  # dropout only after skip


def test_gdas_frc_supernet_counts_and_runs(fast_compile):
  net = _net(reduce_cell="gdas_frc", single_path=True, C=8)
  v = net.init_variables(jax.random.key(0))
  C_r = [s.C for s in net.plan() if s.reduction]
  # hand count of one fixed reduction cell (affine-free BN, biased convs): pre0 + pre1 1x1 convs,
  # 2 branches of (1x3 and 3x1 grouped convs with bias, 1x1 conv with bias), 2 pooling BNs
  def frc(C, C_pp, C_p):
    branch = (3 * (C // 8) * C + C) * 2 + C * C + C
    return C_pp * C + C_p * C + 2 * branch
  specs = [s for s in net.plan() if s.reduction]
  counted = sum(sum(a.size for a in jax.tree.leaves(v["params"][g.name])) for g in net.groups() if g.spec.reduction)
  assert counted == sum(frc(s.C, s.C_pp, s.C_p) for s in specs) and len(C_r) == 2
  w = {"normal": jax.nn.one_hot(jnp.arange(E) % len(OPS), len(OPS))}
  logits, _ = jax.jit(functools.partial(net.forward, train=True))(v["params"], v["batch_stats"], _x(), w)
  assert logits.shape == (3, 3) and bool(jnp.all(jnp.isfinite(logits)))


# ------------------------------------------------------------------------------- edge weights
def test_gumbel_softmax_approaches_one_hot_as_tau_falls():
  logits = jnp.log(jnp.asarray([[0.1, 0.2, 0.3, 0.4]] * 2000))
  key = jax.random.key(0)
  g = jax.random.gumbel(key, logits.shape)
  cold, warm = ew.gumbel_softmax(key, logits, 0.001), ew.gumbel_softmax(key, logits, 100.0)
  one_hot_share = [float(jnp.mean(jnp.max(ew.gumbel_softmax(key, logits, tau), -1) > 0.99))
                   for tau in (1.0, 0.1, 0.01, 0.001)]
  assert one_hot_share == sorted(one_hot_share) and one_hot_share[-1] > 0.99, one_hot_share
  assert np.array_equal(np.argmax(cold, -1), np.argmax(logits + g, -1))  # the Gumbel-max sample
  assert float(jnp.max(jnp.abs(warm - 0.25))) < 0.05
  # and its argmax frequencies follow softmax(logits): within 5 standard errors
  freq = np.bincount(np.argmax(cold, -1), minlength=4) / 2000
  se = np.sqrt(np.array([0.1, 0.2, 0.3, 0.4]) * 0.9 / 2000)
  assert np.all(np.abs(freq - [0.1, 0.2, 0.3, 0.4]) < 5 * se + 1e-3), freq


def test_dirichlet_samples_have_the_concentrations_mean_and_a_pathwise_gradient():
  theta = jnp.asarray([[-0.5, 0.0, 0.7, 1.5]])
  beta = np.asarray(ew.concentration(theta))[0]
  n = 20000
  keys = jax.random.split(jax.random.key(0), n)
  w = jax.vmap(lambda k: ew.dirichlet(k, theta))(keys)[:, 0]
  a0 = beta.sum()
  mean, var = beta / a0, beta * (a0 - beta) / (a0 ** 2 * (a0 + 1))
  tol = 5 * np.sqrt(var / n)  # 5 standard errors of the sample mean
  assert np.all(np.abs(np.asarray(w.mean(0)) - mean) < tol)
  # d/dtheta E[w_0]: the average pathwise gradient against the analytic derivative of beta_0 / sum(beta)
  g = jax.grad(lambda t: jnp.mean(jax.vmap(lambda k: ew.dirichlet(k, t)[0, 0])(keys)))(theta)
  exact = jax.grad(lambda t: ew.dirichlet_mean(t)[0, 0])(theta)
  np.testing.assert_allclose(g, exact, atol=0.02, rtol=0.1)
  # masked: a Dirichlet over the kept ops
  m = jnp.asarray([[True, False, True, True]])
  wm = ew.dirichlet(jax.random.key(1), theta, m)
  assert float(wm[0, 1]) == 0.0 and abs(float(wm.sum()) - 1) < 1e-6


def test_edge_normalization_and_uniform_architectures():
  beta = jax.random.normal(jax.random.key(0), (14,))
  w = ew.edge_normalization(beta, 4)
  for lo, hi in ew.node_segments(4):
    np.testing.assert_allclose(float(w[lo:hi].sum()), 1.0, rtol=1e-6)
  assert ew.node_segments(4) == [(0, 2), (2, 5), (5, 9), (9, 14)]
  archs = jax.vmap(lambda k: ew.uniform_architecture(k, 4, 8))(jax.random.split(jax.random.key(1), 4000))
  a = np.asarray(archs)
  for lo, hi in ew.node_segments(4):
    assert np.all(a[:, lo:hi].sum(axis=(1, 2)) == 2)  # two distinct inputs, one op each
    assert np.all(a[:, lo:hi].sum(axis=2).max(axis=1) == 1)
  # node 3 picks each of its 5 inputs with chance 2/5; every op (``none`` included) 1/8
  picked = a[:, 9:14].sum(axis=2).mean(axis=0)
  np.testing.assert_allclose(picked, 0.4, atol=0.04)
  np.testing.assert_allclose(a.sum(axis=(0, 1)) / a.sum(), 1 / 8, atol=0.01)
