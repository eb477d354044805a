"""The splits of the protocol: search (weights / alphas), hold-out validation, retraining.

* Search [DARTS-P App. A.1.1; YANG §3.1]: the training set is split in two halves, one to train the
  weights w and one (the "val" half) to train the architecture alphas. The test set is not used.
* Hold-out: a validation split carved from the training set, so that model selection (e.g.
  choosing among searched cells, or early stopping) never sees the test set [YANG §6].
* Retraining [DARTS-C train.py]: all training data; accuracy reported on the test set.

Splits are drawn once on the host (NumPy, deterministic in the seed) and do not depend on the device.
"""

from __future__ import annotations

import numpy as np

from jnas.data.dataset import Dataset, Split


def search_split(train: Split, *, seed: int = 2, portion: float = 0.5, shuffle: bool = True) -> tuple[Split, Split]:
  """Splits the training set into the weight half and the alpha half of a DARTS search.

  With ``shuffle=True`` the images are assigned by a permutation drawn from ``seed``. With
  ``shuffle=False`` this is quark0/darts's rule (``train_search.py``: ``indices[:split]`` for the
  weights, ``indices[split:]`` for alphas, ``split = floor(portion * N)``), also used by pt.darts.

  Args:
    train: the training split.
    seed: NumPy seed of the permutation (DARTS-C default seed 2); unused when ``shuffle=False``.
    portion: fraction of the images for the weights (``--train_portion``, 0.5 in DARTS).
    shuffle: draw the halves at random (True) or take the first and second part (False).

  Returns:
    ``(weights_split, alphas_split)``, disjoint, together all of ``train``.
  """
  return _split(train, first=int(np.floor(portion * len(train.labels))), seed=seed, shuffle=shuffle,
                what="search_split")


def holdout_split(train: Split, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[Split, Split]:
  """Carves a random validation split of ``round(val_fraction * N)`` images out of ``train``.

  Returns:
    ``(train_rest, val)``, disjoint.
  """
  n = len(train.labels)
  return _split(train, first=n - int(round(val_fraction * n)), seed=seed, shuffle=True, what="holdout_split")


def retrain_split(ds: Dataset) -> tuple[Split, Split]:
  """The retraining protocol's data: ``(all training data, test set)``."""
  return ds.train, ds.test


def _split(s: Split, *, first: int, seed: int, shuffle: bool, what: str) -> tuple[Split, Split]:
  n = len(s.labels)
  if not 0 < first < n:
    raise ValueError(f"{what}: {n} images would give parts of {first} and {n - first}; both must be non-empty")
  idx = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
  a, b = np.sort(idx[:first]), np.sort(idx[first:])  # sorted: keep the source order within each part
  return Split(s.images[a], s.labels[a]), Split(s.images[b], s.labels[b])
