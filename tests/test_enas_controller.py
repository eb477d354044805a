"""ENAS micro controller (jnas.search.enas_controller): arcs, the sampler's distribution, REINFORCE,
the baseline and a planted-op training run.

Compilation dominates the run time, so each config's programs are compiled once (module fixtures)
with LLVM's expensive passes off (``compile_options.LEAN``)."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnas import compile_options
from jnas.search import enas_controller as ec

UPSTREAM = "0 2 0 0 0 4 0 1 0 4 1 1 1 0 0 1 0 2 1 1 1 0 1 0 0 3 0 2 1 1 3 1 1 0 0 4 0 3 1 1"

SMALL = ec.ControllerConfig(lstm_size=8)
TINY1 = ec.ControllerConfig(lstm_size=8, lstm_num_layers=2, num_nodes=1, num_ops=2, temperature=1.5,
                            b_soft_init=(0.7, -0.4), normal_op_bias=(0.25, -0.25))
TINY2 = ec.ControllerConfig(lstm_size=8, num_nodes=2, num_ops=1, b_soft_init=(0.0,), normal_op_bias=(0.0,))
# One config for REINFORCE, the baseline and the planted op (one set of compiled programs): an
# unbiased learnable op bias and a wider tanh bound (C / r = 2.5). With NB's b_soft_init
# [10, 10, 0, 0, 0] and (1.1 / 2.5) tanh, ops 0/1 sit at the upper bound with a vanishing
# gradient, so no parameters give op 3 more than 0.26 of a step's mass.
TRAIN = ec.ControllerConfig(lstm_size=8, num_nodes=2, tanh_constant=2.5, op_tanh_reduce=1.0,
                            temperature=1.5, lr=0.05, train_steps=2, num_aggregate=4,
                            b_soft_init=(0.0,) * 5)
_ADAM = optax.adam(TRAIN.lr, b1=0.0, b2=0.999, eps=1e-3)  # the hand-built optimiser for TRAIN

# Everything jax runs is jitted once per config (eager ops compile one small program per op and
# shape) with LLVM's expensive passes off; keys are raw uint32 pairs made by numpy.
jit = functools.partial(jax.jit, compiler_options=dict(compile_options.LEAN))


def _keys(seed, *shape):
  return np.random.default_rng(seed).integers(0, 2 ** 32, (*shape, 2), dtype=np.uint32)


@functools.lru_cache(maxsize=None)
def _init_fn(cfg):
  return jit(lambda k: ec.init_params(k, cfg))


def _init(cfg, seed):
  return jax.device_get(_init_fn(cfg)(_keys(seed)))


def _batched(cfg):
  sample = jit(jax.vmap(lambda p, k: ec.sample(p, k, cfg), in_axes=(None, 0)))
  logp = jit(jax.vmap(lambda p, a: ec.log_prob(p, a, cfg), in_axes=(None, 0)))
  return sample, logp


def _all_arcs(num_nodes, num_ops):
  per_node = [list(itertools.product(range(j + 2), range(j + 2), range(num_ops), range(num_ops)))
              for j in range(num_nodes)]
  cells = list(itertools.product(*per_node))
  dec = np.asarray([(n, r) for n in cells for r in cells], np.int32)  # (A, 2, B, 4)
  return {"inputs": dec[..., :2], "ops": dec[..., 2:]}


def _rows(arcs):
  a = np.concatenate([np.asarray(arcs["inputs"]), np.asarray(arcs["ops"])], -1)
  return a.reshape(a.shape[0], -1)


@pytest.fixture(scope="module")
def small():
  params = _init(SMALL, 0)
  sample, logp = _batched(SMALL)
  arcs, lps, ents = jax.device_get(sample(params, _keys(1, 1000)))
  return params, logp, arcs, lps, ents


def _planted(arc, key):
  """The fraction of the arc's ops that are op 3 (plus a little key-dependent noise)."""
  return jnp.mean(arc["ops"] == 3) + 0.01 * jax.random.uniform(key)


def _adam_step(g, s, p):
  u, s = _ADAM.update(g, s, p)
  return optax.apply_updates(p, u), s


