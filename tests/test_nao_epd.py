"""NAO's encoder-predictor-decoder (jnas.search.nao_epd): the sequence encoding, branch swaps, the
optimiser, and one small trained EPD (B = 2, hidden 32) that must fit a planted score, climb it by the
embedding step and reconstruct its training sequences. The compiled functions (one training epoch,
``predict`` and ``infer_details`` on 100 rows) are shared through module-scoped fixtures."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import kendalltau

from jnas.search import nao_epd as nao

B, K = 2, 5
CFG = nao.EPDConfig.for_space(B, K, encoder_emb=16, encoder_hidden=32, decoder_hidden=32, mlp_layers=2,
                              mlp_hidden=64, batch_size=50, trade_off=0.2, lr=1e-2, epochs=100, expand=2)
N_ROWS = 100  # every predict/infer call below uses 100 rows: one compilation each


def random_arcs(rng, n, b=B, num_ops=K):
  j = np.arange(b).reshape(1, 1, b, 1)
  inputs = np.floor(rng.random((n, 2, b, 2)) * (j + 2)).astype(np.int32)
  return {"inputs": inputs, "ops": rng.integers(0, num_ops, (n, 2, b, 2)).astype(np.int32)}


def planted(arcs):
  """The planted score: fraction of the 4B branches whose op is 0."""
  return (np.asarray(arcs["ops"]) == 0).mean(axis=(-3, -2, -1))


def seq_planted(seqs):
  return planted(nao.seq_to_arc(np.asarray(seqs), B, K))


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  train, test = random_arcs(rng, 200), random_arcs(rng, N_ROWS)
  return {"train": np.asarray(nao.arc_to_seq(train)), "test": np.asarray(nao.arc_to_seq(test)),
          "y_train": nao.minmax_normalize(planted(train)), "test_score": planted(test)}


@pytest.fixture(scope="module")
def trained(data):
  params0 = nao.init_params(jax.random.PRNGKey(0), CFG)
  seqs, ys = nao.expand(jax.random.PRNGKey(1), data["train"], data["y_train"], CFG.expand, B)
  params, _, hist = nao.fit(params0, seqs, ys, jax.random.PRNGKey(2), config=CFG)
  return {"params0": params0, "params": params, "hist": hist}


# ----------------------------------------------------------------------------- encoding


def test_config_defaults_and_validation():
  c = nao.EPDConfig()
  assert (c.encoder_emb, c.encoder_hidden, c.decoder_hidden, c.mlp_layers, c.mlp_hidden) == (48, 96, 96, 3, 200)
  assert (c.mlp_dropout, c.init_range, c.lr, c.weight_decay) == (0.1, 0.04, 1e-3, 1e-4)
  assert (c.batch_size, c.grad_clip) == (100, 5.0)
  assert (c.epochs, c.trade_off, c.B, c.num_ops, c.expand) == (1000, 0.8, 5, 5, 8)
  assert (c.source_length, c.encoder_length, c.decoder_length, c.vocab_size) == (40, 20, 40, 12)
  bad = [dict(source_length=36), dict(encoder_length=15), dict(encoder_hidden=64), dict(decoder_hidden=64),
         dict(decoder_length=20), dict(decoder_layers=2), dict(trade_off=1.5), dict(mlp_dropout=1.0),
         dict(batch_size=0), dict(lr=0.0), dict(mlp_layers=-1)]
  c3 = nao.EPDConfig.for_space(3)
  assert (c3.source_length, c3.encoder_length, c3.decoder_length, c3.vocab_size) == (24, 12, 24, 10)
  for kw in bad:
    with pytest.raises(ValueError):
      nao.EPDConfig(**kw)


def test_seq_roundtrip_tokens_and_errors():
  rng = np.random.default_rng(1)
  for b in (2, 5):
    arcs = random_arcs(rng, 64, b)
    seqs = np.asarray(nao.arc_to_seq(arcs, num_ops=K))
    assert seqs.shape == (64, 8 * b) and seqs.dtype == np.int32
    back = nao.seq_to_arc(seqs, b, K)
    np.testing.assert_array_equal(back["inputs"], arcs["inputs"])
    np.testing.assert_array_equal(back["ops"], arcs["ops"])
    idx, op = seqs[:, 0::2], seqs[:, 1::2]
    assert idx.min() >= 1 and idx.max() <= b + 1
    assert op.min() >= b + 2 and op.max() <= b + 1 + K
    assert np.asarray(nao.valid_seqs(seqs, b, K)).all()
    single = {k: v[0] for k, v in arcs.items()}  # unbatched and under jit
    np.testing.assert_array_equal(jax.jit(nao.arc_to_seq)(single), seqs[0])

  # NAO's layout at B = 5: node [p1, op1, p2, op2] -> [p1 + 1, op1 + 7, p2 + 1, op2 + 7].
  arc = {"inputs": np.zeros((2, 5, 2), np.int32), "ops": np.zeros((2, 5, 2), np.int32)}
  arc["inputs"][0, 0] = (0, 1)
  arc["ops"][0, 0] = (1, 4)
  arc["inputs"][1, 4] = (5, 3)
  arc["ops"][1, 4] = (2, 0)
  seq = np.asarray(nao.arc_to_seq(arc))
  assert seq[:4].tolist() == [1, 8, 2, 11] and seq[-4:].tolist() == [6, 9, 4, 7]
  assert nao.vocab_size(5, 5) == 12 and nao.seq_length(5) == 40

  good = seqs[0].copy()
  # node 0 reading state 3, SOS, an index token at an op slot, an op id past num_ops, an op token at an index slot
  for pos, tok in [(0, 4), (2, 0), (1, 3), (1, b + 2 + K), (0, b + 3)]:
    s = good.copy()
    s[pos] = tok
    with pytest.raises(ValueError, match="malformed"):
      nao.seq_to_arc(s, b, K)
  with pytest.raises(ValueError):
    nao.seq_to_arc(good[:-1], b, K)
  with pytest.raises(ValueError):
    nao.arc_to_seq({"inputs": np.full((2, 5, 2), 2), "ops": np.zeros((2, 5, 2), np.int32)})  # node 0 reads state 2


def test_allowed_tokens_is_nao_decode_rule():
  m = nao.allowed_tokens(5, 5)
  assert m.shape == (40, 12)
  for s in range(40):
    allowed = np.flatnonzero(m[s]).tolist()
    if s % 2:
      assert allowed == list(range(7, 12))
    else:
      assert allowed == list(range(1, (s // 2 % 10) // 2 + 3))  # decoder.py: [1, step // 2 % 10 // 2 + 3)
  # every valid sequence is decodable: its tokens are allowed at their positions
  rng = np.random.default_rng(2)
  seqs = np.asarray(nao.arc_to_seq(random_arcs(rng, 50, 5)))
  assert m[np.arange(40)[None, :], seqs].all()


def test_swap_keeps_architecture():
  rng = np.random.default_rng(3)
  arcs = random_arcs(rng, 200)
  key = jax.random.PRNGKey(4)
  sw = nao.swap_branches(key, arcs)
  inp, op, inp2, op2 = (np.asarray(a) for a in (arcs["inputs"], arcs["ops"], sw["inputs"], sw["ops"]))
  pairs = lambda i, o: np.sort(i * 100 + o, axis=-1)  # the multiset of (input, op) branches of a node
  np.testing.assert_array_equal(pairs(inp, op), pairs(inp2, op2))
  changed_nodes = ((inp != inp2) | (op != op2)).any(-1).sum(-1)  # (N, 2): nodes changed per cell
  assert changed_nodes.max() <= 1
  seqs = np.asarray(nao.arc_to_seq(arcs))
  swapped = np.asarray(nao.swap_seqs(key, seqs, B))
  np.testing.assert_array_equal(swapped, np.asarray(nao.arc_to_seq(sw)))
  assert (swapped != seqs).any(1).mean() > 0.5

  y = np.linspace(0, 1, 200).astype(np.float32)
  xs, ys = nao.expand(jax.random.PRNGKey(5), seqs, y, 3, B)
  assert xs.shape == (600, 8 * B) and ys.shape == (600,)
  np.testing.assert_array_equal(xs[:200], seqs)
  np.testing.assert_array_equal(ys, np.tile(y, 3))
  back = nao.seq_to_arc(np.asarray(xs), B, K)
  for c in range(3):
    sl = slice(200 * c, 200 * (c + 1))
    np.testing.assert_array_equal(pairs(np.asarray(back["inputs"][sl]), np.asarray(back["ops"][sl])), pairs(inp, op))
  (tr, ytr), (va, yva) = nao.train_valid_split(jax.random.PRNGKey(6), seqs, y)
  assert len(tr) == 180 and len(va) == 20 and set(ytr.tolist()) | set(yva.tolist()) == set(y.tolist())


def test_minmax_and_pairwise_accuracy():
  np.testing.assert_allclose(nao.minmax_normalize([0.2, 0.6, 0.4]), [0.0, 1.0, 0.5], atol=1e-6)
  np.testing.assert_array_equal(nao.minmax_normalize([0.3, 0.3]), [0.0, 0.0])
  assert nao.pairwise_accuracy([1, 2, 3], [10, 20, 30]) == 1.0
  assert nao.pairwise_accuracy([1, 2, 3], [30, 20, 10]) == 0.0


def test_optimizer_is_coupled_adam_after_clipping():
  cfg = nao.EPDConfig(lr=0.1, weight_decay=0.5, grad_clip=1.0)
  tx = nao.make_optimizer(cfg)
  p = {"w": jnp.array([1.0, -2.0])}
  g = {"w": jnp.array([3.0, 4.0])}  # norm 5 -> clipped to (0.6, 0.8), then + 0.5 p = (1.1, -0.2)
  upd, _ = tx.update(g, tx.init(p), p)
  ref_tx = optax.adam(0.1)
  ref, _ = ref_tx.update({"w": jnp.array([1.1, -0.2])}, ref_tx.init(p), p)
  np.testing.assert_allclose(upd["w"], ref["w"], rtol=1e-6)


def test_train_step_and_init_shapes():
  """Traced only (no compilation): the step keeps the parameter and optimiser structures; init ranges."""
  params = nao.init_params(jax.random.PRNGKey(8), CFG)
  big = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
  assert all(float(jnp.abs(x).max()) <= CFG.init_range for x in big)
  state = nao.init_opt_state(params, CFG)
  batch = {"seqs": jnp.zeros((7, 8 * B), jnp.int32) + 1, "targets": jnp.zeros((7,))}
  p2, s2, m = jax.eval_shape(functools.partial(nao.train_step, config=CFG), params, state, batch,
                             jax.random.PRNGKey(9))
  assert jax.tree.structure(p2) == jax.tree.structure(params)
  assert jax.tree.structure(s2) == jax.tree.structure(state)
  assert set(m) == {"loss", "mse", "nll"} and m["loss"].shape == ()
  # the jitted entry points compose inside a caller's jit
  f = jax.eval_shape(jax.jit(lambda p, s: nao.infer(p, s, 1.0, CFG)), params, batch["seqs"])
  assert f.shape == (7, 8 * B) and f.dtype == jnp.int32


# ----------------------------------------------------------------------------- trained EPD


def test_training_reduces_loss(trained):
  h = trained["hist"]
  assert h["loss"].shape == (CFG.epochs,)
  assert h["loss"][-1] < 0.2 * h["loss"][0]
  assert np.isfinite(h["loss"]).all()


def test_predictor_fits_planted_score(data, trained):
  tau0 = kendalltau(np.asarray(nao.predict(trained["params0"], data["test"], CFG)), data["test_score"])[0]
  tau = kendalltau(np.asarray(nao.predict(trained["params"], data["test"], CFG)), data["test_score"])[0]
  assert abs(tau0) < 0.6, tau0
  assert tau > 0.75, tau


def test_gradient_step_climbs_prediction_and_planted_score(data, trained):
  seeds = data["test"]
  out = nao.infer_details(trained["params"], seeds, jnp.float32(5.0), CFG)
  f, f_new = np.asarray(out["f"]), np.asarray(out["f_new"])
  assert (f_new > f).mean() > 0.9
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out["e_new"]), axis=-1), 1.0, rtol=1e-5)
  new = np.asarray(out["seqs"])
  assert np.asarray(nao.valid_seqs(new, B, K)).all()  # indices within their node's range, ops at op slots
  assert seq_planted(new).mean() > data["test_score"].mean() + 0.1
  np.testing.assert_allclose(f, np.asarray(nao.predict(trained["params"], seeds, CFG)), rtol=1e-5, atol=1e-6)


def test_decoder_reconstructs_training_sequences(data, trained):
  seqs = data["train"][:N_ROWS]
  rec = np.asarray(nao.infer(trained["params"], seqs, 0.0, CFG))
  assert (rec == seqs).all(1).mean() > 0.5
  ev = nao.evaluate(trained["params"], seqs, data["y_train"][:N_ROWS], CFG)
  assert ev["hamming"] < 2.0 and ev["pairwise_accuracy"] > 0.8


def test_generate_new_distinct_better_archs(data, trained):
  existing = np.concatenate([data["train"], data["test"]])
  new = nao.generate(trained["params"], data["test"], existing, 30, config=CFG, key=jax.random.PRNGKey(7))
  assert new.shape == (30, 8 * B)
  rows = {tuple(r) for r in new.tolist()}
  assert len(rows) == 30 and not rows & {tuple(r) for r in existing.tolist()}
  assert np.asarray(nao.valid_seqs(new, B, K)).all()
  assert seq_planted(new).mean() > data["test_score"].mean()
  # too many asked: stops after the eta = max_step + 1 round, at most that many rounds of 100
  few = nao.generate(trained["params"], data["test"], existing, 10_000, max_step=1, config=CFG)
  assert 0 < len(few) <= 2 * N_ROWS
