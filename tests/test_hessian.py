"""The Hessian monitor (jnas.search.hessian): Lanczos on Hessian-vector products against explicit
Hessians: a quadratic, and a tiny float64 DARTS supernet whose Hessian is built by central finite
differences of its alpha gradient (independent of the HVP code)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jnas
from jnas.search import darts
from jnas.search.hessian import arch_hessian_eigenvalue, edge_entropy, lanczos_extremes, skip_share

OPS = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
TINY = dict(C=4, layers=3, steps=2, primitives=OPS, batch_size=8, epochs=2)


@pytest.fixture(scope="module")
def x64(fast_compile):
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def _f64(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def test_lanczos_on_quadratics(x64):
  rng = np.random.default_rng(0)
  M = rng.normal(size=(30, 30))
  A = (M + M.T) / 2
  ev = np.linalg.eigvalsh(A)
  big, small = lanczos_extremes(lambda v: jnp.asarray(A) @ v, jnp.asarray(rng.normal(size=30)), 30)
  np.testing.assert_allclose([big, small], [ev[-1], ev[0]], rtol=1e-9)
  # rank 3: the recursion stops early, and the empty rows do not pose as eigenvalues (0 would be the max)
  u = rng.normal(size=(40, 3))
  A = u @ np.diag([-5.0, -2.0, -1.0]) @ u.T
  ev = np.linalg.eigvalsh(A)
  big, small = lanczos_extremes(lambda v: jnp.asarray(A) @ v, jnp.asarray(rng.normal(size=40)), 20)
  assert float(small) == pytest.approx(ev[0], rel=1e-9) and float(big) <= 1e-9
  # the dominant eigenvalue converges long before k = dim when it stands apart
  d = np.concatenate([[50.0], rng.uniform(-1, 1, 199)])
  Q, _ = np.linalg.qr(rng.normal(size=(200, 200)))
  A = Q @ np.diag(d) @ Q.T
  big, _ = jax.jit(lambda v: lanczos_extremes(lambda x: jnp.asarray(A) @ x, v, 15))(jnp.asarray(rng.normal(size=200)))
  assert float(big) == pytest.approx(50.0, rel=1e-6)


@pytest.fixture(scope="module")
def supernet64(x64):
  config = darts.DartsConfig(order="first", conv_impl="shift", **TINY)
  method = jnas.search.METHODS["darts"](config, 4).stage(0, None).method
  st = method.init(jax.random.key(0))
  rng = np.random.default_rng(1)
  arch = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.normal(size=a.shape)), _f64(st.arch))  # away from uniform
  st = st._replace(params=_f64(st.params), batch_stats=_f64(st.batch_stats), arch=arch)
  k1, k2 = jax.random.split(jax.random.key(2))
  batch = (jax.random.normal(k1, (8, 8, 8, 3), jnp.float64), jax.random.randint(k2, (8,), 0, 10))
  return method, st, batch


def test_supernet_eigenvalue_equals_the_explicit_hessian(supernet64):
  method, st, batch = supernet64
  flat, unravel = ravel_pytree(st.arch)
  grad = jax.jit(jax.grad(lambda v: method.loss(st.params, st.batch_stats, unravel(v), batch, None, st.step)[0]))
  h = 1e-5
  eye = np.eye(flat.size)
  H = np.stack([(np.asarray(grad(flat + h * e)) - np.asarray(grad(flat - h * e))) / (2 * h) for e in eye], axis=1)
  np.testing.assert_allclose(H, H.T, atol=1e-6)  # a real Hessian (and the differences are accurate)
  ev = np.linalg.eigvalsh((H + H.T) / 2)
  assert ev[-1] > 1e-3  # not a degenerate check
  # exact HVPs with two seeds vmapped (the second with other alphas), and the default FD HVPs
  st2 = st._replace(arch=jax.tree.map(lambda a: 2.0 * a, st.arch))
  both = jax.tree.map(lambda a, b: jnp.stack([a, b]), st, st2)
  v = jax.jit(jax.vmap(lambda s: arch_hessian_eigenvalue(method, s, batch, iters=flat.size,
                                                         key=jax.random.key(3), hvp="exact")))(both)
  np.testing.assert_allclose([v["hessian_max"][0], v["hessian_min"][0]], [ev[-1], ev[0]], rtol=1e-6, atol=1e-8)
  assert abs(float(v["hessian_max"][1]) - ev[-1]) > 1e-4  # each seed gets its own value
  fd = jax.jit(lambda s: arch_hessian_eigenvalue(method, s, batch, iters=flat.size, key=jax.random.key(3),
                                                 hvp="fd", fd_epsilon=1e-4, l2=1e-3))(st)
  # with the alpha weight decay in the gradient (R-DARTS's l2), every eigenvalue moves by it
  np.testing.assert_allclose([fd["hessian_max"], fd["hessian_min"]], [ev[-1] + 1e-3, ev[0] + 1e-3], rtol=1e-4,
                             atol=1e-6)


def test_entropy_and_skip_share():
  uniform = {"normal": jnp.full((3, 4), 0.25), "reduce": jnp.full((2, 4), 0.25)}
  assert float(edge_entropy(uniform)) == pytest.approx(np.log(4))
  one_hot = {"normal": jnp.eye(4)[:3], "reduce": jnp.eye(4)[:2]}
  assert float(edge_entropy(one_hot)) == pytest.approx(0.0)
  assert skip_share(jnas.genotypes.DARTS_V2) == pytest.approx(2 / 8)
  assert np.isnan(skip_share(None))
