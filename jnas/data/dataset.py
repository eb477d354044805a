"""The in-memory dataset: uint8 NHWC images and int32 labels, checked once on the host.

Every source (`jnas.data.sources`, `jnas.data.folder`) returns a `Dataset` built by `make_dataset`,
which checks shapes, dtypes and label ranges and says what it expected, so that bad input fails here
with a clear message and never as a JAX traceback inside `jit`.

A `Split` is a pytree of two arrays, so ``jax.device_put(ds.train)`` moves a split to the device once;
batching (`jnas.data.batches`) and augmentation (`jnas.data.augment`) then run inside `jit`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

# Normalisation constants, per channel, for images scaled to [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # DARTS-C utils `_data_transforms_cifar10`
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)  # the usual PyTorch CIFAR-100 values (not in the spec)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)  # LHD search/utils.py `_data_transforms_svhn`
SVHN_STD = (0.1980, 0.2010, 0.1970)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # NB:DARTS/preproc.py, torchvision
IMAGENET_STD = (0.229, 0.224, 0.225)


class Split(NamedTuple):
  """One split: ``images`` (N, H, W, C) uint8 and ``labels`` (N,) int32."""
  images: np.ndarray
  labels: np.ndarray


class Dataset(NamedTuple):
  """A whole dataset on the host.

  Attributes:
    train: the training split (the search splits it further, `jnas.data.splits`).
    test: the test split.
    num_classes: labels lie in ``[0, num_classes)``.
    name: e.g. ``'cifar10'``, ``'digits'``.
    mean, std: per-channel normalisation constants for images scaled to [0, 1].
  """
  train: Split
  test: Split
  num_classes: int
  name: str
  mean: tuple[float, ...]
  std: tuple[float, ...]


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and standard deviation of uint8 ``images`` scaled to [0, 1]."""
  x = images.reshape(-1, images.shape[-1])
  mean = np.zeros(x.shape[1])
  sq = np.zeros(x.shape[1])
  for start in range(0, len(x), 1 << 22):  # chunks: no float64 copy of a whole dataset
    chunk = x[start:start + (1 << 22)].astype(np.float64) / 255.0
    mean += chunk.sum(0)
    sq += (chunk * chunk).sum(0)
  mean /= len(x)
  std = np.sqrt(np.maximum(sq / len(x) - mean * mean, 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def as_images(x: np.ndarray, what: str) -> np.ndarray:
  """Checks images and returns them as uint8 (N, H, W, C); (N, H, W) gains a channel axis."""
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[0] == 0 or min(x.shape[1:]) == 0:
    raise ValueError(f"{what}: expected images of shape (N, H, W, C) or (N, H, W) with N > 0, got shape {x.shape}")
  if x.dtype != np.uint8:
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{what}: expected uint8 images with values 0..255, got dtype {x.dtype} "
                       "(convert float images with (x * 255).round().astype(np.uint8))")
    if x.min() < 0 or x.max() > 255:
      raise ValueError(f"{what}: expected pixel values 0..255, got {x.min()}..{x.max()}")
    x = x.astype(np.uint8)
  return x


def as_labels(y: np.ndarray, n: int, num_classes: int, what: str) -> np.ndarray:
  """Checks integer labels in ``[0, num_classes)``, one per image; returns them as int32 (N,)."""
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1 or len(y) != n:
    raise ValueError(f"{what}: expected {n} labels of shape ({n},), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{what}: expected integer class labels, got dtype {y.dtype}")
  if len(y) and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"{what}: labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
  return y.astype(np.int32)


def make_dataset(train_images, train_labels, test_images, test_labels, *, name: str,
                 num_classes: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, what: str | None = None) -> Dataset:
  """Checks and assembles a `Dataset`.

  Args:
    train_images, test_images: uint8 (N, H, W, C) or (N, H, W); both splits must share H, W, C.
    train_labels, test_labels: integer labels (N,).
    name: dataset name.
    num_classes: default ``1 + max(train_labels)``.
    mean, std: normalisation constants in [0, 1] units; default: the training split's statistics.
    what: where the arrays came from, for error messages (default ``name``).
  """
  what = what or name
  xtr = as_images(train_images, f"{what} (train images)")
  xte = as_images(test_images, f"{what} (test images)")
  if xtr.shape[1:] != xte.shape[1:]:
    raise ValueError(f"{what}: train and test images must have the same (H, W, C), "
                     f"got {xtr.shape[1:]} and {xte.shape[1:]}")
  if num_classes is None:
    ytr = np.asarray(train_labels)
    num_classes = int(ytr.max()) + 1 if ytr.size and np.issubdtype(ytr.dtype, np.integer) else 1
  ytr = as_labels(train_labels, len(xtr), num_classes, f"{what} (train labels)")
  yte = as_labels(test_labels, len(xte), num_classes, f"{what} (test labels)")
  if mean is None or std is None:
    mean, std = channel_stats(xtr)
  c = xtr.shape[-1]
  if len(mean) != c or len(std) != c:
    raise ValueError(f"{what}: mean and std need one value per channel ({c}), got {len(mean)} and {len(std)}")
  return Dataset(Split(xtr, ytr), Split(xte, yte), int(num_classes), name,
                 tuple(float(m) for m in mean), tuple(float(s) for s in std))


def validate_dataset(ds: Dataset, what: str) -> None:
  """Raises ValueError unless ``ds`` is what `make_dataset` would have built."""
  make_dataset(*ds.train, *ds.test, name=ds.name, num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
               what=what)
