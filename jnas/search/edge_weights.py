"""Edge-weight functions: from architecture parameters to the mixing weights the supernet takes.

Each function maps one cell type's parameters (E, n_ops) (and a PRNG key where it samples) to
weights (E, n_ops); ``per_cell_type`` applies one to every cell type of a parameter dict.
Temperatures are ordinary (traced) arguments, so a schedule never recompiles a step.

* ``softmax(alpha, tau)``: DARTS Eq. 2, softmax(alpha / tau) over each edge's ops.
* ``tempered_softmax(alpha, T, bypass)``: softmax(alpha / T) (a small T sparsifies the mixture);
  with ``bypass`` its alpha gradient also gets the T = 1 softmax's, J_{softmax(./T)}^T g +
  J_{softmax}^T g, where T != 1: the value is softmax(alpha / T) + softmax(alpha) -
  sg(softmax(alpha)) [PCDEDD ``architect_cyc.py``: a hook on the weights adds
  softmax(alpha_n).backward(grad)], a way around the saturated gradient at small T.
* ``masked_softmax(alpha, mask)``: the softmax over the ops a mask keeps (P-DARTS's per-edge
  subsets); pruned ops get exactly 0.
* ``gumbel_softmax(key, logits, tau)``: SNAS's relaxed sample softmax((logits + G) / tau), G
  i.i.d. Gumbel(0, 1) [SNAS ``_get_categ_mask``: the parameter is log alpha, used as it is].
* ``gumbel_hard(key, alpha, tau)``: GDAS's straight-through sample [xautodl
  ``get_gumbel_prob``]: p = softmax((log_softmax(alpha) + G) / tau), k = argmax p,
  h = onehot(k) - sg(p) + p. Its value is one-hot, its gradient that of p. Feed h to a supernet
  with ``single_path=True``: it computes sum_o onehot_o (o(x) h_o) = h_k o_k(x), so d/dalpha
  reaches only p_k. (Computing every op and summing h_o o(x) has the same value but a different,
  wrong alpha gradient: h_o = 0 + (p_o - sg(p_o)) lets every op's output into it.)
* ``dirichlet(key, theta, mask)``: DrNAS: w ~ Dir(ELU(theta) + 1) per edge, reparameterised
  (``jax.random.dirichlet`` differentiates through its gamma draws by implicit
  reparameterisation, the counterpart of PyTorch's ``rsample``); with a mask,
  w <- w m / sum(w m), which is a Dirichlet over the kept ops.
* ``edge_normalization(beta, steps)``: PC-DARTS's per-node softmax over a node's incoming edges,
  (E,) from (E,).
* ``uniform_architecture(key, steps, num_ops)``: a one-hot architecture drawn as random search
  with weight sharing does [liamcli ``sample_arch``]: per node 2 distinct inputs uniform among
  its predecessors, and on each an op uniform over all ops (``none`` included); other edges 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jnas import space

__all__ = ["softmax", "tempered_softmax", "masked_softmax", "gumbel_softmax", "gumbel_hard", "dirichlet", "dirichlet_mean",
           "edge_normalization", "uniform_architecture", "per_cell_type", "node_segments"]


def softmax(alpha, tau=1.0):
  """softmax(alpha / tau) over the last axis (tau = 1 is DARTS; small tau sharpens)."""
  return jax.nn.softmax(alpha / tau, axis=-1)


def tempered_softmax(alpha, T, bypass: bool = False):
  """softmax(alpha / T); with ``bypass`` (and T != 1) the T = 1 softmax's Jacobian joins the
  gradient (see the module docstring). T is traced (a schedule never recompiles)."""
  p = jax.nn.softmax(alpha / T, axis=-1)
  if not bypass:
    return p
  smooth = jax.nn.softmax(alpha, axis=-1)
  return p + jnp.where(jnp.isclose(T, 1.0), 0.0, 1.0) * (smooth - jax.lax.stop_gradient(smooth))


def masked_softmax(alpha, mask):
  """softmax over the entries where ``mask`` is true (every row must keep one); 0 elsewhere."""
  logits = jnp.where(mask, alpha, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


def gumbel_softmax(key, logits, tau):
  """The relaxed categorical (concrete) sample softmax((logits + G) / tau) of SNAS."""
  g = jax.random.gumbel(key, jnp.shape(logits), jnp.result_type(logits))
  return jax.nn.softmax((logits + g) / tau, axis=-1)


def gumbel_hard(key, alpha, tau):
  """GDAS's straight-through Gumbel sample: ``(h, index, p)`` (see the module docstring).

  xautodl redraws while G or p holds inf or NaN; ``jax.random.gumbel`` draws from an open interval,
  so G is always finite, and p is a softmax of finite numbers.
  """
  g = jax.random.gumbel(key, jnp.shape(alpha), jnp.result_type(alpha))
  p = jax.nn.softmax((jax.nn.log_softmax(alpha, axis=-1) + g) / tau, axis=-1)
  index = jnp.argmax(p, axis=-1)
  onehot = jax.nn.one_hot(index, alpha.shape[-1], dtype=p.dtype)
  return onehot - jax.lax.stop_gradient(p) + p, index, p


def concentration(theta):
  """DrNAS's Dirichlet concentration ELU(theta) + 1 (> 0)."""
  return jax.nn.elu(theta) + 1.0


