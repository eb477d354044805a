"""AutoAugment with the CIFAR-10 policy, on uint8 batches inside `jit`.

Cubuk et al., "AutoAugment: Learning Augmentation Policies from Data" (CVPR 2019), CIFAR-10 policy
as implemented by DeepVoltaire/AutoAugment ``CIFAR10Policy`` (the code NAS-Benchmark's
``Augmentation/`` uses [YANG §4]): per image, pick one of 25 sub-policies uniformly; apply each of
its two operations with its probability, at its magnitude (one of 10 bins), with a random sign
where DeepVoltaire draws one (``random.choice([-1, 1])``: shears, translations, Color, Contrast,
Brightness, Sharpness; not Rotate).

Every operation is one of three kinds, which is how it runs fast under `vmap` with no branching:

* an affine warp (ShearX/Y, TranslateX/Y, Rotate) in PIL's ``Image.transform(AFFINE)`` convention:
  the output pixel whose centre is (x, y) = (col + 0.5, row + 0.5) samples the input at
  (a x + b y + c, d x + e y + f); outside the image the fill is 128 (DeepVoltaire's ``fillcolor``);
* a lookup table per channel (AutoContrast, Invert, Equalize, Solarize, Posterize), PIL ``ImageOps``;
* a blend ``degenerate + factor * (image - degenerate)`` (Color, Contrast, Brightness, Sharpness),
  PIL ``ImageEnhance``, with factor ``1 +- magnitude``.

Per image and slot all three are computed and the right one is selected.

Warning: DeepVoltaire shears with bicubic interpolation; here shears are bilinear (translations and
rotations are nearest-neighbour in both). Otherwise every op matches Pillow to within 1 grey level
(float32 here, float64 in Pillow), except that about 1 in 10,000 samples of a nearest-neighbour
rotation, lying within float32 precision of a pixel boundary, takes the neighbouring pixel. The
tests compare every op, magnitude and sign with Pillow (`pillow_op`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",       # affine
       "AutoContrast", "Invert", "Equalize", "Solarize", "Posterize",  # lookup table
       "Contrast", "Color", "Brightness", "Sharpness")                 # blend
IDENTITY = len(OPS)  # op index meaning "leave the image as it is"
FILL = 128

# Magnitude of bin 0..9 for each op: DeepVoltaire SubPolicy `ranges`.
MAGNITUDES = {
    "ShearX": np.linspace(0, 0.3, 10), "ShearY": np.linspace(0, 0.3, 10),
    "TranslateX": np.linspace(0, 150 / 331, 10), "TranslateY": np.linspace(0, 150 / 331, 10),
    "Rotate": np.linspace(0, 30, 10),
    "Color": np.linspace(0.0, 0.9, 10), "Contrast": np.linspace(0.0, 0.9, 10),
    "Sharpness": np.linspace(0.0, 0.9, 10), "Brightness": np.linspace(0.0, 0.9, 10),
    "Posterize": np.round(np.linspace(8, 4, 10), 0),
    "Solarize": np.linspace(256, 0, 10),
    "AutoContrast": np.zeros(10), "Equalize": np.zeros(10), "Invert": np.zeros(10),
}

# The 25 sub-policies ((p1, op1, bin1), (p2, op2, bin2)): DeepVoltaire CIFAR10Policy, in its order.
CIFAR10_POLICY = (
    ((0.1, "Invert", 7), (0.2, "Contrast", 6)),
    ((0.7, "Rotate", 2), (0.3, "TranslateX", 9)),
    ((0.8, "Sharpness", 1), (0.9, "Sharpness", 3)),
    ((0.5, "ShearY", 8), (0.7, "TranslateY", 9)),
    ((0.5, "AutoContrast", 8), (0.9, "Equalize", 2)),
    ((0.2, "ShearY", 7), (0.3, "Posterize", 7)),
    ((0.4, "Color", 3), (0.6, "Brightness", 7)),
    ((0.3, "Sharpness", 9), (0.7, "Brightness", 9)),
    ((0.6, "Equalize", 5), (0.5, "Equalize", 1)),
    ((0.6, "Contrast", 7), (0.6, "Sharpness", 5)),
    ((0.7, "Color", 7), (0.5, "TranslateX", 8)),
    ((0.3, "Equalize", 7), (0.4, "AutoContrast", 8)),
    ((0.4, "TranslateY", 3), (0.2, "Sharpness", 6)),
    ((0.9, "Brightness", 6), (0.2, "Color", 8)),
    ((0.5, "Solarize", 2), (0.0, "Invert", 3)),
    ((0.2, "Equalize", 0), (0.6, "AutoContrast", 0)),
    ((0.2, "Equalize", 8), (0.6, "Equalize", 4)),
    ((0.9, "Color", 9), (0.6, "Equalize", 6)),
    ((0.8, "AutoContrast", 4), (0.2, "Solarize", 8)),
    ((0.1, "Brightness", 3), (0.7, "Color", 0)),
    ((0.4, "Solarize", 5), (0.9, "AutoContrast", 3)),
    ((0.9, "TranslateY", 9), (0.7, "TranslateY", 9)),
    ((0.9, "AutoContrast", 2), (0.8, "Solarize", 3)),
    ((0.8, "Equalize", 8), (0.1, "Invert", 3)),
    ((0.7, "TranslateY", 9), (0.9, "AutoContrast", 1)),
)


def cifar10_autoaugment(key: jax.Array, images: jax.Array) -> jax.Array:
  """AutoAugment CIFAR-10 policy on a uint8 batch (B, H, W, C), C in {1, 3}; returns uint8, same shape.

  Per image: sub-policy ``i ~ U{0..24}``; for each of its two slots, the op is applied if
  ``u < p`` (u ~ U[0, 1)), with sign ``+-1`` drawn with probability 1/2.
  """
  _check(images, "cifar10_autoaugment")
  ops, probs, plus, minus = _policy_tables()
  b = images.shape[0]
  k_sub, k_apply, k_sign = jax.random.split(key, 3)
  sub = jax.random.randint(k_sub, (b,), 0, len(CIFAR10_POLICY))
  apply = jax.random.uniform(k_apply, (b, 2)) < jnp.asarray(probs)[sub]
  op = jnp.where(apply, jnp.asarray(ops)[sub], IDENTITY)
  value = jnp.where(jax.random.bernoulli(k_sign, 0.5, (b, 2)), jnp.asarray(plus)[sub], jnp.asarray(minus)[sub])

  def slot(images, op_and_value):  # a scan over the 2 slots: one copy of the op to compile
    return apply_op(images, *op_and_value), None

  return jax.lax.scan(slot, images, (op.T, value.T))[0]


def op_value(op: str, magnitude: float, sign: int = 1) -> float:
  """The argument DeepVoltaire's ``func[op]`` works with, from a magnitude value and a sign:
  ``m * sign`` for shears and translations (a fraction of the side), the enhance factor
  ``1 + m * sign`` for Color/Contrast/Brightness/Sharpness, degrees for Rotate (no sign), bits
  for Posterize, the threshold for Solarize, unused (0) for the others."""
  if op in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
    return magnitude * sign
  if op in ("Color", "Contrast", "Brightness", "Sharpness"):
    return 1.0 + magnitude * sign
  return float(magnitude)


def _policy_tables():
  """(25, 2) tables of op index, probability, and op value for sign +1 and -1 (in float64, then
  cast, so that e.g. the factor 1 - 0.6 is the float32 nearest 0.4, as Pillow receives it)."""
  ops = np.array([[OPS.index(o) for _, o, _ in sub] for sub in CIFAR10_POLICY], np.int32)
  probs = np.array([[p for p, _, _ in sub] for sub in CIFAR10_POLICY], np.float32)
  plus, minus = (np.array([[op_value(o, MAGNITUDES[o][m], s) for _, o, m in sub] for sub in CIFAR10_POLICY],
                          np.float32) for s in (1, -1))
  return ops, probs, plus, minus


def apply_op(images: jax.Array, op: jax.Array, value: jax.Array) -> jax.Array:
  """Applies op ``OPS[op[i]]`` (or nothing, for `IDENTITY`) with argument ``value[i]`` to image i.

  Args:
    images: (B, H, W, C) uint8, C in {1, 3}.
    op: (B,) int op indices into `OPS`.
    value: (B,) the op's argument, see `op_value`.
  """
  _check(images, "apply_op")
  return jax.vmap(_apply_one)(images, jnp.asarray(op, jnp.int32), jnp.asarray(value, jnp.float32))


def pillow_op(op: str, image, value: float):
  """Reference: DeepVoltaire's ``SubPolicy.func[op]`` on one PIL image, with the sign already in
  ``value`` (`op_value`), and shears bilinear as here (DeepVoltaire: bicubic). The tests check
  `apply_op` against it; `benchmarks/data_pipeline.py` uses it as the host baseline."""
  from PIL import Image, ImageEnhance, ImageOps
  fill = FILL if image.mode == "L" else (FILL,) * len(image.mode)
  if op == "Rotate":  # DeepVoltaire rotate_with_fill: rotate, composite over grey
    rot = image.convert("RGBA").rotate(value)
    return Image.composite(rot, Image.new("RGBA", rot.size, (FILL,) * 4), rot).convert(image.mode)
  w, h = image.size
  affine = {"ShearX": ((1, value, 0, 0, 1, 0), Image.BILINEAR), "ShearY": ((1, 0, 0, value, 1, 0), Image.BILINEAR),
            "TranslateX": ((1, 0, value * w, 0, 1, 0), Image.NEAREST),
            "TranslateY": ((1, 0, 0, 0, 1, value * h), Image.NEAREST)}
  if op in affine:
    return image.transform(image.size, Image.AFFINE, affine[op][0], affine[op][1], fillcolor=fill)
  enhance = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
             "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
  if op in enhance:
    return enhance[op](image).enhance(value)
  return {"Posterize": lambda: ImageOps.posterize(image, int(value)),
          "Solarize": lambda: ImageOps.solarize(image, value),
          "AutoContrast": lambda: ImageOps.autocontrast(image), "Equalize": lambda: ImageOps.equalize(image),
          "Invert": lambda: ImageOps.invert(image)}[op]()


def _check(images: jax.Array, what: str) -> None:
  if images.ndim != 4 or images.dtype != jnp.uint8 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{what}: expected uint8 images (B, H, W, C) with C = 1 or 3, got {images.dtype} "
                     f"{images.shape}")


def _apply_one(image: jax.Array, op: jax.Array, value: jax.Array) -> jax.Array:
  kind = jnp.select([op <= 4, op <= 9, op <= 13], [1, 2, 3], 0)  # 0 identity, 1 affine, 2 lut, 3 blend
  warped = _warp(image, _affine_coefficients(op, value, *image.shape[:2]), nearest=op >= 2)
  looked_up = _lookup(image, op, value)
  blended = _blend(image, op, value)
  return jax.lax.select_n(kind, image, warped, looked_up, blended)


# ----------------------------------------------------------------------------------- affine ops

def _affine_coefficients(op, v, h: int, w: int) -> jax.Array:
  """(a, b, c, d, e, f) of PIL's inverse affine map for ops 0..4 (DeepVoltaire ``func``)."""
  t = -jnp.deg2rad(v)  # PIL Image.rotate(angle): counter-clockwise, about the centre
  cos, sin = jnp.cos(t), jnp.sin(t)
  cx, cy = w / 2.0, h / 2.0
  table = jnp.array([
      [1.0, v, 0.0, 0.0, 1.0, 0.0],  # ShearX: (1, m, 0, 0, 1, 0)
      [1.0, 0.0, 0.0, v, 1.0, 0.0],  # ShearY: (1, 0, 0, m, 1, 0)
      [1.0, 0.0, v * w, 0.0, 1.0, 0.0],  # TranslateX: (1, 0, m * width, 0, 1, 0)
      [1.0, 0.0, 0.0, 0.0, 1.0, v * h],  # TranslateY: (1, 0, 0, 0, 1, m * height)
      [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy],  # Rotate
  ])
  return table[jnp.clip(op, 0, 4)]


