"""DARTS search: hypergradients against finite differences, seeds batched vs alone, resume, NaN.

A tiny supernet (C=4, 3 cells, 2 intermediate nodes, 4 ops, 8x8 images) keeps compile time low;
the algorithms do not depend on the size.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas.data as D
from jnas.search import darts, run

OPS = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
TINY = dict(C=4, layers=3, steps=2, primitives=OPS, batch_size=8, epochs=2)


def _f64(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _batches(key, n=8, size=8):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  train = (jax.random.normal(k1, (n, size, size, 3)), jax.random.randint(k2, (n,), 0, 10))
  val = (jax.random.normal(k3, (n, size, size, 3)), jax.random.randint(k4, (n,), 0, 10))
  return train, val


@pytest.fixture(scope="module")
def x64(fast_compile):
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def _state64(search, momentum_step=True):
  """A float64 state whose momentum buffer is nonzero (as after a first step)."""
  st = search.init(jax.random.key(0))
  st = st._replace(params=_f64(st.params), batch_stats=_f64(st.batch_stats), alphas=_f64(st.alphas),
                   w_opt=_f64(st.w_opt), a_opt=_f64(st.a_opt))
  if momentum_step:
    rng = np.random.default_rng(0)
    trace = st.w_opt[2]._replace(trace=jax.tree.map(lambda a: 0.1 * rng.normal(size=a.shape), st.params))
    st = st._replace(w_opt=(st.w_opt[0], st.w_opt[1], trace, st.w_opt[3]))
  return st


@pytest.fixture(scope="module")
def second64(x64):
  """(search, state, train, val, grad of the exact second-order objective)."""
  search = darts.DartsSearch(darts.SearchConfig(order="second", conv_impl="shift", **TINY), steps_per_epoch=4)
  st = _state64(search)
  train, val = _f64(_batches(jax.random.key(1)))
  g, _ = jax.jit(search.arch_gradient)(st, train, val)
  return search, st, train, val, g


def test_second_order_equals_finite_difference_of_unrolled_objective(second64):
  """<grad_a L_val(w'(a), a), v> against a central difference of the objective along v (float64)."""
  search, st, train, val, g = second64

  @jax.jit
  def objective(a):
    w_prime = search._virtual_step(st.params, st.batch_stats, a, st.w_opt, train)
    return search.loss(w_prime, st.batch_stats, a, val)[0]

  rng = np.random.default_rng(3)
  for _ in range(2):
    v = {k: rng.normal(size=a.shape) for k, a in st.alphas.items()}
    h = 1e-6  # the objective curves fast in alpha at this size: h = 1e-3 is off by 4%
    plus = objective(jax.tree.map(lambda a, d: a + h * d, st.alphas, v))
    minus = objective(jax.tree.map(lambda a, d: a - h * d, st.alphas, v))
    fd = (plus - minus) / (2 * h)
    analytic = sum(float(jnp.sum(g[k] * v[k])) for k in v)
    assert abs(analytic - fd) <= 1e-3 * abs(fd), (analytic, fd)


def test_finite_difference_estimate_agrees_with_exact(second64):
  """DARTS's Hessian-vector estimate converges to the exact hypergradient as eps -> 0.

  (With DARTS's eps = 0.01 / ||g_w'|| this tiny net, whose dead channels make the loss curve
  sharply in w, gives a relative error above 1: the finite difference is the approximation.)
  """
  search, st, train, val, g = second64
  cfg = darts.SearchConfig(order="second-fd", conv_impl="shift", fd_epsilon=1e-6, **TINY)
  g_fd, _ = jax.jit(darts.DartsSearch(cfg, steps_per_epoch=4).arch_gradient)(st, train, val)
  first = jax.jit(jax.grad(lambda a: search.loss(st.params, st.batch_stats, a, val)[0]))(st.alphas)
  for k in ("normal", "reduce"):
    rel = float(jnp.linalg.norm(g_fd[k] - g[k]) / jnp.linalg.norm(g[k]))
    assert rel < 1e-4, (k, rel)
    # and the second-order term matters here, so the comparison is not vacuous
    assert float(jnp.linalg.norm(g[k] - first[k]) / jnp.linalg.norm(g[k])) > 1e-2


def test_first_equals_second_at_zero_weight_lr(x64):
  cfg = dict(TINY, w_lr=0.0, w_lr_min=0.0, conv_impl="xla")
  first = darts.DartsSearch(darts.SearchConfig(order="first", **cfg), steps_per_epoch=4)
  second = darts.DartsSearch(darts.SearchConfig(order="second", **cfg), steps_per_epoch=4)
  st = _state64(first)
  train, val = _f64(_batches(jax.random.key(2)))
  both = jax.jit(lambda s: (first.arch_gradient(s, train, val)[0], second.arch_gradient(s, train, val)[0]))
  g1, g2 = both(st)
  for k in g1:
    np.testing.assert_allclose(g1[k], g2[k], rtol=1e-10, atol=1e-14)
    assert float(jnp.abs(g1[k]).max()) > 0


def test_unroll_steps_and_config_errors():
  with pytest.raises(ValueError, match="unknown order"):
    darts.SearchConfig(order="third")
  with pytest.raises(ValueError, match="unroll_steps"):
    darts.SearchConfig(order="first", unroll_steps=2)
  with pytest.raises(ValueError, match="layers"):
    darts.SearchConfig(layers=2)
  with pytest.raises(ValueError, match="alpha_init"):
    darts.SearchConfig(alpha_init="ones")


# ------------------------------------------------------------------------------------ the job
def _data():
  ds = D.load_digits(size=8, channels=3)
  w, a = D.search_split(ds.train, seed=0)
  return ds, D.Split(w.images[:32], w.labels[:32]), D.Split(a.images[:32], a.labels[:32])


CFG = darts.SearchConfig(order="first", conv_impl="xla", **TINY)


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory, fast_compile):
  ds, w, a = _data()
  out = str(tmp_path_factory.mktemp("search") / "run")
  res = run.run_search(CFG, [0, 1], w, a, out=out, quiet=True, mean=ds.mean, std=ds.std, eval_images=16)
  return out, res


