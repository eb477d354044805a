"""Test configuration: strict rank promotion (a leading seed/edge axis must never broadcast
silently), a fixture for compile-heavy tests, and huge-page malloc for the pytest-xdist workers
(they start after this file is loaded and inherit its environment; see jnas/cpu_env.py)."""

import os

import jax
import pytest

from jnas import cpu_env

if cpu_env.hugepages_available():
  os.environ.update(cpu_env.tuned_environ())

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="module")
def fast_compile():
  """Turn off most XLA optimisations for compile-heavy tests (flax examples do the same)."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)
