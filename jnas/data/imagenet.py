"""Augmentation for the 224-px datasets (Sport8, MIT67, Flowers102) inside `jit`.

NB:DARTS/preproc.py, for every dataset other than CIFAR [YANG App. A.2]::

  train: RandomResizedCrop(224) -> RandomHorizontalFlip() -> ColorJitter(0.4, 0.4, 0.4, 0.2)
         -> ToTensor() -> Normalize(ImageNet mean, std) [-> Cutout(16) when retraining]
  test:  Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(ImageNet mean, std)

Input: uint8 batches stored at 256 x 256 (`jnas.data.folder`); output float32 (B, 224, 224, 3).
Each transform is a pure function of ``(key, images)`` with per-sample draws.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jnas.data.augment import check_batch, cutout, normalize, random_flip
from jnas.data.dataset import IMAGENET_MEAN, IMAGENET_STD


def random_resized_crop(key: jax.Array, images: jax.Array, *, size: int = 224,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
  """torchvision ``RandomResizedCrop(size, scale, ratio)``; uint8 (B, H, W, C) -> float32 in [0, 1].

  Per sample, torchvision's ``get_params``: up to 10 draws of area ``A ~ U(scale) * H * W`` and
  aspect ``r = exp(U(log ratio))``, box ``w = round(sqrt(A r))``, ``h = round(sqrt(A / r))``; the
  first box that fits is placed uniformly, else the central crop with the ratio clamped. The box is
  resized to ``size`` x ``size`` with antialiased bilinear interpolation
  (`jax.image.scale_and_translate`; PIL's bilinear resize).
  """
  check_batch(images, "random_resized_crop", uint8=True)
  b, height, width, c = images.shape
  k_area, k_ratio, k_i, k_j = jax.random.split(key, 4)
  area = height * width * jax.random.uniform(k_area, (b, 10), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (b, 10), minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
  w = jnp.round(jnp.sqrt(area * aspect))
  h = jnp.round(jnp.sqrt(area / aspect))
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(fits, axis=1)[:, None]
  found = fits.any(axis=1)
  # fallback, torchvision: central crop of the whole image, aspect ratio clamped to `ratio`
  in_ratio = width / height
  if in_ratio < min(ratio):
    fw, fh = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    fw, fh = int(round(height * max(ratio))), height
  else:
    fw, fh = width, height
  w = jnp.where(found, jnp.take_along_axis(w, first, axis=1)[:, 0], fw)
  h = jnp.where(found, jnp.take_along_axis(h, first, axis=1)[:, 0], fh)
  top = jnp.where(found, jnp.floor(jax.random.uniform(k_i, (b,)) * (height - h + 1)), (height - fh) // 2)
  left = jnp.where(found, jnp.floor(jax.random.uniform(k_j, (b,)) * (width - w + 1)), (width - fw) // 2)

  def resize(image, top, left, h, w):
    s = jnp.stack([size / h, size / w])
    return jax.image.scale_and_translate(image.astype(jnp.float32) / 255.0, (size, size, c), (0, 1), s,
                                         -jnp.stack([top, left]) * s, method="linear", antialias=True)

  return jax.vmap(resize)(images, top, left, h, w)


def color_jitter(key: jax.Array, images: jax.Array, *, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.2) -> jax.Array:
  """torchvision ``ColorJitter`` on float RGB (B, H, W, 3) in [0, 1]; returns the same.

  Per sample: factors ``b, c, s ~ U[max(0, 1 - x), 1 + x]``, ``h ~ U[-hue, hue]``, applied in a random
  order (torchvision draws ``randperm(4)``), with torchvision's tensor formulas: brightness
  ``b x``; contrast ``mean(gray) + c (x - mean(gray))``; saturation ``gray + s (x - gray)``
  (gray = 0.2989 R + 0.587 G + 0.114 B); each clipped to [0, 1]; hue shifts H in HSV by h.
  """
  check_batch(images, "color_jitter")
  if images.shape[-1] != 3:
    raise ValueError(f"color_jitter: expected RGB images (C = 3), got shape {images.shape}")
  b = images.shape[0]
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)

  def factor(k, x):
    return jax.random.uniform(k, (b, 1, 1, 1), minval=max(0.0, 1 - x), maxval=1 + x)

  fb, fc, fs = factor(k_b, brightness), factor(k_c, contrast), factor(k_s, saturation)
  fh = jax.random.uniform(k_h, (b, 1, 1), minval=-hue, maxval=hue)
  order = jnp.argsort(jax.random.uniform(k_order, (b, 4)), axis=1)  # a random permutation per sample

  def step(t, x):  # a loop, not 4 unrolled copies: a quarter of the program to compile
    gray = _gray(x)
    mean = jnp.mean(gray, axis=(1, 2, 3), keepdims=True)
    candidates = jnp.stack([
        jnp.clip(fb * x, 0, 1),
        jnp.clip(mean + fc * (x - mean), 0, 1),
        jnp.clip(gray + fs * (x - gray), 0, 1),
        _shift_hue(x, fh),
    ])  # (4, B, H, W, 3)
    return jnp.take_along_axis(candidates, order[None, :, t, None, None, None], axis=0)[0]

  return jax.lax.fori_loop(0, 4, step, images.astype(jnp.float32))


def imagenet_train_augment(key: jax.Array, images: jax.Array, *, size: int = 224,
                           mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                           jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.2),
                           cutout_length: int = 16) -> jax.Array:
  """NB:DARTS/preproc.py training transform: uint8 (B, H, W, 3) -> float32 (B, size, size, 3).

  random resized crop -> flip -> colour jitter (brightness, contrast, saturation, hue; None: off)
  -> normalise -> cutout (``cutout_length`` 16 when retraining, 0 when searching).
  """
  k_crop, k_flip, k_jit, k_cut = jax.random.split(key, 4)
  x = random_flip(k_flip, random_resized_crop(k_crop, images, size=size))
  if jitter is not None:
    x = color_jitter(k_jit, x, brightness=jitter[0], contrast=jitter[1], saturation=jitter[2], hue=jitter[3])
  x = normalize(x, mean, std)
  return cutout(k_cut, x, length=cutout_length) if cutout_length else x


def imagenet_test_transform(images: jax.Array, *, size: int = 224, resize: int = 256,
                            mean: Sequence[float] = IMAGENET_MEAN,
                            std: Sequence[float] = IMAGENET_STD) -> jax.Array:
  """``Resize(resize)`` (shorter side; a no-op on the stored 256 x 256 squares) -> ``CenterCrop(size)``
  -> normalise; uint8 (B, H, W, C) -> float32 (B, size, size, C)."""
  check_batch(images, "imagenet_test_transform", uint8=True)
  b, h, w, c = images.shape
  x = images.astype(jnp.float32) / 255.0
  if min(h, w) != resize:
    h, w = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    x = jax.image.resize(x, (b, h, w, c), method="linear", antialias=True)
  if min(h, w) < size:
    raise ValueError(f"imagenet_test_transform: images of {h}x{w} are smaller than the {size}x{size} crop")
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return normalize(x[:, top:top + size, left:left + size], mean, std)


def _gray(x: jax.Array) -> jax.Array:
  """torchvision ``rgb_to_grayscale``: 0.2989 R + 0.587 G + 0.114 B, keeping a channel axis."""
  return 0.2989 * x[..., :1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:]


def _shift_hue(x: jax.Array, shift: jax.Array) -> jax.Array:
  """torchvision ``adjust_hue``: RGB -> HSV, H <- (H + shift) mod 1, HSV -> RGB (``_rgb2hsv``, ``_hsv2rgb``)."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc, minc = jnp.max(x, axis=-1), jnp.min(x, axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  s = cr / jnp.where(eqc, 1.0, maxc)
  crd = jnp.where(eqc, 1.0, cr)
  rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
  hr = jnp.where(maxc == r, bc - gc, 0.0)
  hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
  hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
  h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
  h = jnp.mod(h + shift, 1.0)
  v = maxc
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  sectors = jnp.stack([jnp.stack(c, axis=-1) for c in
                       ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])  # (6, ..., 3)
  return jnp.take_along_axis(sectors, i[None, ..., None], axis=0)[0]