@pytest.fixture(scope="module")
def fns():
  cfg = TRAIN
  vtrain = jax.vmap(functools.partial(ec.train_controller, reward_fn=_planted, config=cfg))
  return {
    "sample": jit(lambda p, k: ec.sample(p, k, cfg)),
    "logp": jit(lambda p, a: ec.log_prob(p, a, cfg)[0]),
    "grad": jit(jax.grad(lambda p, a, r, b: ec.reinforce_loss(p, a, r, b, cfg))),
    "train": jit(vtrain),  # over seeds
    "init": jit(jax.vmap(lambda k: ec.init_train_state(k, cfg))),
    "draw": jit(jax.vmap(jax.vmap(lambda p, k: ec.sample(p, k, cfg)[0], in_axes=(None, 0)))),
    "reward_fn": jit(_planted),
    "adam": jit(_adam_step),
    "split": jit(lambda k: jax.random.split(k, 2 * cfg.num_aggregate)),
    "split_steps": jit(lambda k: jax.random.split(k, cfg.train_steps)),
  }


def _seed(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


# --- 1. arcs ---------------------------------------------------------------------------------


def test_sampled_arcs_valid(small):
  _, _, arcs, _, _ = small
  inputs, ops = np.asarray(arcs["inputs"]), np.asarray(arcs["ops"])
  assert inputs.shape == ops.shape == (1000, 2, 5, 2) and inputs.dtype == ops.dtype == np.int32
  for c in range(2):
    for j in range(5):
      for k in range(2):
        seen = np.unique(inputs[:, c, j, k])
        assert seen.tolist() == list(range(j + 2)), (c, j, k, seen)  # all allowed, none beyond
  assert np.unique(ops).tolist() == [0, 1, 2, 3, 4]
  for a in range(0, 1000, 97):
    arc = {"inputs": inputs[a], "ops": ops[a]}
    back = ec.arc_from_string(ec.arc_to_string(arc))
    np.testing.assert_array_equal(back["inputs"], inputs[a])
    np.testing.assert_array_equal(back["ops"], ops[a])


def test_arc_string_round_trip():
  arc = ec.arc_from_string(UPSTREAM)
  assert arc["inputs"].shape == arc["ops"].shape == (2, 5, 2) and arc["inputs"].dtype == np.int32
  assert ec.arc_to_string(arc) == UPSTREAM
  # Normal node 0 is "0 2 0 0"; reduce node 2 is "1 1 3 1".
  assert arc["inputs"][0, 0].tolist() == [0, 0] and arc["ops"][0, 0].tolist() == [2, 0]
  assert arc["inputs"][1, 2].tolist() == [1, 3] and arc["ops"][1, 2].tolist() == [1, 1]
  assert ec.arc_to_string(ec.arc_from_string("0 1 1 0\n 1 0 0 1", num_nodes=1, num_ops=2)) == "0 1 1 0 1 0 0 1"


def _with_token(i, tok):
  t = UPSTREAM.split()
  t[i] = tok
  return " ".join(t)


@pytest.mark.parametrize("text, match", [
  (UPSTREAM + " 0", "40 integers"),
  (" ".join(UPSTREAM.split()[:-1]), "40 integers"),
  ("", "40 integers"),
  (_with_token(5, "x"), "non-integer token 'x'"),
  (_with_token(20, "|"), "non-integer token '|'"),
  (_with_token(3, "1.0"), "non-integer"),
  (_with_token(0, "2"), r"inputs\[0, 0, 0\] = 2 out of range 0..1"),
  (_with_token(22, "3"), r"inputs\[1, 0, 1\] = 3 out of range 0..1"),
  (_with_token(1, "5"), r"ops\[0, 0, 0\] = 5 out of range 0..4"),
  (_with_token(0, "-1"), "out of range"),
])
def test_malformed_strings_raise(text, match):
  with pytest.raises(ValueError, match=match):
    ec.arc_from_string(text)


def test_bad_arcs_and_configs_raise():
  with pytest.raises(ValueError, match="shape"):
    ec.arc_to_string({"inputs": np.zeros((2, 5), np.int32), "ops": np.zeros((2, 5), np.int32)})
  with pytest.raises(ValueError, match="keys"):
    ec.arc_to_string({"inputs": np.zeros((2, 5, 2), np.int32)})
  with pytest.raises(ValueError, match="num_ops=3 entries"):
    ec.ControllerConfig(num_ops=3)
  for kw in ({"lstm_size": 0}, {"num_nodes": 2.0}, {"tanh_constant": 0.0}, {"temperature": -1.0},
             {"bl_dec": 1.5}, {"adam_b1": 1.0}, {"lr": 0}, {"entropy_weight": -1e-4},
             {"train_steps": True}, {"b_soft_init": "abcde"}, {"init_range": float("nan")}):
    with pytest.raises(ValueError):
      ec.ControllerConfig(**kw)
  assert ec.ControllerConfig(normal_op_bias=[0.0] * 5).normal_op_bias == (0.0,) * 5  # hashable
  cfg = ec.ControllerConfig()
  assert (cfg.lstm_size, cfg.lstm_num_layers, cfg.num_nodes, cfg.num_ops) == (64, 1, 5, 5)
  assert (cfg.tanh_constant, cfg.op_tanh_reduce, cfg.temperature) == (1.10, 2.5, None)
  assert (cfg.entropy_weight, cfg.bl_dec, cfg.lr, cfg.adam_b1, cfg.adam_eps) == (1e-4, 0.99, 0.0035, 0.0, 1e-3)
  assert (cfg.train_steps, cfg.num_aggregate, cfg.init_range) == (30, 10, 0.1)
  assert cfg.b_soft_init == (10, 10, 0, 0, 0) and cfg.normal_op_bias == (0.25, 0.25, -0.25, -0.25, -0.25)


def test_init_params(small):
  params = small[0]
  shapes = {"w_lstm": (1, 16, 32), "g_emb": (8,), "w_emb": (5, 8), "w_soft": (8, 5), "b_soft": (5,),
            "w_attn_1": (8, 8), "w_attn_2": (8, 8), "v_attn": (8,)}
  assert {k: v.shape for k, v in params.items()} == shapes
  np.testing.assert_array_equal(params["b_soft"], [10, 10, 0, 0, 0])
  flat = np.concatenate([v.reshape(-1) for k, v in params.items() if k != "b_soft"])
  assert np.max(np.abs(flat)) <= 0.1 and abs(np.std(flat) - 0.2 / np.sqrt(12)) < 0.005  # U[-0.1, 0.1]
  two = _init(TINY1, 0)["w_lstm"]
  assert two.shape == (2, 16, 32) and not np.allclose(two[0], two[1])


# --- 2. the distribution ---------------------------------------------------------------------


def test_sample_log_prob_matches_teacher_forced(small):
  params, logp, arcs, lps, ents = small
  lp2, ent2 = logp(params, arcs)
  np.testing.assert_allclose(lps, lp2, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(ents, ent2, rtol=1e-6, atol=1e-5)
  assert np.all(lps < 0) and np.all(ents > 0)
  assert len(np.unique(_rows(arcs), axis=0)) > 990  # different keys, different arcs


def _sharpen(params):
  return {k: (v if k == "b_soft" else 8.0 * v) for k, v in params.items()}  # less uniform logits


def test_log_prob_is_a_distribution_and_sampled_by_it():
  """1 node, 2 ops, 2 LSTM layers: 256 arcs; their probabilities sum to 1 and the sampler's
  frequencies follow them."""
  cfg = TINY1
  params = _sharpen(_init(cfg, 3))
  arcs = _all_arcs(1, 2)
  sample, logp = _batched(cfg)
  lps = np.asarray(logp(params, arcs)[0], np.float64)
  assert lps.shape == (256,)
  assert abs(np.log(np.sum(np.exp(lps)))) < 2e-5
  assert np.ptp(lps) > 1.0
  probs = np.exp(lps)
  s_arcs, s_lps, _ = jax.device_get(sample(params, _keys(4, 4000)))
  dec, table = _rows(s_arcs), _rows(arcs)
  for d in range(8):  # every decision's marginal, 4000 draws (sd <= 0.008)
    exact = probs[table[:, d] == 1].sum()
    assert abs(np.mean(dec[:, d] == 1) - exact) < 0.035, (d, exact)
  idx = np.argmax(np.all(dec[:, None, :] == table[None], -1), axis=1)  # each draw's arc
  np.testing.assert_allclose(s_lps, lps[idx], rtol=1e-5, atol=1e-5)


def test_log_prob_is_a_distribution_masked_index():
  """2 nodes, 1 op: node 1 picks from 3 states (slots 3.. masked); 36^2 = 1296 arcs."""
  cfg = TINY2
  params = _sharpen(_init(cfg, 5))
  _, logp = _batched(cfg)
  lps = np.asarray(logp(params, _all_arcs(2, 1))[0], np.float64)
  assert lps.shape == (1296,)
  assert abs(np.log(np.sum(np.exp(lps)))) < 2e-5
  assert np.ptp(lps) > 0.5


# --- 3. REINFORCE ----------------------------------------------------------------------------


@pytest.mark.parametrize("r, b", [(1.0, 0.3), (0.2, 0.6)])
def test_reinforce_gradient_closed_form(fns, r, b):
  """w_soft = 0 makes every op logit z = k tanh(b_soft / T) (+ b_nl in the normal cell), so
  dL/db_soft = -(R - b) sum_steps (onehot(a) - softmax(z)) (k / T)(1 - tanh^2(b_soft / T))."""
  cfg = TRAIN
  bs = np.asarray([0.9, -1.3, 2.1, 0.4, -0.2], np.float32)
  params = dict(_init(cfg, 6), b_soft=bs)
  params["w_soft"] = np.zeros_like(params["w_soft"])
  arc, _, _ = jax.device_get(fns["sample"](params, _keys(7)))
  g = np.asarray(fns["grad"](params, arc, r, b)["b_soft"])
  k, t = cfg.tanh_constant / cfg.op_tanh_reduce, cfg.temperature
  zr = k * np.tanh(bs / t)
  want = np.zeros(5)
  for c, bias in ((0, np.asarray(cfg.normal_op_bias)), (1, np.zeros(5))):
    p = np.exp(zr + bias) / np.exp(zr + bias).sum()
    for a in arc["ops"][c].reshape(-1):
      want += np.eye(5)[a] - p
  want *= -(r - b) * (k / t) * (1 - np.tanh(bs / t) ** 2)
  assert np.max(np.abs(want)) > 1e-2
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


def test_log_prob_gradient_finite_difference(fns):
  params = dict(_init(TRAIN, 8), b_soft=np.asarray([0.5, -0.2, 0.1, 0.3, -0.4], np.float32))
  arc, lp, _ = jax.device_get(fns["sample"](params, _keys(9)))
  # d log pi = -dL at R - b = 1; a central difference along a random direction.
  g = jax.device_get(fns["grad"](params, arc, 1.0, 0.0))
  rng = np.random.default_rng(0)
  dirs = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
  eps = 1e-2
  f = lambda s: float(fns["logp"]({k: v + s * eps * dirs[k] for k, v in params.items()}, arc))
  assert f(0.0) == pytest.approx(float(lp), rel=1e-6)
  fd = (f(1.0) - f(-1.0)) / (2 * eps)
  an = -sum(float(np.vdot(g[k], dirs[k])) for k in params)
  assert abs(an) > 0.1
  np.testing.assert_allclose(fd, an, rtol=2e-2)


def test_reward_and_optimizer():
  cfg = ec.ControllerConfig()
  assert float(ec.reward(0.5, 20.0, cfg)) == pytest.approx(0.5 + 1e-4 * 20.0)
  assert float(ec.reward(0.5, 20.0, dataclasses.replace(cfg, entropy_weight=None))) == 0.5
  # Adam(b1 = 0): the first update is -lr g / (|g| + eps) elementwise.
  opt = ec.controller_optimizer(cfg)
  g = {"w": np.asarray([2e-3, -1.0], np.float32)}
  upd = np.asarray(jit(lambda g: opt.update(g, opt.init(g))[0])(g)["w"])
  np.testing.assert_allclose(upd, -cfg.lr * g["w"] / (np.abs(g["w"]) + 1e-3), rtol=1e-5)


# --- 4. the baseline -------------------------------------------------------------------------


def test_update_baseline_hand_formula():
  b, want = 0.0, 0.0
  for r in (0.5, 0.7, 0.2, 0.9):
    b = ec.update_baseline(b, r, 0.99)
    want = want - 0.01 * (want - r)
    assert b == pytest.approx(want)
  assert want == pytest.approx(0.01 * (0.99 ** 3 * 0.5 + 0.99 ** 2 * 0.7 + 0.99 * 0.2 + 0.9))
  assert ec.update_baseline(0.3, 1.0, 1.0) == 0.3  # bl_dec 1: frozen
  assert ec.update_baseline(0.3, 1.0, 0.0) == 1.0  # bl_dec 0: the last reward


def test_train_controller_by_hand(fns):
  """Each update = Adam on the mean of -(R_k - b_k) grad log pi(arc_k) over num_aggregate
  samples drawn with the same parameters, each b_k moved (by its own R_k) before its loss;
  checked on seed 0 of the vmapped program."""
  cfg = TRAIN
  params, opt_state, b0 = jax.device_get(fns["init"](_keys(10, 2)))
  np.testing.assert_array_equal(b0, 0.0)
  keys = _keys(11, 2)
  new_p, _, new_b, m = jax.device_get(fns["train"](params, opt_state, np.asarray([0.25, 0.5], np.float32), keys))
  p, s, b = _seed(params, 0), _seed(opt_state, 0), 0.25  # Adam's initial state: no settings in it
  rs, accs, ents = [], [], []
  for k_step in jax.device_get(fns["split_steps"](keys[0])):
    sub = jax.device_get(fns["split"](k_step))
    grads = []
    for k_arc, k_rew in zip(sub[0::2], sub[1::2]):
      arc, _, ent = fns["sample"](p, k_arc)
      acc = float(fns["reward_fn"](arc, k_rew))
      r = acc + 1e-4 * float(ent)
      b = b - (1 - cfg.bl_dec) * (b - r)
      rs.append(r), accs.append(acc), ents.append(float(ent))
      grads.append(jax.device_get(fns["grad"](p, arc, r, b)))
    mean_g = {n: sum(g[n] for g in grads) / len(grads) for n in p}
    p, s = fns["adam"](mean_g, s, p)
  assert len(set(rs)) == 8
  for name in p:
    np.testing.assert_allclose(new_p[name][0], p[name], rtol=1e-5, atol=1e-6, err_msg=name)
  assert max(float(np.max(np.abs(new_p[n][0] - params[n][0]))) for n in p) > 1e-2
  assert float(new_b[0]) == pytest.approx(b, rel=1e-6) and float(m["baseline"][0]) == float(new_b[0])
  assert float(m["reward"][0]) == pytest.approx(np.mean(rs), rel=1e-5)
  assert float(m["accuracy"][0]) == pytest.approx(np.mean(accs), rel=1e-5)
  assert float(m["entropy"][0]) == pytest.approx(np.mean(ents), rel=1e-5)


# --- 5. planted op ---------------------------------------------------------------------------


def test_planted_op_and_seed_vmap(fns):
  """reward = fraction of ops equal to op 3: 300 updates (x 4 samples) per seed, 2 seeds vmapped."""
  params, opt_state, b = fns["init"](_keys(14, 2))
  frac3 = lambda p, seed: np.mean(np.asarray(fns["draw"](p, _keys(seed, 2, 256))["ops"]) == 3, axis=(1, 2, 3, 4))
  start = frac3(params, 15)  # normal cell 0.16 (b_soft_no_learn), reduce cell 0.2
  assert np.all(np.abs(start - 0.18) < 0.06), start
  for k in _keys(16, 150, 2):  # 150 calls x train_steps 2
    params, opt_state, b, m = fns["train"](params, opt_state, b, k)
  params, b, m = jax.device_get((params, b, m))
  arcs = jax.device_get(fns["draw"](params, _keys(17, 2, 256)))
  frac = np.mean(arcs["ops"] == 3, axis=(1, 2, 3, 4))
  assert np.all(frac > 0.6), frac
  assert np.all(m["accuracy"] > 0.6) and np.all(b > 0.5)
  np.testing.assert_array_equal(m["baseline"], b)
  np.testing.assert_allclose(m["reward"], m["accuracy"] + 1e-4 * m["entropy"], rtol=1e-5)  # R = acc + w H
  # The two seeds' controllers differ and sample different arcs.
  assert not np.allclose(params["w_lstm"][0], params["w_lstm"][1])
  assert not np.array_equal(arcs["inputs"][0], arcs["inputs"][1])
