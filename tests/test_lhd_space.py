"""The LHD cell space as a setting of the supernet, the discrete network and every search method:
the joint softmax, parameter counts worked out by hand, the supernet at a genotype's one-hot
weights equal to that genotype's network, methods that learn on it, a search run's files, and the
benchmark command's pieces. Tiny cells (C=4, 3 cells, 2 nodes, 8x8 images)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas.data as D
from jnas import lhd
from jnas.network import Network, count_params
from jnas.search import METHODS, config_for, run, spaces
from jnas.supernet import SearchNetwork

G = lhd.LHDGenotype(
    normal=[("sep_conv_3x3", 0, 0), ("skip_connect", 1, 0), ("max_pool_3x3", 2, 1), ("dil_conv_5x5", 1, 1)],
    normal_output={"sum": [1], "concat": [0, 1]},
    reduce=[("sep_conv_5x5", 0, 0), ("skip_connect", 1, 0), ("avg_pool_3x3", 2, 1), ("sep_conv_3x3", 2, 1)],
    reduce_output={"sum": [0, 1], "concat": [0, 1]})  # (node 1 of the reduction cell: two ops from state 2)


def test_joint_softmax_sums_to_one_over_a_nodes_pairs():
  alpha = jax.random.normal(jax.random.key(0), (20, 7))
  w = np.asarray(lhd.joint_softmax(alpha))
  for lo, hi in lhd.node_rows():
    np.testing.assert_allclose(w[lo:hi].sum(), 1.0, rtol=1e-6)  # over all (input, op) pairs of the node
    e = np.exp(np.asarray(alpha[lo:hi], np.float64))
    np.testing.assert_allclose(w[lo:hi], e / e.sum(), rtol=1e-5)
  v = lhd.node_view(alpha)
  assert v.shape == (5, 42)
  np.testing.assert_array_equal(lhd.from_node_view(v), alpha)
  out = np.asarray(lhd.output_weights(jnp.array([[0.0, 1.0], [0.0, 2.0]])))
  np.testing.assert_allclose(out, [[1 / (1 + np.e), np.e / (1 + np.e)], [0.5, 1 / (1 + np.exp(-2))]], rtol=1e-6)


def test_parameter_counts_by_hand():
  # the network of G at C=4, 3 cells (C 4 | 8 | 16; reductions at cells 1 and 2)
  net = Network(G, C=4, layers=3, num_classes=10)
  stems = (27 * 12 + 2 * 12) + (27 * 4 + 2 * 4)  # 3x3 conv + BN to 3C and to C
  bn = lambda c: 2 * c
  cell0 = (12 * 4 + bn(4)) + (9 * 4 + bn(4)) + 0 + 0 + (25 * 4 + bn(4))  # pre1 1x1 12->4; sep3, skip, pool, dil5
  # reduction, C 8: pre0 1x1 4->8, pre1 1x1 (2*4)->8; sep5; FactorizedReduce 8->8; avg pool (BN affine off); sep3
  cell1 = (4 * 8 + bn(8)) + (8 * 8 + bn(8)) + (25 * 8 + bn(8)) + (2 * 8 * 4 + bn(8)) + 0 + (9 * 8 + bn(8))
  cell2 = (8 * 16 + bn(16)) + (16 * 16 + bn(16)) + (25 * 16 + bn(16)) + (2 * 16 * 8 + bn(16)) + 0 + (9 * 16 + bn(16))
  classifier = (16 + 2 * 16) * 10 + 10  # GAP(concat(sum: C, concat: 2C))
  shapes = lambda n: jax.eval_shape(n.init_variables, jax.random.key(0))["params"]
  assert count_params(shapes(net)) == stems + cell0 + cell1 + cell2 + classifier
  # the supernet, 2 nodes (5 edges, 3 from the inputs in... node 0: 2 inputs, node 1: 3), BN affine off
  sup = SearchNetwork(C=4, layers=3, steps=2, primitives=lhd.PRIMITIVES, cell_space="lhd")
  edge = lambda c: (9 + 25 + 9 + 25) * c  # sep3, sep5, dil3, dil5: one depthwise conv each (no 1x1)
  fr = lambda c: 2 * c * (c // 2)  # a strided skip_connect (FactorizedReduce), BN affine off
  s_cell0 = 12 * 4 + 5 * edge(4)
  s_cell1 = 4 * 8 + 8 * 8 + 5 * edge(8) + 4 * fr(8)  # 4 strided input edges (2 nodes x 2 inputs)
  s_cell2 = 8 * 16 + 16 * 16 + 5 * edge(16) + 4 * fr(16)
  s_cls = 3 * 16 * 10 + 10
  assert count_params(shapes(sup)) == stems + s_cell0 + s_cell1 + s_cell2 + s_cls


def _constant(tree, seed):
  """Every leaf filled with one constant per leaf name (so two layouts of the same ops agree)."""
  val = {"w": 0.05, "dw": 0.11, "w1": 0.07, "w2": -0.03, "scale": 1.0, "bias": 0.0, "b": 0.01}  # (BN as at init:
  # the supernet's has no affine parameters)
  return jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.full(a.shape, val[path[-1].key] * (1 + 0.1 * seed * (path[-1].key not in ("scale", "bias"))),
                               a.dtype), tree)


def _genotype_weights(g, steps=2):
  """The supernet weights that select ``g``: one-hot pairs, sum path = indicator, gates 1."""
  E = lhd.node_rows(steps)[-1][1]
  out = {}
  for t in ("normal", "reduce"):
    w = np.zeros((E, 7), np.float32)
    for op, i, n in getattr(g, t):
      w[lhd.node_rows(steps)[n][0] + i, lhd.PRIMITIVES.index(op)] = 1.0
    o = np.zeros((2, steps), np.float32)
    o[0, list(getattr(g, f"{t}_output")["sum"])] = 1.0
    o[1] = 1.0
    out[t], out[f"{t}_output"] = jnp.asarray(w), jnp.asarray(o)
  return out


def test_supernet_at_a_genotypes_weights_is_its_network():
  x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
  sup = SearchNetwork(C=4, layers=3, steps=2, primitives=lhd.PRIMITIVES, cell_space="lhd", conv_impl="xla")
  sv = sup.init_variables(jax.random.key(0))
  sp = _constant(sv["params"], 0)
  # (single path runs one op per edge, as GDAS's one-hot sample of one pair per node needs: a genotype
  # with two ops on one edge is checked on the mixture paths only)
  one_per_edge = lhd.LHDGenotype(G.normal, G.normal_output, G.reduce[:3] + (("sep_conv_3x3", 0, 1),), G.reduce_output)
  nets = {"scan": sup, "unrolled": sup.clone(scan=False), "single path": sup.clone(single_path=True)}
  got = {}
  for g, paths in ((G, ("scan", "unrolled")), (one_per_edge, ("single path",))):
    net = Network(g, C=4, layers=3, num_classes=10)
    v = net.init_variables(jax.random.key(0))
    want = net.forward(_constant(v["params"], 0), v["batch_stats"], x, train=True)[0]  # (eager: cheaper than compiling)
    for label in paths:
      got[label] = nets[label].forward(sp, sv["batch_stats"], x, _genotype_weights(g), train=True)[0]
      np.testing.assert_allclose(got[label], want, rtol=2e-4, atol=2e-5, err_msg=label)
  # the gates: node 0 gated off changes what node 1 reads in the normal cell (max pool of state 2)
  w = _genotype_weights(G)
  off = sup.forward(sp, sv["batch_stats"], x, dict(w, normal_output=w["normal_output"].at[1, 0].set(0.0)), train=True)[0]
  assert not np.allclose(off, got["scan"], atol=1e-4)
  with pytest.raises(ValueError, match="normal_output"):
    sup.forward(sp, sv["batch_stats"], x, {k: v_ for k, v_ in w.items() if k != "normal_output"})
  with pytest.raises(ValueError, match="unknown op"):
    SearchNetwork(C=4, layers=3, cell_space="lhd").init_variables(jax.random.key(0))  # ('none' is DARTS's)
  with pytest.raises(ValueError, match=r"node\(s\) \[0\] are read or output but have no op"):
    empty = lhd.LHDGenotype(normal=[("skip_connect", 2, 1)], normal_output={"sum": [1], "concat": [1]},
                            reduce=G.reduce, reduce_output=G.reduce_output)  # node 1 reads node 0, which has none
    Network(empty, C=4, layers=3).init_variables(jax.random.key(0))


# ------------------------------------------------------------------------------- the methods
TINY = dict(C=4, layers=3, steps=2, batch_size=16, epochs=4, conv_impl="xla", space="lhd", w_lr=0.1, w_lr_min=0.1)
SPE = 3
PER_METHOD = {"drnas": dict(progressive=False, ks=(1, 1), warmup_epochs=1), "gdas": dict(tau_max=2.0, tau_min=0.5), "pcdarts": dict(partial_channels=2),
              "ss-darts": dict(stop_op="dil_conv_3x3"), "darts": dict(order="first"), "gaea": dict(mix="softmax"),
              "gaea-erm": dict(mix="softmax")}


def test_every_method_runs_on_lhd_or_says_why():
  """Every method traces a step on the LHD space, or refuses with a message naming the method."""
  x, y = jnp.zeros((8, 8, 8, 3)), jnp.zeros((8,), jnp.int32)
  refused = set()
  for name in METHODS:
    try:
      cfg = config_for(METHODS[name], "paper", **{**TINY, **PER_METHOD.get(name, {})})
      m = METHODS[name](cfg, SPE).stage(0, None).method
    except ValueError as e:
      assert ("LHD" in str(e) and name in str(e)) or "LHD space has no op" in str(e) or "StacNAS" in str(e), (name, e)
      refused.add(name)
      continue
    state = jax.eval_shape(m.init, jax.random.key(0))
    assert state.arch["normal_output"].shape == (2, 2), name
    new, metrics = jax.eval_shape(m.step, state, (x, y), (x, y))
    assert jax.tree.structure(new) == jax.tree.structure(state), name
  assert refused == set(spaces.DARTS_CELL_ONLY) | {"stacnas", "cnas"}, refused
  with pytest.raises(ValueError, match="mix='softmax'"):
    METHODS["gaea"](config_for(METHODS["gaea"], "paper", **TINY), SPE)


@pytest.fixture(scope="module")
def digits():
  ds = D.load_digits(size=8, channels=3)
  x = np.asarray(D.normalize(jnp.asarray(ds.train.images[:768]), ds.mean, ds.std))
  return ds, x, ds.train.labels[:768].astype(np.int32)


@pytest.mark.parametrize("name", ["darts", "drnas"])
def test_methods_learn_on_lhd(name, digits, fast_compile):
  """A short search on digits lowers the held-out loss at the method's eval weights (two seeds)."""
  _, x, y = digits
  cfg = config_for(METHODS[name], "paper", **{**TINY, **PER_METHOD.get(name, {})})
  m = METHODS[name](cfg, SPE).stage(0, None).method
  keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
  state0 = jax.jit(jax.vmap(m.init))(keys)
  step = jax.jit(jax.vmap(m.step))
  state = state0
  stack = lambda b: jax.tree.map(lambda a: jnp.stack([a, a]), b)
  for t in range(4 * SPE):
    i = (t * 16) % 240
    state, metrics = step(state, stack((x[i:i + 16], y[i:i + 16])), stack((x[256 + i:272 + i], y[256 + i:272 + i])))
  assert np.all(np.asarray(metrics["alive"])), name
  xv, yv = x[512:768], y[512:768]

  def loss(s):
    logits, _ = m.net.forward(s.params, s.batch_stats, xv, m.eval_weights(s.arch), train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yv[:, None], axis=1))
  before, after = (np.asarray(jax.jit(jax.vmap(loss))(s)) for s in (state0, state))
  assert np.all(after < before), (name, before, after)
  assert not np.allclose(state.arch["normal_output"], state0.arch["normal_output"]), name  # the betas learn
  g = m.derive(jax.tree.map(lambda a: a[0], state))
  assert isinstance(g, lhd.LHDGenotype) and g.ops() <= set(lhd.PRIMITIVES)


