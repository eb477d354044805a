"""Diagnostics of a search state: the dominant Hessian eigenvalue of the validation loss with respect
to the architecture (R-DARTS), the entropy of the edge weights, the share of skip-connects.

R-DARTS [Zela et al. 2020; automl/RobustDARTS ``src/search/analyze.py``] builds the full Hessian
H = d^2 L_val / d alpha^2 over (alpha_normal, alpha_reduce) (224 x 224 in the DARTS space) row by row
by double backward, on the last validation batch of the epoch with the network in train mode (batch
statistics), with the alpha L2 term in the gradient (so H includes arch_wd * I), and reports
lambda_max = max eig(H). Here H is never formed: Lanczos iteration (full reorthogonalisation) on
Hessian-vector products, by a central difference of two alpha gradients (default; the memory of one
backward pass) or exactly,

  H v = d/d alpha < d L_val / d alpha, v >        (reverse over reverse: the custom-VJP kernels of
                                                    ``jnas.kernels`` have no forward-mode rule)

gives the extreme eigenvalues of the Krylov tridiagonal matrix T_k; with k = dim they are H's, and
the largest converges first. Everything is a pure function of (state, batch): ``jax.vmap`` batches
it over seeds.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

HVPS = ("fd", "exact")

__all__ = ["lanczos_extremes", "arch_hessian_eigenvalue", "edge_entropy", "skip_share"]


def lanczos_extremes(hvp: Callable, v0: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
  """``(lambda_max, lambda_min)`` of the symmetric operator ``hvp`` (vector -> vector) after ``iters``
  Lanczos steps from ``v0`` (full reorthogonalisation against every earlier Lanczos vector).

  With ``iters`` equal to the dimension (and a ``v0`` not orthogonal to any eigenvector) the values
  are exact up to rounding. An invariant subspace reached early (beta ~ 0) ends the recursion: the
  remaining rows of T stay empty and are left out of its spectrum.
  """
  n = v0.shape[0]
  iters = int(min(iters, n))
  dtype = v0.dtype
  V = jnp.zeros((iters + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
  alphas = jnp.zeros((iters,), dtype)
  betas = jnp.zeros((iters,), dtype)
  live = jnp.zeros((iters,), bool)

  def body(j, carry):
    V, alphas, betas, live, on = carry
    v = V[j]
    w = hvp(v)
    a = jnp.vdot(w, v)
    w = w - a * v - jnp.where(j > 0, betas[j - 1], 0.0) * V[jnp.maximum(j - 1, 0)]
    w = w - V.T @ (V @ w)  # full reorthogonalisation (rows not yet filled are zero)
    w = w - V.T @ (V @ w)
    b = jnp.linalg.norm(w)
    scale = jnp.maximum(1e-30, jnp.max(jnp.abs(alphas)) + jnp.abs(a))
    alive_next = on & (b > 1e-7 * scale)
    V = V.at[j + 1].set(jnp.where(alive_next, w / jnp.where(b > 0, b, 1.0), 0.0))
    return V, alphas.at[j].set(jnp.where(on, a, 0.0)), betas.at[j].set(jnp.where(alive_next, b, 0.0)), \
        live.at[j].set(on), alive_next

  _, alphas, betas, live, _ = jax.lax.fori_loop(0, iters, body, (V, alphas, betas, live, jnp.ones((), bool)))
  # Rows past an early stop are decoupled (beta = 0); giving them alpha_0, a Rayleigh quotient of the
  # live block, keeps them inside its spectrum, so they change neither extreme.
  alphas = jnp.where(live, alphas, alphas[0])
  T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
  evals = jnp.linalg.eigvalsh(T)
  return evals[-1], evals[0]


def _select(arch, keys: Sequence[str] | None):
  if keys is None or not isinstance(arch, dict):
    return arch, lambda sub: sub
  chosen = {k: arch[k] for k in keys if k in arch}
  if not chosen:
    return arch, lambda sub: sub
  return chosen, lambda sub: {**arch, **sub}


def arch_hessian_eigenvalue(method, state, batch, *, key=None, iters: int = 20,
                            arch_keys: Sequence[str] | None = ("normal", "reduce"), l2: float = 0.0,
                            hvp: str = "fd", fd_epsilon: float = 1e-2) -> dict:
  """``{'hessian_max', 'hessian_min'}``: extreme eigenvalues of d^2 L / d alpha^2 for one seed.

  Args:
    method: a ``SearchMethod`` (its ``loss``: the supernet loss at given arch parameters).
    state: the seed's ``SearchState``; batch: ``(images, labels)``, normalised (R-DARTS: the last
      validation batch of the epoch).
    key: PRNG key for the Lanczos start vector and a stochastic method's draws (fixed per call, so
      the loss is one function of alpha); None: ``state.key``.
    iters: Lanczos steps (at most the number of arch parameters; 20 resolves lambda_max of the
      224 DARTS alphas to a few digits in the tests' supernets).
    arch_keys: the arch entries the Hessian is taken over (R-DARTS: the alphas of both cells; a
      method's other parameters, e.g. PC-DARTS's betas, are held fixed); None: all of them.
    l2: add l2 * I (R-DARTS: its alpha weight decay 1e-3 enters its gradient; default 0, the Hessian
      of the loss alone).
    hvp: 'fd' (default): H v = (g(a + r v) - g(a - r v)) / 2r, r = ``fd_epsilon`` (v has unit norm;
      DARTS's finite difference uses 0.01 / |v| too): two gradients per Lanczos step, the memory of
      one backward pass. 'exact': reverse over reverse, exact to rounding, but it keeps the
      backward pass's residuals: at paper size (C=16, 8 cells, batch 64) it needs 28 GB on XLA:CPU.
    The loss is ``method.loss`` as the method's step uses it: BN in train mode (batch statistics),
    as R-DARTS measures it.
  """
  if method.loss is None:
    raise ValueError("this method exposes no loss of the arch parameters (SearchMethod.loss); "
                     "the Hessian monitor needs one")
  key = state.key if key is None else key
  k_v, k_loss = jax.random.split(jax.random.fold_in(key, 0x4E55))
  sub, merge = _select(state.arch, arch_keys)
  flat, unravel = ravel_pytree(sub)

  def loss(vec):
    return method.loss(state.params, state.batch_stats, merge(unravel(vec)), batch, k_loss, state.step)[0]

  grad = jax.grad(loss)
  if hvp not in HVPS:
    raise ValueError(f"unknown hvp {hvp!r}; use one of {HVPS}")

  def exact(v):
    return jax.grad(lambda a: jnp.vdot(grad(a), v))(flat) + l2 * v

  def central(v):
    r = jnp.asarray(fd_epsilon, flat.dtype)
    return (grad(flat + r * v) - grad(flat - r * v)) / (2 * r) + l2 * v

  v0 = jax.random.normal(k_v, flat.shape, flat.dtype)
  big, small = lanczos_extremes(exact if hvp == "exact" else central, v0, iters)
  return {"hessian_max": big, "hessian_min": small}


def edge_entropy(weights) -> jax.Array:
  """Mean over the edges of both cells of the entropy (nats) of an edge's op weights; ``weights``:
  ``{'normal': (E, O), 'reduce': (E, O)}`` rows on the simplex (other entries are ignored)."""
  rows = [jnp.asarray(weights[k]) for k in ("normal", "reduce") if k in weights]
  w = jnp.concatenate(rows, axis=0)
  ent = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), axis=-1)
  return jnp.mean(ent)


def skip_share(genotype) -> float:
  """Share of the normal cell's ops that are ``skip_connect`` (DARTS's failure mode), host side."""
  if genotype is None or not genotype.normal:
    return float("nan")
  return float(np.mean([pair[0] == "skip_connect" for pair in genotype.normal]))
