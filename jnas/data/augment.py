"""CIFAR augmentation inside `jit`: random crop, flip, (AutoAugment), normalise, cutout.

Each transform is a pure function ``f(key, images, ...)`` of one batch (B, H, W, C) that draws its
randomness per sample from ``key``. Shapes are general (the crop size is the input size), so the same
code runs on 32x32 CIFAR and on 8x8 or 16x16 test images, with any channel count (pass ``mean`` and
``std`` with one value per channel). Under ``jax.vmap`` over seeds, each seed gets its own draws.

The training pipeline is DARTS-C ``utils._data_transforms_cifar10``::

  RandomCrop(32, padding=4) -> RandomHorizontalFlip() -> [AutoAugment CIFAR10Policy] -> ToTensor()
  -> Normalize(CIFAR_MEAN, CIFAR_STD) -> [Cutout(16)]

with AutoAugment between flip and normalisation as in NB:Augmentation/preproc.py [YANG §4], and
cutout after normalisation, always applied (DARTS-C utils ``Cutout``). The test pipeline is
normalisation only. Images stay uint8 up to normalisation, which returns float32.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jnas.data.autoaugment import cifar10_autoaugment
from jnas.data.dataset import CIFAR10_MEAN, CIFAR10_STD


def check_batch(images: jax.Array, what: str, *, uint8: bool = False) -> None:
  """Raises ValueError unless ``images`` is a batch (B, H, W, C) (and uint8 if asked), at trace time."""
  if images.ndim != 4:
    raise ValueError(f"{what}: expected a batch of images (B, H, W, C), got shape {images.shape}")
  if uint8 and images.dtype != jnp.uint8:
    raise ValueError(f"{what}: expected uint8 images (0..255), got {images.dtype}")


def random_crop(key: jax.Array, images: jax.Array, *, padding: int = 4) -> jax.Array:
  """torchvision ``RandomCrop((H, W), padding)``: zero-pad ``padding`` pixels on each side, then take
  the H x W window at a uniform offset in ``[0, 2 * padding]^2``, per sample. Keeps dtype."""
  check_batch(images, "random_crop")
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
  return jax.vmap(lambda im, o: lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array, *, p: float = 0.5) -> jax.Array:
  """torchvision ``RandomHorizontalFlip(p)``: mirror the W axis of each sample with probability p."""
  check_batch(images, "random_flip")
  flip = jax.random.bernoulli(key, p, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """torchvision ``ToTensor`` + ``Normalize``: ``(x - mean) / std`` per channel, float32.

  uint8 input is first scaled to [0, 1] by ``x / 255``; float input is taken to be in [0, 1] already.
  """
  c = images.shape[-1]
  if len(mean) != c or len(std) != c:
    raise ValueError(f"normalize: mean and std need one value per channel ({c}), got {len(mean)} and {len(std)}")
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  shape = (1,) * (images.ndim - 1) + (c,)
  return (x - jnp.asarray(mean, jnp.float32).reshape(shape)) / jnp.asarray(std, jnp.float32).reshape(shape)


def cutout(key: jax.Array, images: jax.Array, *, length: int = 16) -> jax.Array:
  """DARTS-C utils ``Cutout(length)``: per sample, zero the square ``[y - L//2, y + L//2) x
  [x - L//2, x + L//2)`` around a centre (y, x) uniform over the pixels, clipped at the border (so
  it may lie partly outside). Applied after normalisation, so zero is the mean colour."""
  check_batch(images, "cutout")
  b, h, w, _ = images.shape
  cy = jax.random.randint(jax.random.fold_in(key, 0), (b, 1), 0, h)
  cx = jax.random.randint(jax.random.fold_in(key, 1), (b, 1), 0, w)
  ys, xs = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
  in_y = (ys >= cy - length // 2) & (ys < cy + length // 2)  # (B, H)
  in_x = (xs >= cx - length // 2) & (xs < cx + length // 2)  # (B, W)
  keep = ~(in_y[:, :, None, None] & in_x[:, None, :, None])  # (B, H, W, 1)
  return jnp.where(keep, images, jnp.zeros((), images.dtype))


def cifar_augment(key: jax.Array, images: jax.Array, *, mean: Sequence[float] = CIFAR10_MEAN,
                  std: Sequence[float] = CIFAR10_STD, padding: int = 4, cutout_length: int = 16,
                  autoaugment: bool = False) -> jax.Array:
  """The DARTS CIFAR training transform on a uint8 batch; returns float32 (B, H, W, C).

  crop (zero padding ``padding``) -> flip -> [AutoAugment, CIFAR-10 policy] -> normalise -> [cutout].

  Args:
    key: PRNG key; split four ways, one per transform.
    images: (B, H, W, C) uint8.
    mean, std: per-channel constants (default CIFAR-10's, DARTS-C utils).
    padding: crop padding (4 in DARTS).
    cutout_length: 16 when retraining (DARTS-C ``--cutout_length``); 0 turns cutout off, as in the
      DARTS search (``train_search.py`` has no cutout).
    autoaugment: apply `cifar10_autoaugment` after the flip (the "AA" protocol of YANG §4).
  """
  check_batch(images, "cifar_augment", uint8=True)
  k_crop, k_flip, k_aa, k_cut = jax.random.split(key, 4)
  x = random_flip(k_flip, random_crop(k_crop, images, padding=padding))
  if autoaugment:
    x = cifar10_autoaugment(k_aa, x)
  x = normalize(x, mean, std)
  return cutout(k_cut, x, length=cutout_length) if cutout_length else x


def cifar_test_transform(images: jax.Array, *, mean: Sequence[float] = CIFAR10_MEAN,
                         std: Sequence[float] = CIFAR10_STD) -> jax.Array:
  """The DARTS CIFAR test transform: normalisation only; uint8 (B, H, W, C) -> float32."""
  check_batch(images, "cifar_test_transform", uint8=True)
  return normalize(images, mean, std)
