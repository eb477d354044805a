"""Each method's own pieces against facts worked out by hand: P-DARTS's pruning and skip cap and
its three stages (resumed inside a stage), DrNAS's pruning and widening, PC-DARTS with K = 1,
GDAS's (op, input) pairs, SNAS's cost tables and its edge-all cells, GDAS-FRC genotypes, and
random search ranking a planted architecture first."""

import json
import os

import jax
import optax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
import jnas.data as D
from jnas import space
from jnas.genotype import Genotype
from jnas.loop import Interrupted
from jnas.network import Network, count_params
from jnas.search import METHODS, config_for, drnas, pcdarts, pdarts, rsws, select, snas
from jnas.search.run import EvalData, load_search, run_search

OPS = ("none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3")
TINY = dict(C=4, layers=3, steps=2, primitives=OPS, batch_size=16, conv_impl="xla")


@pytest.fixture(scope="module")
def digits():
  ds = D.load_digits(size=8, channels=3)
  w, a = D.search_split(ds.train, seed=0)
  return ds, D.Split(w.images[:64], w.labels[:64]), D.Split(a.images[:64], a.labels[:64])


# ------------------------------------------------------------------------------------- P-DARTS
def test_pdarts_pruning_keeps_exactly_the_top_k_ops_per_edge():
  rng = np.random.default_rng(0)
  probs = rng.random((14, 8))
  switches = np.ones((14, 8), bool)
  switches[3, [0, 5]] = False  # an edge already pruned
  new = pdarts.drop_smallest(probs, switches, 3)
  for e in range(14):
    active = np.flatnonzero(switches[e])
    expect = set(active[np.argsort(-probs[e, active], kind="stable")[:3]])
    assert set(np.flatnonzero(new[e])) == expect
  ties = pdarts.drop_smallest(np.zeros((1, 4)), np.ones((1, 4), bool), 2)
  assert ties[0].tolist() == [False, False, True, True]  # ties: the lowest index goes first