def test_run_directory_is_complete(batched_run):
  out, res = batched_run
  for name in ("config.json", "metrics.jsonl", "results.json", "seed_0/genotype.json", "seed_1/alphas.npz"):
    assert os.path.exists(os.path.join(out, name)), name
  loaded = run.load_search(out)
  assert loaded["genotypes"][0] == res["genotypes"][0]
  assert len(loaded["history"]) == 2 * 2  # epochs x seeds
  rec = loaded["history"][-1]
  for k in ("epoch", "seed", "train_loss", "train_acc", "val_loss", "val_acc", "eval_acc", "lr", "time", "genotype"):
    assert k in rec, k
  assert rec["lr"] == pytest.approx(0.001 + 0.5 * 0.024 * (1 + np.cos(np.pi / 2)), rel=1e-6)  # epoch 1 of 2
  np.testing.assert_allclose(loaded["alphas"][1]["normal"], res["alphas"][1]["normal"])
  assert not np.allclose(res["alphas"][0]["normal"], res["alphas"][1]["normal"])  # seeds differ
  with open(os.path.join(out, "seed_0", "genotype.json")) as f:
    assert json.load(f)["normal"]


def test_seed_alone_equals_seed_in_batch(batched_run):
  """Seed 1 run alone (one single-seed program) follows the same trajectory as inside the batch."""
  _, res = batched_run
  ds, w, a = _data()
  alone = run.run_search(CFG, [1], w, a, quiet=True, mean=ds.mean, std=ds.std, eval_images=0, seed_batching="loop")
  assert alone["genotypes"][1] == res["genotypes"][1]
  for k in ("normal", "reduce"):
    np.testing.assert_allclose(alone["alphas"][1][k], res["alphas"][1][k], rtol=1e-4, atol=1e-6)


def test_resume_equals_uninterrupted(batched_run, tmp_path):
  out_full, res = batched_run
  ds, w, a = _data()
  out = str(tmp_path / "killed")
  kw = dict(quiet=True, mean=ds.mean, std=ds.std, eval_images=16)
  first = run.run_search(CFG, [0, 1], w, a, out=out, stop_after_epochs=1, **kw)
  assert first["stopped"] and first["epochs_done"] == 1
  assert not os.path.exists(os.path.join(out, "results.json"))
  with pytest.raises(FileExistsError, match="--resume"):
    run.run_search(CFG, [0, 1], w, a, out=out, **kw)
  with pytest.raises(ValueError, match="config differs"):
    run.run_search(CFG, [0, 2], w, a, out=out, resume=True, **kw)
  resumed = run.run_search(CFG, [0, 1], w, a, out=out, resume=True, **kw)
  assert resumed["epochs_done"] == 2 and not resumed["stopped"]
  for s in (0, 1):
    assert resumed["genotypes"][s] == res["genotypes"][s]
    np.testing.assert_array_equal(resumed["alphas"][s]["normal"], res["alphas"][s]["normal"])
  assert [r["epoch"] for r in run.load_search(out)["history"]] == [1, 1, 2, 2]


def test_nan_seed_stops_alone(batched_run):
  """A seed whose weights hold a NaN keeps its state and is marked dead; the other one steps."""
  ds, w, a = _data()
  search = run.DartsSearch(CFG, steps_per_epoch=4)
  perms_fn, step_fn, _ = run.make_epoch_fns(search, mean=ds.mean, std=ds.std)
  state = jax.jit(jax.vmap(search.init))(jnp.stack([jax.random.key(0), jax.random.key(1)]))
  poison = jax.tree.map(lambda p: p.at[1].set(jnp.nan), state.params)
  state = state._replace(params=poison)
  before = jax.device_get(state)
  wi, wl, ai, al = (jnp.asarray(x) for x in (w.images, w.labels, a.images, a.labels))
  pw, pa = perms_fn(state.key, 0, 32, 32)
  new, m = step_fn(state, wi, wl, ai, al, pw, pa, jnp.int32(0))
  assert list(np.asarray(new.alive)) == [True, False]
  assert list(np.asarray(new.step)) == [1, 0]
  np.testing.assert_array_equal(np.asarray(new.alphas["normal"][1]), before.alphas["normal"][1])
  assert not np.array_equal(np.asarray(new.alphas["normal"][0]), before.alphas["normal"][0])


def test_bad_inputs():
  ds, w, a = _data()
  with pytest.raises(ValueError, match="distinct"):
    run.run_search(CFG, [0, 0], w, a)
  with pytest.raises(ValueError, match="fewer than one batch"):
    run.run_search(CFG, [0], D.Split(w.images[:4], w.labels[:4]), a)
  with pytest.raises(ValueError, match="seed_batching"):
    run.make_epoch_fns(run.DartsSearch(CFG, 4), mean=ds.mean, std=ds.std, seed_batching="pmap")
