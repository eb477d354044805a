"""Batches on the device: a per-seed epoch permutation, and a batch is a gather from it.

The dataset stays on the device as uint8 (N, H, W, C); each epoch draws a permutation of ``N`` from
the seed's key, and batch ``i`` is the images at ``perm[i * B : (i + 1) * B]``. The last
``N mod B`` images of each permutation are dropped (``drop_last=True`` in PyTorch terms), so every
batch has the same shape and one compiled step serves the whole run; which images are dropped
changes from epoch to epoch.

Pass the dataset to the jitted function as an argument: closed over, it would be embedded in the
program as a constant (50k CIFAR images: seconds of compile time and a copy). Many seeds:
``jax.vmap`` over the key and the permutation, with the dataset passed with ``in_axes=None``. XLA
then gathers each seed's batch from the one copy of the dataset; nothing is copied per seed::

  keys = jax.random.split(jax.random.key(0), S)
  perms = jax.vmap(epoch_permutation, (0, None))(jax.random.fold_in(keys, epoch), n)  # (S, N)
  x, y = jax.vmap(get_batch, (None, None, 0, None, None))(images, labels, perms, i, B)  # (S, B, ...)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def num_batches(n: int, batch_size: int) -> int:
  """Full batches per epoch, ``floor(n / batch_size)``: the last partial batch is dropped."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  return n // batch_size


def epoch_permutation(key: jax.Array, n: int) -> jax.Array:
  """A uniformly random permutation of ``range(n)`` (int32), drawn from ``key``.

  Use one key per epoch, e.g. ``jax.random.fold_in(seed_key, epoch)``.
  """
  return jax.random.permutation(key, n).astype(jnp.int32)


def get_batch(images: jax.Array, labels: jax.Array, perm: jax.Array, i, batch_size: int):
  """Batch ``i`` of an epoch: ``images[perm[i*B:(i+1)*B]]``, ``labels[...]``.

  Args:
    images: (N, H, W, C), uint8 on the device.
    labels: (N,).
    perm: (N,) the epoch's permutation (`epoch_permutation`).
    i: batch index in ``[0, num_batches(N, B))``, may be traced. Beyond that range the slice is
      clamped by `lax.dynamic_slice` and repeats the last full batch.
    batch_size: B, a Python int (static under `jit`).

  Returns:
    ``(images (B, H, W, C), labels (B,))``, the dtypes of the inputs.
  """
  n = images.shape[0]
  if labels.shape[:1] != (n,) or perm.shape != (n,):
    raise ValueError(f"get_batch: images {images.shape}, labels {labels.shape} and perm {perm.shape} "
                     f"must all have length N={n}")
  if not 0 < batch_size <= n:
    raise ValueError(f"get_batch: batch_size must lie in [1, {n}], got {batch_size}")
  idx = lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
  return jnp.take(images, idx, axis=0, mode="clip"), jnp.take(labels, idx, axis=0, mode="clip")
