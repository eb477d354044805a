"""DARTS hypergradients on a tiny float64 supernet: exact second order against a finite
difference of the unrolled objective, DARTS's estimate against the exact one, first = second at
zero weight learning rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import optim
from jnas.search import METHODS, darts, estimators

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


class Search:
  """A DARTS stage with the pieces the checks below use."""

  def __init__(self, config):
    self.config = config
    self.method = METHODS["darts"](config, 4).stage(0, None).method
    self.parts = darts.parts(config, 4)
    self.virtual_tx = optim.virtual_step_optimizer(self.parts.schedule, config.w_momentum, config.w_weight_decay)

  def init(self, key):
    return self.method.init(key)

  def loss(self, params, batch_stats, arch, batch):
    return self.method.loss(params, batch_stats, arch, batch, None, 0)

  def _virtual_step(self, params, batch_stats, arch, w_opt, train):
    loss = lambda p, a, b, k: self.loss(p, batch_stats, a, b)
    return estimators.virtual_step(loss, params, arch, w_opt, train, None, self.virtual_tx, self.config.unroll_steps)

  def arch_gradient(self, st, train, val):
    loss = lambda p, a, b, k: self.loss(p, st.batch_stats, a, b)
    return estimators.arch_gradient(self.config.order, loss, st.params, st.arch, st.w_opt, train, val, None, None,
                                    virtual_tx=self.virtual_tx, schedule=self.parts.schedule,
                                    unroll_steps=self.config.unroll_steps, fd_epsilon=self.config.fd_epsilon)


def _state64(search, momentum_step=True):
  """A float64 state whose momentum buffer is nonzero (as after a first step)."""
  st = search.init(jax.random.key(0))
  st = st._replace(params=_f64(st.params), batch_stats=_f64(st.batch_stats), arch=_f64(st.arch),
                   w_opt=_f64(st.w_opt), a_opt=_f64(st.a_opt))
  if momentum_step:
    rng = np.random.default_rng(0)
    trace = st.w_opt[2]._replace(trace=jax.tree.map(lambda a: 0.1 * rng.normal(size=a.shape), st.params))
    st = st._replace(w_opt=(st.w_opt[0], st.w_opt[1], trace, st.w_opt[3]))
  return st


@pytest.fixture(scope="module")
def second64(x64):
  """(search, state, train, val, grad of the exact second-order objective)."""
  search = Search(darts.DartsConfig(order="second", conv_impl="shift", **TINY))
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
    v = {k: rng.normal(size=a.shape) for k, a in st.arch.items()}
    h = 1e-6  # the objective curves fast in alpha at this size: h = 1e-3 is off by 4%
    plus = objective(jax.tree.map(lambda a, d: a + h * d, st.arch, v))
    minus = objective(jax.tree.map(lambda a, d: a - h * d, st.arch, v))
    fd = (plus - minus) / (2 * h)
    analytic = sum(float(jnp.sum(g[k] * v[k])) for k in v)
    assert abs(analytic - fd) <= 1e-3 * abs(fd), (analytic, fd)


def test_finite_difference_estimate_agrees_with_exact(second64):
  """DARTS's Hessian-vector estimate converges to the exact hypergradient as eps -> 0.

  (With DARTS's eps = 0.01 / ||g_w'|| this tiny net, whose dead channels make the loss curve
  sharply in w, gives a relative error above 1: the finite difference is the approximation.)
  """
  search, st, train, val, g = second64
  cfg = darts.DartsConfig(order="second-fd", conv_impl="shift", fd_epsilon=1e-6, **TINY)
  g_fd, _ = jax.jit(Search(cfg).arch_gradient)(st, train, val)
  first = jax.jit(jax.grad(lambda a: search.loss(st.params, st.batch_stats, a, val)[0]))(st.arch)
  for k in ("normal", "reduce"):
    rel = float(jnp.linalg.norm(g_fd[k] - g[k]) / jnp.linalg.norm(g[k]))
    assert rel < 1e-4, (k, rel)
    # and the second-order term matters here, so the comparison is not vacuous
    assert float(jnp.linalg.norm(g[k] - first[k]) / jnp.linalg.norm(g[k])) > 1e-2


def test_first_equals_second_at_zero_weight_lr(x64):
  cfg = dict(TINY, primitives=("none", "skip_connect", "avg_pool_3x3"), w_lr=0.0, w_lr_min=0.0, conv_impl="xla")
  first = Search(darts.DartsConfig(order="first", **cfg))
  second = Search(darts.DartsConfig(order="second", **cfg))
  st = _state64(first)
  train, val = _f64(_batches(jax.random.key(2)))
  both = jax.jit(lambda s: (first.arch_gradient(s, train, val)[0], second.arch_gradient(s, train, val)[0]))
  g1, g2 = both(st)
  for k in g1:
    np.testing.assert_allclose(g1[k], g2[k], rtol=1e-10, atol=1e-14)
    assert float(jnp.abs(g1[k]).max()) > 0


def test_unroll_steps_and_config_errors():
  with pytest.raises(ValueError, match="unknown order"):
    darts.DartsConfig(order="third")
  with pytest.raises(ValueError, match="unroll_steps"):
    darts.DartsConfig(order="first", unroll_steps=2)
  with pytest.raises(ValueError, match="layers"):
    darts.DartsConfig(layers=2)
  with pytest.raises(ValueError, match="alpha_init"):
    darts.DartsConfig(alpha_init="ones")
