"""The fast array kernels equal their library references (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jnas import kernels


@pytest.mark.parametrize("k, stride, dilation, size", [
    (3, 1, 1, 8), (5, 1, 1, 8), (3, 2, 1, 8), (5, 2, 1, 9), (3, 1, 2, 8), (5, 2, 2, 8), (3, 2, 2, 7)])
def test_depthwise_shift_equals_grouped_conv(k, stride, dilation, size):
  pad = dilation * (k - 1) // 2
  kx, kw, kg = jax.random.split(jax.random.key(k * 100 + stride * 10 + dilation), 3)
  x = jax.random.normal(kx, (2, size, size, 3))
  w = jax.random.normal(kw, (k, k, 3))
  conv = lambda impl: (lambda x, w: kernels.depthwise_conv(x, w, stride=stride, padding=pad, dilation=dilation, impl=impl))
  ref = conv("xla")(x, w)
  np.testing.assert_allclose(conv("shift")(x, w), ref, rtol=1e-5, atol=1e-5)
  assert ref.shape[1] == kernels.out_size(size, k, stride, pad, dilation)
  gy = jax.random.normal(kg, ref.shape)
  grads = lambda impl: jax.grad(lambda x, w: jnp.sum(conv(impl)(x, w) * gy), (0, 1))(x, w)
  for a, b in zip(grads("shift"), grads("xla")):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_max_pool_equals_reduce_window(k, stride):
  x = jax.random.normal(jax.random.key(k + stride), (2, 8, 8, 3))
  pad = k // 2
  ref = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, stride, stride, 1),
                                    ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  np.testing.assert_array_equal(kernels.max_pool(x, k, stride, pad), ref(x))
  gy = jax.random.normal(jax.random.key(9), ref(x).shape)
  g_ours = jax.grad(lambda x: jnp.sum(kernels.max_pool(x, k, stride, pad) * gy))(x)
  g_ref = jax.grad(lambda x: jnp.sum(ref(x) * gy))(x)
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-6, atol=1e-6)


def test_avg_pool_excludes_padding():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  y = kernels.avg_pool(x, 3, 1, 1)
  # corner (0, 0) averages the 4 real pixels 0, 1, 4, 5 (count_include_pad=False)
  assert float(y[0, 0, 0, 0]) == pytest.approx((0 + 1 + 4 + 5) / 4)
  # interior (1, 1) averages 9 pixels
  assert float(y[0, 1, 1, 0]) == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))
  y2 = kernels.avg_pool(x, 3, 2, 1)
  assert y2.shape == (1, 2, 2, 1) and float(y2[0, 1, 1, 0]) == pytest.approx(np.mean([5, 6, 7, 9, 10, 11, 13, 14, 15]))


def test_batch_norm_matches_pytorch_rules():
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2)) * 3 + 1
  stats = {"mean": jnp.zeros(2), "var": jnp.ones(2)}
  y, new = kernels.batch_norm(x, stats, train=True)
  xn = np.asarray(x).reshape(-1, 2)
  mean, var = xn.mean(0), xn.var(0)
  np.testing.assert_allclose(y, (np.asarray(x) - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
  n = xn.shape[0]
  np.testing.assert_allclose(new["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(new["var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)  # unbiased
  y_eval, same = kernels.batch_norm(x, new, train=False, scale=jnp.full(2, 2.0), bias=jnp.ones(2))
  m, v = np.asarray(new["mean"]), np.asarray(new["var"])
  np.testing.assert_allclose(y_eval, 2 * (np.asarray(x) - m) / np.sqrt(v + 1e-5) + 1, rtol=1e-5)
  assert same is new


def test_unknown_impl():
  with pytest.raises(ValueError, match="unknown conv impl"):
    kernels.depthwise_conv(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1)), impl="cudnn")


@pytest.mark.parametrize("impl", ["shift", "xla"])
def test_pointwise_value_and_gradient_equal_those_of_a_matmul(impl):
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  w = jax.random.normal(jax.random.key(1), (4, 5))
  gy = jax.random.normal(jax.random.key(2), (2, 3, 3, 5))
  np.testing.assert_allclose(kernels.pointwise(x, w, impl=impl), x @ w, rtol=1e-5, atol=1e-5)
  ours = jax.grad(lambda x, w: jnp.sum(kernels.pointwise(x, w, impl=impl) * gy), (0, 1))(x, w)
  ref = jax.grad(lambda x, w: jnp.sum((x @ w) * gy), (0, 1))(x, w)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The accelerator form is a convolution, so XLA's GPU GEMM fusion never sees a reshape + dot.
  jaxpr = str(jax.make_jaxpr(lambda x, w: kernels.pointwise(x, w, impl=impl))(x, w))
  assert ("conv_general_dilated" in jaxpr) == (impl == "xla")


def test_output_barrier_is_the_identity_and_stays_a_conditional_under_vmap():
  x = jnp.arange(12.0).reshape(2, 6)
  np.testing.assert_array_equal(kernels.output_barrier(x), x)
  assert np.isnan(kernels.output_barrier(x.at[0, 0].set(jnp.nan))).all()
  # Batched, the predicate stays a scalar: a conditional, not a select of both branches.
  jaxpr = str(jax.make_jaxpr(jax.vmap(kernels.output_barrier))(x))
  assert "cond[" in jaxpr and "select_n" not in jaxpr
  # Derivatives are those of the identity, to second order and under vmap.
  f = lambda v: jnp.sum(kernels.output_barrier(v) ** 3)
  np.testing.assert_allclose(jax.vmap(jax.grad(f))(x), 3 * x ** 2)
  np.testing.assert_allclose(jax.hessian(f)(x[0]), np.diag(6 * np.asarray(x[0])))


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def test_second_order_gradient_through_depthwise_conv_in_a_scan(x64):
  """d/da of a loss at w - 0.1 grad_w L(w, a), cells in a scan (second-order DARTS's pattern),
  against central finite differences in float64."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3), jnp.float64)
  w = 0.5 * jax.random.normal(jax.random.key(1), (2, 3, 3, 3), jnp.float64)

  def net(x, w):
    return lax.scan(lambda c, wi: (jnp.tanh(kernels.depthwise_conv(c, wi, padding=1, impl="shift")), None), x, w)[0]

  def f(a):
    gw = jax.grad(lambda w_: jnp.sum(net(x * a, w_) ** 2))(w)
    return jnp.sum(net(x * a, w - 0.1 * gw))

  eps = 1e-5
  np.testing.assert_allclose(jax.grad(f)(1.0), (f(1.0 + eps) - f(1.0 - eps)) / (2 * eps), rtol=1e-6)
