"""Supernet and discrete network: parameter counts against the PyTorch definitions, shapes,
train/eval behaviour, drop path, alpha gradients, and scan == loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas import genotypes, space
from jnas.network import Network, count_params
from jnas.supernet import SearchNetwork, init_alphas


# ---------------------------------------------------------------------------------------------
# Parameter counts from the quark0/darts op definitions (operations.py, model.py), written out
# independently of jnas: conv k x k c_in -> c_out has k*k*c_in*c_out weights (no bias), an affine
# BN 2*c, a linear layer in*out + out.
def _bn(c, affine):
  return 2 * c if affine else 0


def _op(name, C, stride, affine):
  if name in ("none", "max_pool_3x3", "avg_pool_3x3"):
    return 0
  if name == "skip_connect":
    return 0 if stride == 1 else _fr(C, C, affine)
  k = {"sep_conv_3x3": 3, "sep_conv_5x5": 5, "sep_conv_7x7": 7, "dil_conv_3x3": 3, "dil_conv_5x5": 5}.get(name)
  if name.startswith("sep_conv"):  # (dw k x k, pw 1x1, BN) twice
    return 2 * (k * k * C + C * C + _bn(C, affine))
  if name.startswith("dil_conv"):  # dw k x k, pw 1x1, BN
    return k * k * C + C * C + _bn(C, affine)
  if name == "conv_7x1_1x7":  # (1,7) conv + (7,1) conv + BN
    return 2 * 7 * C * C + _bn(C, affine)
  raise AssertionError(name)


def _fr(c_in, c_out, affine):  # FactorizedReduce: two 1x1 convs to c_out/2, BN(c_out)
  return 2 * c_in * (c_out // 2) + _bn(c_out, affine)


def _rcb(c_in, c_out, affine):  # ReLUConvBN 1x1
  return c_in * c_out + _bn(c_out, affine)


def torch_count_network(g, C, layers, classes):
  total = 27 * 3 * C + 2 * 3 * C  # stem conv + BN
  C_pp, C_p, C_cur, red_prev = 3 * C, 3 * C, C, False
  for i in range(layers):
    red = i in (layers // 3, 2 * layers // 3)
    C_cur *= 2 if red else 1
    total += (_fr(C_pp, C_cur, True) if red_prev else _rcb(C_pp, C_cur, True)) + _rcb(C_p, C_cur, True)
    pairs, concat = (g.reduce, g.reduce_concat) if red else (g.normal, g.normal_concat)
    total += sum(_op(op, C_cur, 2 if red and idx < 2 else 1, True) for op, idx in pairs)
    C_pp, C_p, red_prev = C_p, len(concat) * C_cur, red
  return total + C_p * classes + classes


def torch_count_search(C, layers, classes, steps=4):
  total = 27 * 3 * C + 2 * 3 * C  # the search stem BN is affine (model_search.py)
  C_pp, C_p, C_cur, red_prev = 3 * C, 3 * C, C, False
  for i in range(layers):
    red = i in (layers // 3, 2 * layers // 3)
    C_cur *= 2 if red else 1
    total += (_fr(C_pp, C_cur, False) if red_prev else _rcb(C_pp, C_cur, False)) + _rcb(C_p, C_cur, False)
    for src, _ in space.edges(steps):
      total += sum(_op(op, C_cur, 2 if red and src < 2 else 1, False) for op in space.PRIMITIVES)
    C_pp, C_p, red_prev = C_p, steps * C_cur, red
  return total + C_p * classes + classes


def _shapes(module, key=0):
  return jax.eval_shape(module.init_variables, jax.random.key(key))


def test_darts_v2_count_equals_pytorch_darts():
  v = _shapes(Network(genotypes.DARTS_V2, C=36, layers=20, num_classes=10, auxiliary=True))
  assert count_params(v["params"]) == 3_349_342  # quark0 log / paper_protocol.md §1.4
  assert count_params(v["params"], exclude=()) - count_params(v["params"]) == 476_426  # aux head
  assert count_params(v) == 3_349_342


def test_search_network_count_equals_pytorch_darts():
  v = _shapes(SearchNetwork(C=16, layers=8, num_classes=10))
  assert count_params(v["params"]) == 1_930_618 == torch_count_search(16, 8, 10)
  assert sum(a.size for a in jax.tree.leaves(init_alphas(jax.random.key(0)))) == 224


@pytest.mark.parametrize("name", sorted(genotypes.PUBLISHED))
@pytest.mark.parametrize("C, layers, classes", [(36, 20, 10), (16, 8, 100)])
def test_every_published_genotype_count(name, C, layers, classes):
  g = genotypes.PUBLISHED[name]
  v = _shapes(Network(g, C=C, layers=layers, num_classes=classes))
  assert count_params(v["params"]) == torch_count_network(g, C, layers, classes)


def test_independent_counter_reproduces_darts_v2():
  assert torch_count_network(genotypes.DARTS_V2, 36, 20, 10) == 3_349_342


def test_search_network_other_steps_and_ops():
  v = _shapes(SearchNetwork(C=8, layers=3, steps=6, multiplier=6))
  assert count_params(v["params"]) == torch_count_search(8, 3, 10, steps=6)
  with pytest.raises(ValueError, match="unknown op"):
    SearchNetwork(C=8, layers=3, primitives=("none", "conv_9x9")).init_variables(jax.random.key(0))


def test_pool_bn_option_adds_affine_bn_per_pooling_op():
  plain = count_params(_shapes(Network(genotypes.DARTS_V2, C=36, layers=20))["params"])
  pt = count_params(_shapes(Network(genotypes.DARTS_V2, C=36, layers=20, pool_bn=True))["params"])
  # DARTS_V2 has pooling only in reduction cells: 5 max pools on C=72 and on C=144
  assert pt - plain == 5 * 2 * 72 + 5 * 2 * 144


def test_imagenet_macro_shapes():
  net = Network(genotypes.DARTS_V2, C=8, layers=8, num_classes=67, auxiliary=True, macro="imagenet")
  v = _shapes(net)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  logits, aux, _ = jax.eval_shape(lambda v, x: net.forward(v["params"], v["batch_stats"], x, train=True), v, x)
  assert logits.shape == aux.shape == (2, 67)


# ---------------------------------------------------------------------------------------------
# Running networks (tiny configs, XLA optimisations off to keep compile time low).
TINY = dict(C=4, layers=3, num_classes=5)


@pytest.fixture(scope="module")
def tiny_net(fast_compile):
  net = Network(genotypes.DARTS_V2, auxiliary=True, **TINY)
  v = net.init_variables(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
  fwd = jax.jit(net.forward, static_argnames=("train",))
  return net, v, x, fwd


def test_network_train_and_eval(tiny_net):
  net, v, x, fwd = tiny_net
  logits, aux, stats = fwd(v["params"], v["batch_stats"], x, train=True)
  assert logits.shape == aux.shape == (6, 5)
  assert jax.tree.structure(stats) == jax.tree.structure(v["batch_stats"])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, v["batch_stats"])
  assert all(jax.tree.leaves(changed))  # every BN saw a batch
  e_logits, e_aux, e_stats = fwd(v["params"], stats, x, train=False)
  assert e_aux is None and e_logits.shape == (6, 5)
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), e_stats, stats)))
  # eval uses running statistics: it differs from the train-mode output
  assert not np.allclose(e_logits, logits)


def test_drop_path_identity_at_zero_and_in_eval(tiny_net):
  net, v, x, fwd = tiny_net
  base, _, _ = fwd(v["params"], v["batch_stats"], x, train=True)
  zero, _, _ = fwd(v["params"], v["batch_stats"], x, train=True, key=jax.random.key(3), drop_path_prob=0.0)
  np.testing.assert_array_equal(base, zero)
  some, _, _ = fwd(v["params"], v["batch_stats"], x, train=True, key=jax.random.key(3), drop_path_prob=0.5)
  assert not np.allclose(some, base)
  e1, _, _ = fwd(v["params"], v["batch_stats"], x, train=False)
  e2, _, _ = fwd(v["params"], v["batch_stats"], x, train=False, key=jax.random.key(3), drop_path_prob=0.5)
  np.testing.assert_array_equal(e1, e2)


def test_drop_path_statistics():
  x = jnp.ones((4000, 2, 2, 1))
  y = jnas.drop_path(jax.random.key(0), x, 0.2)
  kept = np.asarray(y[:, 0, 0, 0] > 0)
  assert abs(kept.mean() - 0.8) < 0.03
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.8, rtol=1e-6)
  assert np.all(np.asarray(y).reshape(4000, -1).std(axis=1) == 0)  # one draw per sample


def test_scan_over_cells_equals_loop(fast_compile):
  g = genotypes.PDARTS
  loop = Network(g, C=4, layers=12, num_classes=3, scan=False)  # runs at cells 2-3, 6-7, 10-11
  scan = loop.clone(scan=True)
  assert len(scan.groups()) < len(loop.groups())
  v = loop.init_variables(jax.random.key(0))

  def restack(tree):  # singleton groups -> the scan layout
    out = {k: val for k, val in tree.items() if not k.startswith("cells_")}
    for grp in scan.groups():
      parts = [tree[f"cells_{i:02d}"] for i in range(grp.start, grp.start + grp.size)]
      out[grp.name] = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
    return out

  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  a, _, _ = loop.forward(v["params"], v["batch_stats"], x, train=True)
  b, _, _ = scan.forward(restack(v["params"]), restack(v["batch_stats"]), x, train=True)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_linen_interface(fast_compile):
  net = Network(genotypes.DARTS_V1, auxiliary=True, **TINY)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.jit(net.init)({"params": jax.random.key(0)}, x)  # jitted as users do (eager is slow)
  assert count_params(variables["params"]) == torch_count_network(genotypes.DARTS_V1, 4, 3, 5)
  apply = jax.jit(functools.partial(net.apply, train=True, drop_path_prob=0.1, mutable=["batch_stats"]))
  (logits, aux), upd = apply(variables, x + 1, rngs={"drop_path": jax.random.key(1)})
  assert logits.shape == aux.shape == (2, 5) and "batch_stats" in upd


def test_bad_inputs():
  with pytest.raises(ValueError, match="NHWC"):
    Network(genotypes.DARTS_V2, **TINY).forward({}, {}, jnp.zeros((2, 3, 32, 32)))
  with pytest.raises(ValueError, match="unknown macro"):
    Network(genotypes.DARTS_V2, macro="resnet", **TINY).init_variables(jax.random.key(0))
  with pytest.raises(ValueError, match="weights\\['normal'\\] has shape"):
    snet = SearchNetwork(C=4, layers=2, steps=2, multiplier=2)
    snet.forward({}, {}, jnp.zeros((1, 8, 8, 3)), init_alphas(jax.random.key(0)))
  with pytest.raises(ValueError, match="lack the 'reduce'"):
    SearchNetwork(C=4, layers=3).forward({}, {}, jnp.zeros((1, 8, 8, 3)), {"normal": jnp.zeros((14, 8))})


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_supernet(fast_compile):
  snet = SearchNetwork(C=4, layers=3, num_classes=3, steps=2, multiplier=2)
  v = snet.init_variables(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  y = jnp.array([0, 1, 2, 1])

  def loss(params, alphas, stats):
    logits, new = snet.forward(params, stats, x, _softmax(alphas), train=True)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y]), (logits, new)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
  return snet, v, grad


def _softmax(alphas):
  return {k: jax.nn.softmax(v, axis=-1) for k, v in alphas.items()}


def test_supernet_alpha_gradients_finite_and_nonzero(tiny_supernet):
  snet, v, grad = tiny_supernet
  alphas = init_alphas(jax.random.key(2), steps=2)
  assert alphas["normal"].shape == (5, 8)
  (g_w, g_a), (logits, new_stats) = grad(v["params"], alphas, v["batch_stats"])
  assert logits.shape == (4, 3)
  for k in ("normal", "reduce"):
    assert bool(jnp.all(jnp.isfinite(g_a[k])))
    assert float(jnp.abs(g_a[k][:, 1:]).min()) > 0  # every non-none op on every edge gets gradient
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g_w))


def test_same_weights_serve_any_alphas(tiny_supernet):
  snet, v, grad = tiny_supernet
  a1 = init_alphas(jax.random.key(2), steps=2)
  a2 = jax.tree.map(lambda a: a.at[:, 4].set(5.0), a1)  # push every edge to sep_conv_3x3
  (_, _), (l1, _) = grad(v["params"], a1, v["batch_stats"])
  (_, _), (l2, _) = grad(v["params"], a2, v["batch_stats"])
  assert not np.allclose(l1, l2)


def test_cell_schedule():
  from jnas.supernet import cell_schedule
  # DARTS normal cell, states 0-1 inputs, 2-5 nodes: 7 iterations of 2 edges, in the parameters'
  # own order (by source, then target), which is a valid schedule here.
  assert cell_schedule(4, True) == [[(0, 2), (0, 3)], [(0, 4), (0, 5)], [(1, 2), (1, 3)], [(1, 4), (1, 5)],
                                    [(2, 3), (2, 4)], [(2, 5), (3, 4)], [(3, 5), (4, 5)]]
  assert cell_schedule(4, False) == [[(2, 3), (2, 4)], [(2, 5), (3, 4)], [(3, 5), (4, 5)]]
  # Where that order is not valid in chunks of k, edge_schedule orders the edges (nearest targets first).
  assert cell_schedule(5, True)[:2] == [[(0, 2), (1, 2), (0, 3), (1, 3)], [(2, 3), (0, 4), (1, 4), (2, 4)]]
  assert cell_schedule(2, False) is None
  for steps in (3, 4, 5, 6, 8):
    for with_inputs in (True, False):
      sched = cell_schedule(steps, with_inputs)
      if sched is None:
        continue
      flat = [e for it in sched for e in it]
      assert sorted(flat) == sorted((i, j + 2) for j in range(steps) for i in range(j + 2) if with_inputs or i >= 2)
      assert len({len(it) for it in sched}) == 1
      done_before = lambda t: [e for it in sched[:t] for e in it]
      for t, it in enumerate(sched):  # a source node is complete before any edge leaves it
        for i, _ in it:
          if i >= (2 if with_inputs else 3):
            assert all(e in done_before(t) for e in flat if e[1] == i)


def test_init_alphas_schemes():
  a = init_alphas(jax.random.key(0))
  assert a["normal"].shape == a["reduce"].shape == (14, 8)
  assert 1e-4 < float(jnp.std(a["normal"])) < 1e-2
  z = init_alphas(jax.random.key(0), scheme="zeros")
  assert float(jnp.abs(z["reduce"]).max()) == 0
  with pytest.raises(ValueError, match="unknown alpha init"):
    init_alphas(jax.random.key(0), scheme="uniform")


def test_supernet_linen_interface(fast_compile):
  snet = SearchNetwork(C=4, layers=2, num_classes=3, steps=2, multiplier=2)
  x = jnp.ones((2, 8, 8, 3))
  alphas = init_alphas(jax.random.key(1), steps=2)
  variables = jax.jit(snet.init)({"params": jax.random.key(0)}, x, _softmax(alphas))
  assert count_params(variables) == torch_count_search(4, 2, 3, steps=2)
  logits, upd = jax.jit(functools.partial(snet.apply, train=True, mutable=["batch_stats"]))(variables, x,
                                                                                          _softmax(alphas))
  assert logits.shape == (2, 3) and jax.tree.structure(upd["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


def _reference_search_forward(snet, params, stats, x, alphas):
  """DARTS Eq. 1-2 edge by edge, as quark0's MixedOp/Cell loops do (train mode)."""
  from jnas import kernels, ops
  steps = snet.steps
  mid_order = [(i, j) for i in range(steps - 1) for j in range(i + 1, steps)]
  y, _ = kernels.batch_norm(kernels.conv(x, params["stem"]["w"], padding=1), stats["stem"]["bn"], train=True,
                            **params["stem"]["bn"])
  s0 = s1 = y
  for grp in snet.groups():
    assert grp.size == 1
    spec = grp.spec
    p = jax.tree.map(lambda a: a[0], params[grp.name])
    st = jax.tree.map(lambda a: a[0], stats[grp.name])
    w = jax.nn.softmax(alphas["reduce" if spec.reduction else "normal"], axis=-1)
    pre0, pre1 = snet._preprocess(spec)
    states = [pre0.apply(p["pre0"], st["pre0"], s0, True)[0], pre1.apply(p["pre1"], st["pre1"], s1, True)[0]]
    for j in range(steps):
      node = 0.0
      for i in range(j + 2):
        if i < 2:
          set_name, e, stride = "edges_in", i * steps + j, (2 if spec.reduction else 1)
        else:
          set_name, e, stride = "edges_mid", mid_order.index((i - 2, j)), 1
        row = space.edge_index(i, j)
        for o, name in enumerate(snet.primitives):
          op = ops.make_op(name, spec.C, stride, affine=False, pool_bn=True)
          op_p = jax.tree.map(lambda a: a[e], p[set_name].get(name, {}))
          op_s = jax.tree.map(lambda a: a[e], st[set_name].get(name, {}))
          node = node + w[row, o] * op.apply(op_p, op_s, states[i], True, "xla")[0]
      states.append(node)
    s0, s1 = s1, jnp.concatenate(states[-snet._multiplier:], axis=-1)
  return jnp.mean(s1, axis=(1, 2)) @ params["classifier"]["w"] + params["classifier"]["b"][None, :]


@pytest.mark.parametrize("steps,scan", [(3, False), (4, True), (3, True)])
def test_batched_mixed_ops_equal_edge_by_edge_reference(fast_compile, steps, scan):
  # With scan, a normal cell's edges run as one lax.scan, a reduction cell's edges between nodes
  # as another (cell_schedule); steps=3 has a full-cell schedule but none for the nodes alone.
  snet = SearchNetwork(C=4, layers=3, num_classes=3, steps=steps, multiplier=steps, scan=scan)
  assert [g.size for g in snet.groups()] == [1, 1, 1]
  v = snet.init_variables(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
  alphas = jax.tree.map(lambda a: a * 1000, init_alphas(jax.random.key(2), steps=steps))  # far from uniform
  ours, _ = jax.jit(functools.partial(snet.forward, train=True))(v["params"], v["batch_stats"], x, _softmax(alphas))
  ref = jax.jit(functools.partial(_reference_search_forward, snet))(v["params"], v["batch_stats"], x, alphas)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