def test_skip_cap_removes_the_weakest_skips():
  # a normal cell whose every strongest op is skip_connect, with distinct skip weights
  prims = space.PRIMITIVES
  w = np.full((14, 8), 0.01)
  skip, sep = prims.index("skip_connect"), prims.index("sep_conv_3x3")
  w[:, skip] = np.linspace(0.9, 0.5, 14)
  w[:, sep] = 0.3
  weights = {"normal": w, "reduce": w}
  uncapped = select.darts_top2(weights, prims)
  assert select.count_skips(uncapped.normal) == 8
  capped = select.darts_top2(weights, prims, skip_cap=2)
  assert select.count_skips(capped.normal) == 2
  # the two skips kept are the strongest ones among the edges chosen
  kept = [space.edge_index(i, k // 2) for k, (op, i) in enumerate(capped.normal) if op == "skip_connect"]
  chosen = [space.edge_index(i, k // 2) for k, (op, i) in enumerate(uncapped.normal)]
  assert sorted(kept) == sorted(sorted(chosen, key=lambda r: -w[r, skip])[:2])
  assert select.count_skips(capped.reduce) == 8  # the cap is for the normal cell only


@pytest.fixture(scope="module")
def pdarts_run(digits, tmp_path_factory, fast_compile):
  ds, w, a = digits
  cfg = config_for(METHODS["pdarts"], "paper", **{**TINY, "steps": 1}, epochs=2, warmup_epochs=1, add_layers=(0, 1, 2),
                   num_to_keep=(3, 2, 1), skip_cap=1)
  out = str(tmp_path_factory.mktemp("pdarts") / "run")
  kw = dict(mean=ds.mean, std=ds.std, eval_images=16, quiet=True)
  # (one seed: seeds that prune differently getting their own programs is tested on a toy in
  # test_method_facts.py; here every stage compiles once)
  return cfg, out, kw, run_search("pdarts", cfg, [0], w, a, out=out, **kw)


def test_pdarts_three_stages(pdarts_run):
  cfg, out, kw, res = pdarts_run
  with open(os.path.join(out, "stages.json")) as f:
    stages = json.load(f)
  assert [s["epochs"] for s in stages] == [2, 2, 2] and len(stages) == 3
  for seed in ("0",):
    sw1 = np.asarray(stages[1]["contexts"][seed]["normal"])
    sw2 = np.asarray(stages[2]["contexts"][seed]["normal"])
    assert np.all(sw1.sum(1) == 3) and np.all(sw2.sum(1) == 2) and np.all(sw2 <= sw1)  # 4 -> 3 -> 2 ops
  assert stages[1]["name"].startswith("4 cells") and stages[2]["name"].startswith("5 cells")
  hist = load_search(out)["history"]
  assert sorted({(r["stage"], r["epoch"]) for r in hist}) == [(s, e) for s in range(3) for e in range(2)]
  assert all("skip_dropout" in r for r in hist)
  for seed, g in res["genotypes"].items():
    assert select.count_skips(g.normal) <= 1  # the skip cap
    sw = np.asarray(stages[2]["contexts"][str(seed)]["normal"])
    for k, (op, i) in enumerate(g.normal):  # every op comes from the last stage's switches
      assert sw[space.edge_index(i, k // 2), OPS.index(op)]


def test_pdarts_resumes_inside_a_later_stage(pdarts_run, digits, tmp_path):
  cfg, _, kw, res = pdarts_run
  ds, w, a = digits
  out = str(tmp_path / "killed")
  spe = 4  # 64 images / batch 16
  # stage 0: 2 epochs x 1 group x 4 steps = positions 0-8; stage 1 starts at checkpoint 9
  with pytest.raises(Interrupted):
    run_search("pdarts", cfg, [0], w, a, out=out, stop_at=9 + 2 * spe + 1, **kw)
  resumed = run_search("pdarts", cfg, [0], w, a, out=out, resume=True, **kw)
  for s in (0,):
    assert resumed["genotypes"][s] == res["genotypes"][s]
    np.testing.assert_array_equal(resumed["arch"][s]["normal"], res["arch"][s]["normal"])


# --------------------------------------------------------------------------------------- DrNAS
def test_drnas_prune_keeps_the_largest_theta():
  theta = np.array([[0.5, -1.0, 2.0, 0.1], [0.0, 0.3, -0.2, 0.9]], np.float32)
  t, m = drnas.prune(theta, 2)
  assert m.tolist() == [[True, False, True, False], [False, True, False, True]]
  assert t.tolist() == [[0.5, 0.0, 2.0, 0.0], [0.0, pytest.approx(0.3), 0.0, pytest.approx(0.9)]]
  t2, m2 = drnas.prune(np.array([[5.0, 4.0, 3.0, 2.0]]), 1, mask=np.array([[False, True, True, True]]))
  assert m2.tolist() == [[False, True, False, False]]  # a pruned entry never comes back


def test_drnas_widening_copies_channels_with_their_momentum(fast_compile):
  cfg = config_for(METHODS["drnas"], "paper", C=12, layers=3, steps=2, primitives=OPS[1:], conv_impl="xla",
                   num_keeps=(3, 2))
  search = METHODS["drnas"](cfg, 4)
  m1 = search.stage(0, None).method
  st = jax.device_get(m1.init(jax.random.key(0)))
  # a momentum buffer that tells the channels apart
  rng = np.random.default_rng(0)
  trace = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), st.params)
  st = st._replace(w_opt=tuple(s._replace(trace=trace) if hasattr(s, "trace") else s for s in st.w_opt),
                   arch=jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), st.arch))
  ctx, st2 = search.transition(0, st, None, jax.random.key(1))
  m2 = search.stage(1, ctx).method
  want = jax.eval_shape(m2.init, jax.random.key(0))
  assert jax.tree.structure(want) == jax.tree.structure(jax.tree.map(jnp.asarray, st2))
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(st2)))
  assert np.all(np.asarray(ctx["mask"]["normal"]).sum(1) == 2) and ctx["k"] == 4
  # normal cell 0: C = 12, dil_conv goes from 12 / 6 = 2 to 12 / 4 = 3 channels; kept edges only
  g = m1.net.groups()[0].name
  old_dw = np.asarray(st.params[g]["edges_in"]["dil_conv_3x3"]["dw"])[0]  # (edges, 3, 3, 2)
  old_m = np.asarray(trace[g]["edges_in"]["dil_conv_3x3"]["dw"])[0]
  new_dw = np.asarray(st2.params[g]["edges_in"]["dil_conv_3x3"]["dw"])[0]
  new_m = np.asarray(st2.w_opt[2].trace[g]["edges_in"]["dil_conv_3x3"]["dw"])[0]
  kept = m2.net._present("normal", m1.net._set_rows("edges_in"))[OPS[1:].index("dil_conv_3x3")]
  assert new_dw.shape[0] == len(kept) and new_dw.shape[-1] == 3
  for j, e in enumerate(kept):
    np.testing.assert_array_equal(new_dw[j, ..., :2], old_dw[e])  # the old channels stay first
    for c in range(3):  # every channel is a copy of an old one, its momentum copied alongside
      src = [k for k in range(2) if np.array_equal(new_dw[j, ..., c], old_dw[e, ..., k])]
      assert src and any(np.array_equal(new_m[j, ..., c], old_m[e, ..., k]) for k in src)
  # theta kept for the kept ops, 0 for the pruned ones
  mask = np.asarray(ctx["mask"]["reduce"])
  np.testing.assert_array_equal(st2.arch["reduce"][mask], st.arch["reduce"][mask])
  assert np.all(st2.arch["reduce"][~mask] == 0)


