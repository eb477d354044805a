"""jnas.compile_options: per-step XLA options on CPU only, and the jit wrappers pass them to XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import compile_options


@pytest.fixture(autouse=True, scope="module")
def _optimized(full_compile):
  """As a user's run compiles: the suite turns most optimisations off, and step options with them."""


def test_step_options_only_on_cpu():
  assert compile_options.step_options("cpu") == {"xla_backend_optimization_level": 1}
  assert compile_options.step_options("gpu") == {}
  assert compile_options.step_options("tpu") == {}
  compile_options.step_options("cpu")["xla_backend_optimization_level"] = 3  # a copy: STEP_CPU unchanged
  assert compile_options.STEP_CPU == {"xla_backend_optimization_level": 1}


def _f(x):
  return jnp.tanh(x) @ x.T


def test_jit_wrappers_compute_what_jit_computes():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.float32)
  ref = jax.jit(_f)(x)
  np.testing.assert_allclose(compile_options.step_jit(_f)(x), ref, rtol=1e-6)
  np.testing.assert_allclose(compile_options.lean_jit(_f)(x), ref, rtol=1e-6)


@pytest.mark.parametrize("wrapper, name", [(compile_options.step_jit, "STEP_CPU"), (compile_options.lean_jit, "LEAN")])
def test_jit_wrappers_hand_their_options_to_xla(monkeypatch, wrapper, name):
  # XLA rejects an option it does not know: proof that the wrapper's options reach the compiler.
  if jax.default_backend() != "cpu" and name == "STEP_CPU":
    pytest.skip("step options apply on CPU only")
  monkeypatch.setattr(compile_options, name, {"xla_no_such_option_in_jnas_tests": 1})
  with pytest.raises(Exception, match="xla_no_such_option_in_jnas_tests"):
    wrapper(lambda x: x * 3.0)(jnp.ones(3))


def test_step_options_leave_disabled_optimizations_alone():
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    assert compile_options.step_options("cpu") == {}
  finally:
    jax.config.update("jax_disable_most_optimizations", False)
