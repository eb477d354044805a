"""Non-finite losses: a step that produced NaN/inf keeps the previous state and marks the seed dead.

Inside a step (vmapped over seeds, so ``ok`` is per seed)::

  ok = state.alive & jnp.isfinite(loss)
  state = keep_if(ok, new_state, state)._replace(alive=ok)

A dead seed stops changing (its last good weights stay in every later checkpoint) while the other
seeds of the same compiled job go on; the host reports it once (``newly_dead``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["keep_if", "all_finite", "newly_dead"]


def keep_if(ok, new, old):
  """``new`` where the scalar ``ok`` is true, else ``old``, leaf by leaf (typed PRNG keys too)."""
  def pick(n, o):
    if jax.dtypes.issubdtype(getattr(n, "dtype", None), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(jnp.where(ok, jax.random.key_data(n), jax.random.key_data(o)),
                                      impl=jax.random.key_impl(n))
    return jnp.where(ok, n, o)
  return jax.tree.map(pick, new, old)


def all_finite(*xs) -> jax.Array:
  """True iff every element of every floating-point array in ``xs`` is finite (other leaves, such
  as step counts and PRNG keys, are skipped)."""
  leaves = [x for x in jax.tree.leaves(xs) if jnp.issubdtype(getattr(x, "dtype", jnp.int32), jnp.inexact)]
  if not leaves:
    return jnp.ones((), bool)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def newly_dead(alive_before, alive_now) -> list[int]:
  """Positions of the seeds that were alive and are not anymore (host side)."""
  before, now = np.asarray(alive_before, bool), np.asarray(alive_now, bool)
  return [int(i) for i in np.flatnonzero(before & ~now)]
