"""Test configuration: strict rank promotion (a leading seed/edge axis must never broadcast
silently) and a marker for compile-heavy tests."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="module")
def fast_compile():
  """Turn off most XLA optimisations for compile-heavy tests (flax examples do the same)."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)