def test_lhd_search_run_files(tmp_path, fast_compile):
  ds = D.load_digits(size=8, channels=3)
  w, a = D.search_split(ds.train, seed=0)
  w, a = D.Split(w.images[:32], w.labels[:32]), D.Split(a.images[:32], a.labels[:32])
  cfg = METHODS["darts"].config(**{**TINY, "epochs": 1, "order": "first"})
  res = run.run_search("darts", cfg, [0], w, a, out=str(tmp_path / "s"), quiet=True)
  g = res["genotypes"][0]
  assert isinstance(g, lhd.LHDGenotype)
  with open(tmp_path / "s" / "seed_0" / "genotype.json") as f:
    assert lhd.LHDGenotype.from_dict(json.load(f)) == g
  back = run.load_search(str(tmp_path / "s"))
  assert back["genotypes"][0] == g and set(back["arch"][0]) >= {"normal", "normal_output", "reduce_output"}
  with open(tmp_path / "s" / "metrics.jsonl") as f:
    rec = json.loads(f.readline())
  assert lhd.genotype_from_text(rec["genotype"]).normal_output["sum"]


def test_benchmark_command_pieces(capsys):
  from experiments import lhd_benchmark as B
  c = B.search_config("pcdarts", "paper", 100, {})
  assert (c.space, c.steps, c.batch_size, c.w_lr, c.a_lr, c.a_weight_decay, c.order, c.num_classes) == \
      ("lhd", 5, 576, 0.1, 6e-4, 0.0, "first", 100)
  assert B.search_config("drnas", "cpu", 10, {}).progressive is False
  assert B.search_config("darts", "cpu", 10, {}).C == METHODS["darts"].preset("cpu").get("C", 16)
  rows = [{"method": "darts", "dataset": "cifar10", "policy": "base", "seed": s, "final_acc": a, "status": "ok"}
          for s, a in ((0, 50.0), (1, 60.0))]
  table = B.render_table(rows, ["darts", "random"], ["cifar10"], ["base", "4out"])
  assert "| darts | 55.00 ± 5.00 | - |" in table and "| random | - | - |" in table
  assert B._lhd_best([1, 5, 3, 4, 2, 2], 6) == 2  # epochs after 2/3: indices 5
  g = lhd.discretize(jax.device_get(lhd.search_weights(lhd.random_arch(jax.random.key(0)))), "base")
  s = lhd.eval_settings(g, "base", "cifar100")
  assert s == {"C": 36, "layers": 20, "drop_path_prob": pytest.approx(0.02 * len(g.normal_output["concat"]))}
  big = lhd.eval_settings(g, "1m", "cifar10", C=4, layers=3, capacity=2e4, capacity_layers=4)
  net = lambda c: Network(g, C=c, layers=4)
  n = lambda c: count_params(jax.eval_shape(net(c).init_variables, jax.random.key(0))["params"])
  assert big["layers"] == 4 and n(big["C"]) >= 2e4 > n(big["C"] - 2)
  for argv, msg in ((["--methods", "dartz"], "unknown"), (["--methods", "pdarts"], "LHD"),
                    (["--policies", "5out"], "unknown")):
    with pytest.raises(SystemExit):
      B.main(argv + ["--out", os.devnull + "_x"])
    assert msg in capsys.readouterr().err