def dirichlet(key, theta, mask=None):
  """A reparameterised Dirichlet sample per edge, Dir(ELU(theta) + 1), renormalised over ``mask``."""
  w = jax.random.dirichlet(key, concentration(theta), dtype=jnp.result_type(theta))
  if mask is not None:
    w = w * mask
    w = w / jnp.sum(w, axis=-1, keepdims=True)
  return w


def dirichlet_mean(theta, mask=None):
  """E[w] = beta / sum(beta) (renormalised over ``mask``): the deterministic weights for eval."""
  b = concentration(theta)
  if mask is not None:
    b = b * mask
  return b / jnp.sum(b, axis=-1, keepdims=True)


def node_segments(steps: int) -> list[tuple[int, int]]:
  """(lo, hi) rows of each node's incoming edges: [(0, 2), (2, 5), (5, 9), (9, 14)] for 4 nodes."""
  out, lo = [], 0
  for j in range(steps):
    out.append((lo, lo + j + space.NUM_INPUTS))
    lo += j + space.NUM_INPUTS
  return out


def edge_normalization(beta, steps: int = space.STEPS):
  """PC-DARTS's edge weights: softmax of beta over each node's incoming edges (static slices)."""
  return jnp.concatenate([jax.nn.softmax(beta[lo:hi]) for lo, hi in node_segments(steps)])


def uniform_architecture(key, steps: int, num_ops: int, dtype=jnp.float32):
  """A one-hot (E, num_ops) architecture: per node 2 distinct inputs, each with a uniform op."""
  k_in, k_op = jax.random.split(key)
  rows, cols = [], []
  for j, (lo, hi) in enumerate(node_segments(steps)):
    scores = jax.random.uniform(jax.random.fold_in(k_in, j), (hi - lo,))
    inputs = jnp.argsort(scores)[:2]  # 2 distinct, uniform without replacement
    rows.append(lo + inputs)
    cols.append(jax.random.randint(jax.random.fold_in(k_op, j), (2,), 0, num_ops))
  rows, cols = jnp.concatenate(rows), jnp.concatenate(cols)
  return jnp.zeros((space.num_edges(steps), num_ops), dtype).at[rows, cols].set(1.0)


def per_cell_type(fn, arch: dict, key=None, cell_types=("normal", "reduce")) -> dict:
  """``{t: fn(arch[t])}`` or, with a key, ``{t: fn(key_t, arch[t])}`` (one draw per cell type,
  shared by all cells of that type, as DARTS-family codes sample)."""
  if key is None:
    return {t: fn(arch[t]) for t in cell_types}
  return {t: fn(jax.random.fold_in(key, i), arch[t]) for i, t in enumerate(cell_types)}


def onehot_rows(index, num_ops: int, dtype=jnp.float32):
  """One-hot rows from op indices (E,) (e.g. argmax of alpha for a single-path evaluation)."""
  return jax.nn.one_hot(index, num_ops, dtype=dtype)


def full_mask(steps: int, num_ops: int) -> np.ndarray:
  return np.ones((space.num_edges(steps), num_ops), bool)