def test_drnas_progressive_search_runs_both_stages(digits, fast_compile):
  ds, w, a = digits
  cfg = config_for(METHODS["drnas"], "paper", C=12, layers=3, steps=1, primitives=OPS[1:], conv_impl="xla",
                   batch_size=16, epochs=1, warmup_epochs=0, num_keeps=(3, 2))
  res = run_search("drnas", cfg, [0], w, a, mean=ds.mean, std=ds.std, eval_images=16, quiet=True)
  assert [(r["stage"], r["epoch"]) for r in res["history"]] == [(0, 0), (1, 0)]
  # the lr follows one cosine over both stages (stage 2 does not restart it)
  lrs = [r["lr"] for r in res["history"]]
  assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.05, rel=1e-5)
  g = res["genotypes"][0]
  assert isinstance(g, Genotype) and "none" not in g.ops()


# ------------------------------------------------------------------------------------- PC-DARTS
def test_pcdarts_with_k1_equals_darts_with_edge_normalised_weights(fast_compile):
  cfg = config_for(METHODS["pcdarts"], "paper", **TINY, partial_channels=1)
  p = pcdarts.parts(cfg, 4)
  darts_net = METHODS["darts"](config_for(METHODS["darts"], "paper", **TINY), 4).stage(0, None).method.net
  arch = jax.tree.map(lambda a: 300 * a, p.init_arch(jax.random.key(0)))  # far from uniform
  v = p.net.init_variables(jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
  combined = pcdarts.ranking_weights(arch, 2)
  ours = jax.jit(lambda a: p.net.forward(v["params"], v["batch_stats"], x, p.mix(a, None, 0), train=True)[0])(arch)
  ref = jax.jit(lambda w: darts_net.forward(v["params"], v["batch_stats"], x, w, train=True)[0])(combined)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  g = p.derive(jax.device_get(arch))
  assert g == select.darts_top2(jax.device_get(combined), OPS)


# ----------------------------------------------------------------------------------------- GDAS
def test_gdas_pairs_may_share_an_input():
  w = np.full((5, 4), 0.01)  # 2 nodes: edges 0-1 into node 0, 2-4 into node 1
  w[0, 3], w[0, 2], w[1, 1] = 0.9, 0.8, 0.5  # node 0: both best (op, input) pairs read input 0
  w[4, 3], w[2, 1] = 0.7, 0.6
  g = select.top2_pairs({"normal": w, "reduce": w}, OPS)
  assert g.normal == (("dil_conv_3x3", 0), ("avg_pool_3x3", 0), ("dil_conv_3x3", 2), ("skip_connect", 0))
  # a DARTS cell with a repeated input trains: the network takes such cells
  net = Network(g, C=4, layers=3, num_classes=3)
  v = net.init_variables(jax.random.key(0))
  logits, _, _ = net.forward(v["params"], v["batch_stats"], jnp.zeros((2, 8, 8, 3)), train=False)
  assert logits.shape == (2, 3)
  frc = select.top2_pairs({"normal": w}, OPS, fixed_reduce="gdas_frc")
  assert frc.fixed_reduce == "gdas_frc" and frc.reduce == ()
  assert Genotype.from_json(frc.to_json()) == frc and Genotype.parse(str(frc)) == frc


def test_gdas_frc_network_counts_parameters():
  g = select.top2_pairs({"normal": np.eye(5, 4)}, OPS, fixed_reduce="gdas_frc")
  net = Network(g, C=8, layers=3, num_classes=10)
  v = jax.eval_shape(net.init_variables, jax.random.key(0))
  plan = net.plan()
  C0 = 8
  # stem conv + BN; normal cell 0 (ReLUConvBN 24->8 twice, its ops); two fixed reduction cells; classifier
  stem = 27 * 3 * C0 + 2 * 3 * C0
  rcb = lambda ci, co: ci * co + 2 * co
  ops0 = sum({"dil_conv_3x3": 9 * C0 + C0 * C0 + 2 * C0, "avg_pool_3x3": 0, "skip_connect": 0}[op] for op, _ in g.normal)
  cell0 = rcb(3 * C0, C0) + rcb(3 * C0, C0) + ops0

  def frc(spec):  # affine BN, no conv bias
    C = spec.C
    branch = 3 * (C // 8) * C * 2 + 2 * C + C * C + 2 * C
    pre0 = (2 * spec.C_pp * (C // 2) + 2 * C) if spec.reduction_prev else rcb(spec.C_pp, C)
    return pre0 + rcb(spec.C_p, C) + 2 * branch + 2 * 2 * C
  total = stem + cell0 + frc(plan[1]) + frc(plan[2]) + 4 * plan[2].C * 10 + 10
  assert count_params(v["params"]) == total


# ----------------------------------------------------------------------------------------- SNAS
def test_snas_cost_tables_and_penalty(fast_compile):
  assert snas._op_costs("sep_conv_3x3", 16, 32, 1) == (800.0, 819200.0, 131872.0)  # the code's numbers
  assert snas._op_costs("max_pool_3x3", 16, 32, 2) == (0.0, 9 * 256 * 16, 5 * 256 * 16)
  assert snas._op_costs("skip_connect", 16, 32, 1) == (0.0, 0.0, 2 * 16 * 32 * 32)
  cfg = config_for(METHODS["snas"], "paper", **TINY, image_size=8)
  net = snas.parts(cfg, 4).net
  tables = snas.cost_tables(net, 8)
  assert [t for t, _ in tables] == ["normal", "reduce", "reduce"]
  one_hot = {t: jnp.zeros((5, 4)).at[:, OPS.index("dil_conv_3x3")].set(1.0) for t in ("normal", "reduce")}
  # by hand: every edge a dil_conv_3x3: r_e = mean(log size, log flops, log mac) per cell
  expect = {"normal": 0.0, "reduce": 0.0}
  for spec, (t, _), H in zip(net.plan(), tables, (8, 8, 4)):  # cells n, r, r: input sides 8, 8, 4
    for src, _ in space.edges(2):
      stride = 2 if spec.reduction and src < 2 else 1
      expect[t] += np.mean(np.log(snas._op_costs("dil_conv_3x3", spec.C, H, stride)))
  got = float(snas.resource_penalty(tables, one_hot))
  assert got == pytest.approx(expect["normal"] / 6 + expect["reduce"] / 2, rel=1e-5)
  # |c| < 1 counts as 1: an all-none cell costs nothing and passes no gradient
  none = {t: jnp.zeros((5, 4)).at[:, 0].set(1.0) for t in ("normal", "reduce")}
  g = jax.grad(lambda w: snas.resource_penalty(tables, w))(none)
  assert float(snas.resource_penalty(tables, none)) == 0.0 and float(jnp.abs(g["normal"][:, 0]).max()) == 0.0


def test_snas_edge_all_genotypes_build_networks():
  w = np.random.default_rng(0).random((14, 8))
  g = select.edge_all({"normal": w, "reduce": w}, space.PRIMITIVES)
  assert g.normal_degree == (2, 3, 4, 5) and len(g.normal) == 14
  assert Genotype.parse(str(g)) == g and Genotype.from_json(g.to_json()) == g
  assert json.loads(g.to_json())["version"] == 2
  assert [op for op, _ in g.normal] == [space.PRIMITIVES[int(np.argmax(w[r]))] for r in range(14)]
  net = Network(g, C=4, layers=3, num_classes=10)
  v = jax.eval_shape(net.init_variables, jax.random.key(0))
  from test_models import torch_count_network  # (tests/ is on sys.path under pytest)
  assert count_params(v["params"]) == torch_count_network(g, 4, 3, 10)


# ---------------------------------------------------------------------- random search (RSWS)
def test_random_search_ranks_a_planted_architecture_first(digits, fast_compile):
  ds, _, _ = digits
  cfg = config_for(METHODS["rsws"], "paper", **TINY, archs_per_round=12, rank_batches=2, top_k=3, w_lr=0.05)
  method = METHODS["rsws"](cfg, 8).stage(0, None).method
  planted = rsws.sample(jax.random.key(123), cfg)
  # train the shared weights on the planted architecture alone: under them it is far better
  train = D.normalize(jnp.asarray(ds.train.images[:512]), ds.mean, ds.std)
  labels = jnp.asarray(ds.train.labels[:512].astype(np.int32))
  state = method.init(jax.random.key(0))
  loss = lambda p, st, x, y: jnas.train.cross_entropy(method.net.forward(p, st.batch_stats, x, planted, train=True)[0], y)

  @jax.jit
  def train_step(st, opt, x, y):
    (l, g) = jax.value_and_grad(loss)(st.params, st, x, y)
    upd, opt = tx.update(g, opt, st.params)
    _, new_stats = method.net.forward(st.params, st.batch_stats, x, planted, train=True)
    return st._replace(params=optax.apply_updates(st.params, upd), batch_stats=new_stats), opt

  tx = optax.sgd(0.1, momentum=0.9)
  opt = tx.init(state.params)
  for t in range(60):
    i = (t * 32) % 480
    state, opt = train_step(state, opt, train[i:i + 32], labels[i:i + 32])
  data = EvalData(jnp.asarray(ds.test.images[:192]), jnp.asarray(ds.test.labels[:192].astype(np.int32)),
                  tuple(ds.mean), tuple(ds.std), 32)
  ranked = rsws.rank(method, cfg, state, data, total_steps=100, extra=[planted])
  assert ranked["best"] == rsws.arch_genotype(planted, OPS, 2)
  r0 = ranked["rounds"][0]
  assert r0["accuracy"] == max(r0["top_k_accuracy"]) and len(r0["top_k_accuracy"]) == 3
