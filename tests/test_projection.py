"""DARTS-PT selection (``jnas.search.projection``): planted ops and edges are found, the code's
tie rules, masked weights, and the real driver on a tiny supernet in two compiled programs (with a
resumed run equal to an uninterrupted one)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
import jnas.data as D
from jnas import space
from jnas.compile_options import lean_jit
from jnas.search import METHODS, config_for
from jnas.search import projection as P

OPS = ("skip_connect", "avg_pool_3x3", "dil_conv_3x3")


# ------------------------------------------------------------------------- synthetic scores
def _planted_score(base_w, planted, importance):
  """acc(W) = sum_t sum_e importance_t[e] W_t[e, planted_t[e]]: removing a planted op (or an
  important edge) costs the most; loss = -acc."""
  def score(sel, op_zero, edge_zero):
    accs = 0.0
    for t in sel:
      W = jax.vmap(P.masked_cell, in_axes=(None, 0))(base_w[t], jax.tree.map(jnp.asarray, sel[t]))  # (S, E, O)
      Wv = jnp.where(jnp.asarray(op_zero[t]), 0.0, W[:, None])                                   # (S, V, E, O)
      picked = jnp.take_along_axis(Wv, jnp.asarray(planted[t])[None, None, :, None], axis=-1)[..., 0]
      accs = accs + jnp.sum(picked * jnp.asarray(importance[t])[None, None], axis=-1)
    return {"acc": accs, "loss": -accs}
  return score


def _keys(*seeds):
  return jnp.stack([jax.random.key(s) for s in seeds])


@pytest.mark.parametrize("crit", ["acc", "loss"])
@pytest.mark.parametrize("elimination", P.ELIMINATIONS)
def test_planted_ops_and_edges_are_selected(crit, elimination):
  steps, O = 3, len(OPS)
  E = space.num_edges(steps)
  rng = np.random.default_rng(0)
  planted = {t: rng.integers(0, O, E) for t in ("normal", "reduce")}
  # node 1 (rows 2-4) keeps inputs 0 and 2, node 2 (rows 5-8) inputs 1 and 3
  keep = {"normal": {2, 4, 6, 8}, "reduce": {3, 4, 5, 7}}
  importance = {t: np.asarray([3.0 if r in keep[t] or r < 2 else 1.0 + 0.1 * r for r in range(E)])
                for t in planted}
  base_w = {t: jnp.full((E, O), 1.0 / O) for t in planted}
  sel, records = P.select_all(_planted_score(base_w, planted, importance), _keys(0, 1), steps=steps,
                              primitives=OPS, crit=crit, elimination=elimination, chunk=2)
  for s in range(2):
    one = jax.tree.map(lambda a: a[s], sel)
    for t in planted:
      cs = one[t]
      assert cs.op_decided.all() and cs.node_decided.all()
      np.testing.assert_array_equal(cs.onehot.argmax(-1), planted[t])
      kept = set(np.flatnonzero(~cs.removed).tolist())
      assert kept == keep[t] | {0, 1}, (t, kept)
    g = P.derive(one, OPS)
    g.validate()
    for t, cell in (("normal", g.normal), ("reduce", g.reduce)):
      pairs = {(space.edge_index(i, k // 2), op) for k, (op, i) in enumerate(cell)}
      assert pairs == {(r, OPS[planted[t][r]]) for r in keep[t] | {0, 1}}
  # each seed drew its own edge order, each cell type its own
  order = lambda s, t: [r[t]["edge"] for r in records[s] if r["kind"] == "op"]
  assert sorted(order(0, "normal")) == list(range(E))
  assert order(0, "normal") != order(1, "normal") or order(0, "reduce") != order(1, "reduce")


def test_tie_rules():
  # ops: the first minimum of accuracy, the first maximum of loss
  assert int(P.choose_op(jnp.asarray([5.0, 3.0, 3.0, 4.0]))) == 1
  assert int(P.choose_op(jnp.asarray([1.0, 2.0, 2.0]), "loss")) == 1
  assert int(P.choose_op(jnp.asarray([1.0, 2.0, 0.5]), valid=jnp.asarray([True, True, False]))) == 0
  # edges: the last maximum of accuracy (the last minimum of loss) is removed
  assert int(P.choose_removal(jnp.asarray([2.0, 7.0, 7.0, 1.0]))) == 2
  assert int(P.choose_removal(jnp.asarray([3.0, 1.0, 1.0]), "loss")) == 2
  # a whole schedule of ties: every edge keeps op 0, every node its first two inputs
  steps = 3
  const = lambda sel, oz, ez: {"acc": jnp.full(oz["normal"].shape[:2], 50.0), "loss": jnp.ones(oz["normal"].shape[:2])}
  sel, records = P.select_all(const, _keys(3), steps=steps, primitives=OPS)
  for t in ("normal", "reduce"):
    cs = jax.tree.map(lambda a: a[0], sel[t])
    assert (cs.onehot.argmax(-1) == 0).all()
    assert np.flatnonzero(~cs.removed).tolist() == [0, 1, 2, 3, 5, 6]
  # node 2 (4 inputs): two rounds, each removing the last remaining candidate
  rounds = [r["normal"]["rounds"] for r in records[0] if r["kind"] == "topology" and r["normal"]["node"] == 2][0]
  assert [r["removed"] for r in rounds] == [8, 7]
  # 'none' is never kept, even where removing it hurts most
  ops = ("none",) + OPS
  worst_none = lambda sel, oz, ez: {"acc": jnp.where(jnp.asarray(oz["normal"]).any((2,))[..., 0], 0.0, 1.0),
                                     "loss": jnp.zeros(oz["normal"].shape[:2])}
  sel, _ = P.select_all(worst_none, _keys(0), steps=2, primitives=ops)
  assert (sel["normal"].onehot[0].argmax(-1) != 0).all()


def test_masked_weights():
  steps, O = 3, 4
  E = space.num_edges(steps)
  base_w = jax.nn.softmax(jax.random.normal(jax.random.key(0), (E, O)))
  cs = P.init_selection(steps, O)["normal"]
  cs = P.decide_op(cs, 3, 2)
  cs = P.decide_op(cs, 0, 1)
  for e in range(2, 5):
    cs = P.decide_op(cs, e, 0) if e != 3 else cs
  cs = P.decide_topology(cs, steps, 0, jnp.zeros((E,), bool).at[jnp.asarray([2, 4])].set(True))
  W = np.asarray(P.masked_cell(base_w, cs))
  np.testing.assert_array_equal(W[0], np.eye(O)[1])
  np.testing.assert_array_equal(W[3], np.zeros(O))           # decided (op 2), then removed
  np.testing.assert_array_equal(W[2], np.eye(O)[0])
  np.testing.assert_array_equal(W[4], np.eye(O)[0])
  np.testing.assert_array_equal(W[[1, 5, 6, 7, 8]], np.asarray(base_w)[[1, 5, 6, 7, 8]])
  assert cs.node_decided.tolist() == [True, False]
  # a removed edge's PC-DARTS edge factor is 0 too; other entries pass through
  beta = jnp.arange(1.0, E + 1)
  sel = {"normal": cs}
  out = P.masked_weights({"normal": base_w, "normal_edges": beta, "extra": 7}, sel)
  np.testing.assert_array_equal(out["normal_edges"], np.where(np.arange(E) == 3, 0.0, np.arange(1.0, E + 1)))
  assert out["extra"] == 7
  # the variants of one decision
  v = np.asarray(P.op_variants(jnp.asarray(W), 5))
  assert v.shape == (O, E, O)
  for k in range(O):
    expect = W.copy()
    expect[5, k] = 0.0
    np.testing.assert_array_equal(v[k], expect)
  v = np.asarray(P.edge_variants(jnp.asarray(W), [5, 7]))
  assert (v[0, 5] == 0).all() and (v[1, 7] == 0).all() and np.array_equal(v[0, 7], W[7])


# -------------------------------------------------------------------------- the real driver
@pytest.fixture(scope="module")
def tiny(fast_compile):
  cfg = config_for(METHODS["darts"], "paper", C=4, layers=3, steps=2, primitives=OPS, batch_size=16,
                   conv_impl="xla", order="first")
  method = METHODS["darts"](cfg, 4).stage(0, None).method
  state = lean_jit(jax.vmap(method.init))(_keys(0, 1))
  ds = D.load_digits(size=8, channels=3)
  w_split = D.Split(ds.train.images[:128], ds.train.labels[:128].astype(np.int32))
  a_split = D.Split(ds.train.images[128:256], ds.train.labels[128:256].astype(np.int32))
  return cfg, method, state, w_split, a_split, ds


def test_driver_two_programs_genotype_and_resume(tiny):
  cfg, method, state, w_split, a_split, ds = tiny
  pt = P.PTConfig(proj_intv=1, batch_size=16, eval_batch_size=32, eval_images=64, tune_steps_per_epoch=2)
  kw = dict(a_tx=method.a_tx, mean=ds.mean, std=ds.std)
  before = dict(P.TRACES)
  saved = {}
  res = P.project(method, state, w_split, a_split, pt, checkpoint=lambda pos, payload: saved.update({pos: payload}),
                  **kw)
  # 5 op decisions and 1 topology decision per cell type, each followed by tuning, in 2 programs
  assert {k: P.TRACES[k] - before[k] for k in before} == {"eval": 1, "tune": 1}
  events = P.schedule(2, 1)
  assert [k for k, _ in events] == ["op"] * 5 + ["topology"]
  assert sorted(saved) == list(range(1, 2 * len(events) + 1))
  template = P.payload_template(state, method.net, pt)
  for k in ("state", "selection"):
    assert jax.tree.structure(template[k]) == jax.tree.structure(saved[5][k])
    assert [a.shape for a in jax.tree.leaves(template[k])] == [a.shape for a in jax.tree.leaves(saved[5][k])]
  for s, g in enumerate(res.genotypes):
    assert isinstance(g, jnas.Genotype)
    g.validate()
    assert g.ops() <= set(OPS)
    for t, cell in (("normal", g.normal), ("reduce", g.reduce)):
      cs = jax.tree.map(lambda a: a[s], res.selection[t])
      assert cs.op_decided.all() and cs.node_decided.all() and cs.removed.sum() == 1
      rows = {space.edge_index(i, k // 2) for k, (_, i) in enumerate(cell)}
      assert rows == set(np.flatnonzero(~cs.removed).tolist())
      assert [op for op, _ in cell] == [OPS[cs.onehot[space.edge_index(i, k // 2)].argmax()]
                                        for k, (_, i) in enumerate(cell)]
  assert np.asarray(res.state.tune_step).tolist() == [12, 12] and np.asarray(res.state.alive).all()
  assert not np.allclose(res.state.arch["normal"], state.arch["normal"])  # DARTS-PT trains alpha
  tunes = [r for r in res.history[0] if "tune_epoch" in r]
  assert len(tunes) == 6 and all(np.isfinite(r["train_loss"]) for r in tunes)
  # resuming after the third decision (before its tuning) gives the same run, same programs
  resumed = P.project(method, state, w_split, a_split, pt, restore=saved[5], **kw)
  assert {k: P.TRACES[k] - before[k] for k in before} == {"eval": 1, "tune": 1}
  assert [str(g) for g in resumed.genotypes] == [str(g) for g in res.genotypes]
  for a, b in zip(jax.tree.leaves(resumed.selection), jax.tree.leaves(res.selection)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(resumed.state.arch["normal"], res.state.arch["normal"], rtol=1e-5, atol=1e-6)


def test_run_search_projection_files_and_resume(tiny, tmp_path):
  """``run_search(selection='pt')``'s driver (``run._project``): checkpoints and records in the run
  directory, and a run resumed from its next-to-last checkpoint ends with the same genotypes (the
  programs are the cached ones of the test above: the same method and optimiser)."""
  from jnas.rundir import RunDir
  from jnas.search import run
  cfg, method, state, w_split, a_split, ds = tiny
  pt = P.PTConfig(proj_intv=1, batch_size=16, eval_batch_size=32, eval_images=64, tune_steps_per_epoch=2)
  host = {s: jax.tree.map(lambda a: a[s], jax.device_get(state)) for s in (0, 1)}
  host = {s: st._replace(key=state.key[s]) for s, st in host.items()}
  rd = RunDir(str(tmp_path / "run"), {"test": 1})
  args = ([[0, 1]], host, {0: method, 1: method}, w_split, a_split, pt, ds.mean, ds.std, rd, True, None)
  before = dict(P.TRACES)
  first = run._project(*args)
  assert {k: P.TRACES[k] - before[k] for k in before} == {"eval": 0, "tune": 0}
  direct = P.project(method, state, w_split, a_split, pt, a_tx=method.a_tx, mean=ds.mean, std=ds.std)
  assert [str(first[s]) for s in (0, 1)] == [str(g) for g in direct.genotypes]
  ckpts = str(tmp_path / "run" / "projection" / "0")
  last = 2 * len(P.schedule(2, 1))
  assert sorted(os.listdir(ckpts)) == sorted([str(last - 1), str(last), f"history_{last - 1}.json",
                                              f"history_{last}.json"])
  with open(tmp_path / "run" / "projection_0.jsonl") as f:
    recs = [json.loads(line) for line in f]
  assert {r["seed"] for r in recs} == {0, 1} and sum("tune_epoch" in r for r in recs) == 2 * len(P.schedule(2, 1))
  shutil.rmtree(os.path.join(ckpts, str(last)))  # as if stopped during the last tuning
  os.remove(os.path.join(ckpts, f"history_{last}.json"))
  again = run._project(*args)
  assert [str(again[s]) for s in (0, 1)] == [str(first[s]) for s in (0, 1)]
