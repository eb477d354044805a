"""Softmax-temperature schedules of the small-temperature DARTS variants (Zhang and Ding's codes).

A schedule's state is a dict of scalars kept in the architecture parameters under
``'temperature'`` (``TEMPERATURE``): the arch optimiser leaves it alone (``frozen_leaves``), the
edge weights read it under ``stop_gradient``, and the method's ``post_step`` moves it between
steps inside the compiled step (no recompile, no host round trip; seeds vmap).

* ``exp_temperature(i, d, mu)``: T_i = mu / ln(1 + d i) (T_0 = 1), so exp(mu / T_i) = 1 + d i:
  the exponentiated typical initial logit grows linearly in i. mu = 3.99e-4 = E[max(a, 0)] for
  a ~ N(0, (1e-3)^2), the code's ``0.000399`` [PCDEDD ``DARTS-V1-100.py`` comment].
* ``pcd_temperatures``: the periodic ("cyclic") schedule of [PCDEDD ``train_search_cyc.py``]:
  before ``final_epoch`` (40) epoch e runs at ``cycle[e % 10]``, the cycle going down from 1 to
  T_5 and back up: [1, T_1, ..., T_5, T_4, ..., T_1]; from ``final_epoch`` on T_{(e % 10) + 1},
  falling monotonically to T_10 (d = 0.11: 3.82e-3 ... 5.38e-4).
* ``edd_update``: the entropy-adaptive schedule of [PCDEDD ``train_search_pl.py``]: T = 1 until
  epoch ``warmup`` (5); at that epoch and every ``interval`` (5) epochs after it (every epoch from
  ``final_epoch`` = 40 on), with H = the mean over the normal cell's edges of the entropy of
  softmax(alpha_n / T) (natural log): d <- rho k H + (1 - rho) d (rho 0.5, k 0.06 before
  ``final_epoch`` and 0.12 from it), T <- mu / ln(1 + d c), c <- c + 1 (c from 1, d from 0). A
  flat distribution (high entropy) lowers T faster.
* ``mixed_sparsity``: SP-DARTS [SP ``train_search_mf.py``]: after ``warmup`` epochs (1) the base
  temperature is T_b = 1e-3 and each step runs at T_b with probability C, else at ``ratio`` T_b
  (10 T_b), C = (e - warmup + 1) / (E - warmup) rising linearly to 1; in warm-up T_b = 1 and C = 0,
  so the steps run at 10. The alpha step and the weight step of a step share the draw.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["TEMPERATURE", "MU", "exp_temperature", "pcd_temperatures", "edd_init", "edd_update", "mixed_sparsity",
           "frozen_leaves", "current"]

TEMPERATURE = "temperature"  # the key of the schedule state in the architecture parameters
MU = 3.99e-4


def exp_temperature(i, d: float, mu: float = MU):
  """T_i = mu / ln(1 + d i), and 1 at i = 0 (NumPy or traced)."""
  i = jnp.asarray(i, jnp.float32)
  return jnp.where(i > 0, mu / jnp.log1p(d * jnp.maximum(i, 1.0)), 1.0)


def pcd_temperatures(epochs: int, d: float = 0.11, cycle: int = 10, final_epoch: int = 40, mu: float = MU) -> np.ndarray:
  """The per-epoch temperatures of the periodic schedule (see the module docstring)."""
  if cycle < 2 or cycle % 2:
    raise ValueError(f"cycle must be an even number >= 2, got {cycle}")
  t = lambda i: 1.0 if i == 0 else mu / math.log(1.0 + d * i)
  half = [t(i) for i in range(cycle // 2 + 1)]
  down_up = half + half[::-1][1:-1]
  final = [t(i) for i in range(1, cycle + 1)]
  return np.asarray([down_up[e % cycle] if e < final_epoch else final[e % cycle] for e in range(epochs)], np.float32)


def edd_init() -> dict:
  return {"T": jnp.ones((), jnp.float32), "d": jnp.zeros((), jnp.float32), "c": jnp.ones((), jnp.float32)}


def edd_update(state: dict, alpha_normal, epoch, *, warmup: int = 5, interval: int = 5, final_epoch: int = 40,
               k: tuple = (0.06, 0.12), rho: float = 0.5, mu: float = MU) -> dict:
  """The schedule state for ``epoch`` (traced), from the state of the previous epoch and the normal
  cell's alphas at the end of it (see the module docstring)."""
  epoch = jnp.asarray(epoch)
  p = jax.nn.softmax(alpha_normal / state["T"], axis=-1)
  h = -jnp.mean(jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1))
  late = epoch >= final_epoch
  due = (epoch == warmup) | ((epoch > warmup) & (late | (epoch % interval == 0)))
  d = rho * jnp.where(late, k[1], k[0]) * h + (1 - rho) * state["d"]
  new = {"T": mu / jnp.log1p(d * state["c"]), "d": d, "c": state["c"] + 1.0}
  return jax.tree.map(lambda n, o: jnp.where(due, n, o).astype(o.dtype), new, state)


def mixed_sparsity(key, epoch, *, epochs: int, warmup: int = 1, base: float = 1e-3, ratio: float = 10.0) -> dict:
  """``{'T': this step's temperature, 'T_base': the epoch's base temperature, 'C': the chance of
  T_base}`` for a step of ``epoch`` (traced), drawing with ``key``."""
  epoch = jnp.asarray(epoch, jnp.float32)
  warm = epoch < warmup
  t_base = jnp.where(warm, 1.0, base)
  c = jnp.where(warm, 0.0, jnp.minimum((epoch - warmup + 1) / max(epochs - warmup, 1), 1.0))
  sparse = jax.random.uniform(key) < c
  return {"T": jnp.where(sparse, t_base, ratio * t_base).astype(jnp.float32), "T_base": t_base.astype(jnp.float32),
          "C": c.astype(jnp.float32)}


def frozen_leaves(arch) -> dict:
  """The optax mask of an architecture dict: False for the schedule state, True elsewhere."""
  return {k: (jax.tree.map(lambda _: False, v) if k == TEMPERATURE else True) for k, v in arch.items()}


def current(arch, name: str = "T"):
  """The schedule's temperature ``name`` in ``arch`` (under stop_gradient)."""
  return jax.lax.stop_gradient(arch[TEMPERATURE][name])