def _warp(image: jax.Array, coef: jax.Array, nearest: jax.Array) -> jax.Array:
  """PIL AFFINE transform: nearest samples pixel floor(u, v); bilinear interpolates at (u, v) - 0.5
  with edge clamping and truncates, as Pillow does; points outside [0, W) x [0, H) get `FILL`."""
  h, w, _ = image.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5, jnp.arange(w, dtype=jnp.float32) + 0.5,
                        indexing="ij")
  # Snapped to 1/4096 pixel (well above float32 resolution for images up to 2048 px). XLA may
  # compute u, v once for the indices and again for the weights, one copy with a fused multiply-add
  # and one without; a point exactly on a pixel boundary (common: e.g. a shear of 4/15 at a
  # half-pixel centre) could then fall on both sides of it, and the weights of one pair of rows
  # would be applied to the other. (Pillow computes in float64.)
  u = jnp.round((coef[0] * xs + coef[1] * ys + coef[2]) * 4096.0) / 4096.0
  v = jnp.round((coef[3] * xs + coef[4] * ys + coef[5]) * 4096.0) / 4096.0
  inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
  u = jnp.where(nearest, jnp.floor(u), u - 0.5)
  v = jnp.where(nearest, jnp.floor(v), v - 0.5)
  x0, y0 = jnp.floor(u), jnp.floor(v)
  fx, fy = (u - x0)[..., None], (v - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x0c, x1c = jnp.clip(x0, 0, w - 1), jnp.clip(x0 + 1, 0, w - 1)
  y0c, y1c = jnp.clip(y0, 0, h - 1), jnp.clip(y0 + 1, 0, h - 1)
  flat = image.reshape(h * w, -1).astype(jnp.float32)
  g = flat[jnp.stack([y0c * w + x0c, y0c * w + x1c, y1c * w + x0c, y1c * w + x1c])]  # (4, H, W, C): one gather
  top = g[0] + (g[1] - g[0]) * fx  # Pillow's BILINEAR(v, a, b, d) form
  bottom = g[2] + (g[3] - g[2]) * fx
  out = jnp.floor(top + (bottom - top) * fy)
  return jnp.where(inside[..., None], out, float(FILL)).astype(jnp.uint8)


# ------------------------------------------------------------------------------ lookup-table ops

def _lookup(image: jax.Array, op, value) -> jax.Array:
  """PIL ImageOps autocontrast / invert / equalize / solarize / posterize as per-channel tables."""
  h, w, c = image.shape
  i = jnp.arange(256, dtype=jnp.int32)[None, :]  # (1, 256)
  hist = jax.vmap(lambda ch: jnp.bincount(ch.reshape(-1), length=256), in_axes=2)(image)  # (C, 256)
  present = hist > 0
  lo = jnp.argmax(present, axis=1)[:, None]  # lowest value present, per channel
  hi = 255 - jnp.argmax(present[:, ::-1], axis=1)[:, None]  # highest
  # autocontrast (cutoff 0): ix -> int((ix - lo) * 255 / (hi - lo)), clipped (in integers)
  stretched = jnp.clip((i - lo) * 255 // jnp.maximum(hi - lo, 1), 0, 255)
  autocontrast = jnp.where(hi > lo, stretched, i)
  # equalize: step = (N - count of the highest value) // 255; lut[i] = (step // 2 + sum(h[:i])) // step
  step = (h * w - jnp.take_along_axis(hist, hi, axis=1)) // 255
  cum = jnp.cumsum(hist, axis=1) - hist
  equalize = jnp.where(step > 0, jnp.minimum((step // 2 + cum) // jnp.maximum(step, 1), 255), i)
  invert = jnp.broadcast_to(255 - i, (c, 256))
  solarize = jnp.broadcast_to(jnp.where(i < value, i, 255 - i), (c, 256))  # value: threshold
  bits = value.astype(jnp.int32)  # keep the `bits` high bits
  posterize = jnp.broadcast_to(i & (255 - (2 ** (8 - bits) - 1)), (c, 256))
  tables = jnp.stack([autocontrast, invert, equalize, solarize, posterize])  # (5, C, 256)
  table = tables[jnp.clip(op - 5, 0, 4)]
  out = jax.vmap(lambda t, ch: t[ch], in_axes=(0, 2), out_axes=2)(table, image.astype(jnp.int32))
  return out.astype(jnp.uint8)


# ------------------------------------------------------------------------------------ blend ops

def _blend(image: jax.Array, op, factor) -> jax.Array:
  """PIL ``ImageEnhance``: ``floor(clip(deg + factor * (image - deg), 0, 255))`` with the degenerate
  image of Contrast (mean grey level), Color (grey image), Brightness (black), Sharpness (SMOOTH)."""
  img = image.astype(jnp.int32)
  if image.shape[-1] == 3:  # PIL convert("L"): (299 R + 587 G + 114 B) / 1000 in 16-bit fixed point
    gray = (img[..., 0] * 19595 + img[..., 1] * 38470 + img[..., 2] * 7471 + 0x8000) >> 16
  else:
    gray = img[..., 0]
  gray = gray[..., None].astype(jnp.float32)
  mean = jnp.floor(jnp.mean(gray) + 0.5)  # int(ImageStat.Stat(L).mean + 0.5)
  degenerates = jnp.stack([jnp.broadcast_to(mean, image.shape), jnp.broadcast_to(gray, image.shape),
                           jnp.zeros(image.shape), _smooth(img.astype(jnp.float32))])
  deg = degenerates[jnp.clip(op - 10, 0, 3)]
  out = deg + factor * (img.astype(jnp.float32) - deg)
  return jnp.floor(jnp.clip(out, 0, 255)).astype(jnp.uint8)


def _smooth(img: jax.Array) -> jax.Array:
  """PIL ``ImageFilter.SMOOTH``: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded; border pixels kept."""
  h, w, _ = img.shape
  p = jnp.pad(img, ((1, 1), (1, 1), (0, 0)))
  total = sum(p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) + 4 * img
  smooth = jnp.floor(total / 13.0 + 0.5)
  ys, xs = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
  border = (ys == 0) | (ys == h - 1) | (xs == 0) | (xs == w - 1)
  return jnp.where(border, img, smooth)
