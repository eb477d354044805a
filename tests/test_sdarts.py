"""SDARTS's perturbations (jnas.search.sdarts): the projection, RS noise, the PGD attack, the epsilon
ramp. (The methods' steps run in the table test of every method, tests/test_methods.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.search import METHODS, sdarts


def _clean(key, rows=14, ops=8):
  return {t: jax.nn.softmax(jax.random.normal(k, (rows, ops)), axis=-1)
          for t, k in zip(("normal", "reduce"), jax.random.split(key))}


def test_project_onto_the_simplex():
  w = jnp.asarray([[0.5, -0.2, 0.9, 0.1], [-1.0, -0.5, -0.1, -2.0], [2.0, 0.0, 0.0, 0.0]])
  p = np.asarray(sdarts.project(w))
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  assert (p >= 0).all()
  np.testing.assert_allclose(p[0], np.asarray([0.5, 0.0, 0.9, 0.1]) / 1.5, rtol=1e-6)  # clamp, renormalise
  np.testing.assert_array_equal(p[1], [0.0, 0.0, 1.0, 0.0])  # all clamped to 0: one-hot at the argmax
  np.testing.assert_array_equal(p[2], [1.0, 0.0, 0.0, 0.0])


def test_random_perturbation_stays_on_the_simplex_within_epsilon():
  clean = _clean(jax.random.key(0))
  n = 8
  for eps in (0.01, 0.05):
    w = sdarts.perturb_random(clean, jax.random.key(1), eps)
    for t in clean:
      d = np.abs(np.asarray(w[t]) - np.asarray(clean[t]))
      np.testing.assert_allclose(np.asarray(w[t]).sum(-1), 1.0, rtol=1e-5)
      assert (np.asarray(w[t]) >= 0).all()
      # |P(a + delta) - a| <= (eps + n eps) / (1 - n eps) for |delta| <= eps (clamp moves toward a, the
      # row sum moves by at most n eps)
      assert d.max() <= (eps + n * eps) / (1 - n * eps) + 1e-6
      assert d.mean() > eps / 10  # and it is noise of that size, not nothing
  a, b = sdarts.perturb_random(clean, jax.random.key(1), 0.05), sdarts.perturb_random(clean, jax.random.key(2), 0.05)
  assert not np.allclose(a["normal"], b["normal"])  # the key draws the noise


def test_pgd_raises_the_loss_and_reverts_when_it_cannot():
  clean = _clean(jax.random.key(0))
  c = {t: jax.random.normal(k, v.shape) for (t, v), k in zip(clean.items(), jax.random.split(jax.random.key(3)))}
  loss = lambda w: sum(jnp.sum(w[t] * c[t]) for t in w)
  w = jax.jit(lambda cl, k: sdarts.perturb_pgd(cl, k, 0.1, loss, 7))(clean, jax.random.key(4))
  assert float(loss(w)) > float(loss(clean)) + 0.1
  for t in w:
    np.testing.assert_allclose(np.asarray(w[t]).sum(-1), 1.0, rtol=1e-5)
  # a loss that every perturbation lowers: the clean weights come back
  flat = lambda w: -sum(jnp.sum((w[t] - clean[t]) ** 2) for t in w)
  kept = sdarts.perturb_pgd(clean, jax.random.key(4), 0.1, flat, 7)
  for t in clean:
    np.testing.assert_array_equal(kept[t], clean[t])


def test_epsilon_ramp_and_settings():
  cfg = METHODS["sdarts-rs"].config(epochs=10)
  assert cfg.perturb == "random" and METHODS["sdarts-adv"].config().perturb == "pgd"
  assert cfg.order == "first"  # every SDARTS experiment ran first order
  assert float(sdarts.epsilon(cfg, jnp.int32(0), 5)) == pytest.approx(0.03)
  assert float(sdarts.epsilon(cfg, jnp.int32(5 * 5 + 3), 5)) == pytest.approx(0.03 + 0.27 * 5 / 10)
  with pytest.raises(ValueError, match="perturb"):
    METHODS["sdarts-rs"].config(perturb="gaussian")
