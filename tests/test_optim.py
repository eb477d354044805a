"""Tests for jnas.optim: the optax chains against NumPy transcriptions of the PyTorch updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnas import optim

# Search schedule of DARTS with E = 3 epochs of 2 steps: lr(e) = 0.001 + 0.012 (1 + cos(pi e / 3)),
# cos(pi / 3) = 0.5 and cos(2 pi / 3) = -0.5, so
# lr(0) = 0.025, lr(1) = 0.001 + 0.012 * 1.5 = 0.019, lr(2) = 0.001 + 0.012 * 0.5 = 0.007,
# lr(3) = 0.001.
LR = [0.025, 0.019, 0.007, 0.001]
N_STEPS = 5  # epochs 0, 0, 1, 1, 2: crosses two epoch boundaries


def _sched(shift=False):
  return optim.cosine_epoch_schedule(0.025, epochs=3, steps_per_epoch=2, min_lr=0.001, shift=shift)


def _tree(rng, scale=1.0):
  return {"w": scale * rng.normal(size=(3, 4)), "b": {"c": scale * rng.normal(size=(5,))}}


def _grads(rng):
  # Alternate large and small gradients so that some steps are clipped (norm >> 5), others not.
  return [_tree(rng, 10.0 if t % 2 == 0 else 0.1) for t in range(N_STEPS)]


def _run(tx, params, grads):
  """N_STEPS jitted optax steps; float32 as in training."""
  p = jax.tree.map(jnp.float32, params)
  state = tx.init(p)
  update = jax.jit(tx.update)
  for g in grads:
    u, state = update(jax.tree.map(jnp.float32, g), state, p)
    p = optax.apply_updates(p, u)
  return p, state


def torch_sgd(params, grads, lrs, momentum, weight_decay, max_norm):
  """torch.nn.utils.clip_grad_norm_ + torch.optim.SGD(momentum, weight_decay), float64."""
  p = {k: v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  buf = {}
  for g_tree, lr in zip(grads, lrs):
    g = {k: v for k, v in jax.tree_util.tree_flatten_with_path(g_tree)[0]}
    if max_norm is not None:
      total = np.sqrt(sum(np.sum(v ** 2) for v in g.values()))
      coef = max_norm / (total + 1e-6)
      if coef < 1:
        g = {k: v * coef for k, v in g.items()}
    for k in p:
      d = g[k] + weight_decay * p[k]
      buf[k] = d if k not in buf else momentum * buf[k] + d  # dampening 0
      p[k] = p[k] - lr * buf[k]
  return jax.tree.unflatten(jax.tree.structure(params), list(p.values()))


def torch_adam(params, grads, lr, b1, b2, eps, weight_decay):
  """torch.optim.Adam(lr, betas=(b1, b2), eps, weight_decay), amsgrad off, float64."""
  leaves, treedef = jax.tree.flatten(params)
  p = [np.array(v) for v in leaves]
  m = [np.zeros_like(v) for v in p]
  v2 = [np.zeros_like(v) for v in p]
  for t, g_tree in enumerate(grads, start=1):
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      g = g + weight_decay * p[i]
      m[i] = b1 * m[i] + (1 - b1) * g
      v2[i] = b2 * v2[i] + (1 - b2) * g * g
      step_size = lr / (1 - b1 ** t)
      denom = np.sqrt(v2[i]) / np.sqrt(1 - b2 ** t) + eps
      p[i] = p[i] - step_size * m[i] / denom
  return jax.tree.unflatten(treedef, p)


def _close(got, want):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), got, want)


# --- schedule ---------------------------------------------------------------------------------

def test_cosine_epoch_schedule_values():
  s = _sched()
  got = [float(s(t)) for t in range(8)]  # epochs 0 0 1 1 2 2 3 3 (epoch 3 = E: min_lr)
  np.testing.assert_allclose(got, [LR[t // 2] for t in range(8)], rtol=1e-6)
  assert float(s(100)) == pytest.approx(0.001)  # stays at min_lr after E epochs
  assert float(jax.jit(s)(jnp.int32(3))) == pytest.approx(0.019)


def test_cosine_epoch_schedule_shift():
  s = _sched(shift=True)  # pt.darts on PyTorch >= 1.1: epoch e runs at lr(e + 1)
  got = [float(s(t)) for t in range(8)]
  np.testing.assert_allclose(got, [0.019, 0.019, 0.007, 0.007, 0.001, 0.001, 0.001, 0.001],
                             rtol=1e-6)


def test_cosine_epoch_schedule_retrain_defaults():
  # DARTS retraining: 0.025 -> 0 over 600 epochs. lr(300) = 0.0125 (cos(pi / 2) = 0),
  # lr(599) = 0.0125 (1 + cos(599 pi / 600)) ~ 1.713e-7.
  s = optim.cosine_epoch_schedule(0.025, epochs=600, steps_per_epoch=521)
  assert float(s(0)) == pytest.approx(0.025)
  assert float(s(300 * 521)) == pytest.approx(0.0125, rel=1e-6)
  assert float(s(599 * 521 + 520)) == pytest.approx(0.0125 * (1 + np.cos(599 * np.pi / 600)),
                                                    rel=1e-3)


def test_cosine_epoch_schedule_errors():
  with pytest.raises(ValueError, match="epochs"):
    optim.cosine_epoch_schedule(0.025, epochs=0, steps_per_epoch=2)


# --- optimizers against PyTorch's update rules ------------------------------------------------

@pytest.mark.parametrize("grad_clip", [5.0, None])
def test_weight_optimizer_matches_torch_sgd(grad_clip):
  rng = np.random.default_rng(0)
  params, grads = _tree(rng), _grads(rng)
  tx = optim.weight_optimizer(_sched(), momentum=0.9, weight_decay=3e-4, grad_clip=grad_clip)
  got, state = _run(tx, params, grads)
  want = torch_sgd(params, grads, [LR[t // 2] for t in range(N_STEPS)], 0.9, 3e-4, grad_clip)
  _close(got, want)
  assert float(optim.current_lr(_sched(), state)) == pytest.approx(LR[N_STEPS // 2])


def test_clipping_changes_the_result():
  # Guard against a vacuous test: with these gradients clipping is active.
  rng = np.random.default_rng(0)
  params, grads = _tree(rng), _grads(rng)
  lrs = [LR[t // 2] for t in range(N_STEPS)]
  a = torch_sgd(params, grads, lrs, 0.9, 3e-4, 5.0)
  b = torch_sgd(params, grads, lrs, 0.9, 3e-4, None)
  assert np.abs(a["w"] - b["w"]).max() > 1e-2


def test_weight_optimizer_constant_lr():
  rng = np.random.default_rng(1)
  params, grads = _tree(rng), _grads(rng)
  got, state = _run(optim.weight_optimizer(0.1), params, grads)
  _close(got, torch_sgd(params, grads, [0.1] * N_STEPS, 0.9, 3e-4, 5.0))
  assert float(optim.current_lr(0.1, state)) == pytest.approx(0.1)


def test_arch_optimizer_matches_torch_adam():
  rng = np.random.default_rng(2)
  params = _tree(rng, 1e-3)  # alphas start at 1e-3 N(0, 1) in quark0
  grads = [_tree(rng, 0.1) for _ in range(N_STEPS)]
  got, _ = _run(optim.arch_optimizer(), params, grads)
  want = torch_adam(params, grads, lr=3e-4, b1=0.5, b2=0.999, eps=1e-8, weight_decay=1e-3)
  _close(got, want)


def test_arch_optimizer_is_not_adamw():
  # Coupled L2: with a zero gradient the decay term alone drives Adam, so the first step moves
  # every coordinate by about lr (sign of the weight), not by lr * wd * w as AdamW would.
  p = {"a": jnp.array([1.0, -2.0])}
  tx = optim.arch_optimizer()
  u, _ = tx.update({"a": jnp.zeros(2)}, tx.init(p), p)
  np.testing.assert_allclose(u["a"], [-3e-4, 3e-4], rtol=1e-4)


# --- the virtual step of second-order DARTS ---------------------------------------------------

def test_virtual_step_shares_state_tree():
  p = jax.tree.map(jnp.float32, _tree(np.random.default_rng(3)))
  real = optim.weight_optimizer(_sched()).init(p)
  virtual = optim.virtual_step_optimizer(_sched()).init(p)
  assert jax.tree.structure(real) == jax.tree.structure(virtual)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), real, virtual)


def test_virtual_step_uses_real_momentum_without_clipping():
  rng = np.random.default_rng(4)
  params, grads = _tree(rng), _grads(rng)
  sched = _sched()
  w, state = _run(optim.weight_optimizer(sched), params, grads[:3])  # m != 0, count = 3
  g = jax.tree.map(jnp.float32, _tree(rng, 10.0))  # norm >> 5: clipping would change it
  u, _ = optim.virtual_step_optimizer(sched).update(g, state, w)
  w_prime = optax.apply_updates(w, u)
  # DARTS Eq. 6-7: w' = w - xi (mu m + g + lambda w), xi = lr at count 3 (epoch 1).
  xi = optim.current_lr(sched, state)
  assert float(xi) == pytest.approx(LR[1])
  m = state[2].trace
  want = jax.tree.map(lambda w_, m_, g_: w_ - xi * (0.9 * m_ + g_ + 3e-4 * w_), w, m, g)
  _close(w_prime, want)


def test_current_lr_vmapped_and_errors():
  p = {"a": jnp.zeros(3)}
  sched = _sched()
  tx = optim.weight_optimizer(sched)
  states = jax.vmap(lambda _: tx.init(p))(jnp.arange(2))  # leading seed axis of size 2
  states = (states[0], states[1], states[2], optax.ScaleByScheduleState(jnp.array([0, 2])))
  np.testing.assert_allclose(optim.current_lr(sched, states), [0.025, 0.019], rtol=1e-6)
  np.testing.assert_allclose(optim.current_lr(0.1, states), [0.1, 0.1])
  with pytest.raises(ValueError, match="ScaleByScheduleState"):
    optim.current_lr(sched, optim.arch_optimizer().init(p))
