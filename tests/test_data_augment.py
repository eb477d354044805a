"""On-device augmentation (jnas.data): crop, flip, cutout, AutoAugment against Pillow, 224-px transforms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jnas.data as D
from jnas.data.autoaugment import MAGNITUDES, OPS, apply_op, op_value, pillow_op


@pytest.fixture(autouse=True)
def strict_rank_promotion():
  with jax.numpy_rank_promotion("raise"):
    yield


@pytest.fixture
def fast_compile():
  """For the tests of larger programs: XLA's optimisations cost more compile time than they save on
  these small batches (flax models_test). The comparisons with Pillow run optimised: that is where
  fused multiply-adds can change a result."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


def _ramp(b, h, w, c=3):
  """Images whose every pixel is distinct (so crops and flips can be located): uint8 (b, h, w, c)."""
  base = (np.arange(h * w).reshape(1, h, w, 1) * 3 + np.arange(c).reshape(1, 1, 1, c)) % 251
  return np.broadcast_to(base + np.arange(b).reshape(b, 1, 1, 1), (b, h, w, c)).astype(np.uint8)


# -------------------------------------------------------------------------------- crop, flip, cutout

def test_random_crop_is_a_shifted_window():
  x = _ramp(32, 8, 8) + 1  # no zeros inside, so the zero padding is recognisable
  out = np.asarray(jax.jit(functools.partial(D.random_crop, padding=2))(jax.random.key(0), x))
  assert out.shape == x.shape and out.dtype == np.uint8
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets = set()
  for b in range(32):
    found = [(dy, dx) for dy in range(5) for dx in range(5)
             if np.array_equal(out[b], padded[b, dy:dy + 8, dx:dx + 8])]
    assert len(found) == 1
    offsets.add(found[0])
  assert len(offsets) > 10  # offsets vary per sample
  np.testing.assert_array_equal(D.random_crop(jax.random.key(0), x, padding=0), x)


def test_random_flip_probability():
  x = _ramp(4000, 2, 2, 1)
  out = np.asarray(jax.jit(D.random_flip)(jax.random.key(1), x))
  flipped = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(flipped | np.all(out == x, axis=(1, 2, 3)))
  assert abs(flipped.mean() - 0.5) < 0.03  # 4000 draws: std 0.008


def test_normalize():
  x = jnp.full((1, 2, 2, 3), 255, jnp.uint8)
  out = D.normalize(x, D.CIFAR10_MEAN, D.CIFAR10_STD)
  expect = (1 - np.array(D.CIFAR10_MEAN)) / np.array(D.CIFAR10_STD)
  np.testing.assert_allclose(out[0, 0, 0], expect, rtol=1e-6)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(D.normalize(jnp.ones((1, 2, 2, 1)), (0.5,), (0.5,)), 1.0)  # float: in [0, 1]
  with pytest.raises(ValueError, match="one value per channel"):
    D.normalize(jnp.zeros((1, 2, 2, 1), jnp.uint8), D.CIFAR10_MEAN, D.CIFAR10_STD)


def test_cutout_square_statistics():
  n, h, length = 3000, 32, 16
  out = np.asarray(jax.jit(functools.partial(D.cutout, length=length))(jax.random.key(2), jnp.ones((n, h, h, 1))))
  zeroed = out[..., 0] == 0
  counts = zeroed.sum(axis=(1, 2))
  assert counts.max() == length * length and counts.min() >= (length // 2) ** 2  # corner centre: 8 x 8
  rows, cols = zeroed.any(axis=2), zeroed.any(axis=1)
  np.testing.assert_array_equal(counts, rows.sum(1) * cols.sum(1))  # a (clipped) axis-aligned rectangle
  # centre uniform over pixels: E[count] = E[side]^2, side(c) = min(c + 8, 32) - max(c - 8, 0)
  side = np.array([min(c + length // 2, h) - max(c - length // 2, 0) for c in range(h)])
  assert abs(counts.mean() - side.mean() ** 2) < 3.0  # std of the mean about 0.9


def test_cifar_augment_keyed_and_checked(fast_compile):
  x = jnp.asarray(_ramp(16, 8, 8))
  f = jax.jit(functools.partial(D.cifar_augment, padding=2, cutout_length=4))
  a, b, c = f(jax.random.key(0), x), f(jax.random.key(0), x), f(jax.random.key(1), x)
  assert a.shape == (16, 8, 8, 3) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  plain = D.cifar_augment(jax.random.key(0), x, padding=0, cutout_length=0)
  flip = np.all(np.asarray(plain) == np.asarray(D.normalize(x[:, :, ::-1], D.CIFAR10_MEAN, D.CIFAR10_STD)), (1, 2, 3))
  same = np.all(np.asarray(plain) == np.asarray(D.cifar_test_transform(x)), (1, 2, 3))
  assert np.all(flip | same)  # with no padding and no cutout only the flip is left
  with pytest.raises(ValueError, match="uint8"):
    D.cifar_augment(jax.random.key(0), x.astype(jnp.float32))
  with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
    D.cifar_augment(jax.random.key(0), x[0])
  with pytest.raises(ValueError, match="one value per channel"):
    D.cifar_augment(jax.random.key(0), x[..., :1])


# ---------------------------------------------------------------------------------------- AutoAugment

def test_policy_table():
  assert len(D.CIFAR10_POLICY) == 25
  assert all(0 <= p <= 1 and op in OPS and 0 <= m <= 9 for sub in D.CIFAR10_POLICY for p, op, m in sub)
  assert MAGNITUDES["Posterize"].tolist() == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
  assert D.CIFAR10_POLICY[0] == ((0.1, "Invert", 7), (0.2, "Contrast", 6))  # DeepVoltaire's first row


@pytest.fixture(scope="module")
def aa_images():
  rng = np.random.default_rng(0)
  small = rng.integers(30, 220, (6, 6, 6, 3)).astype(np.uint8)  # smooth images with a noisy band
  x = np.stack([np.asarray(Image.fromarray(s).resize((16, 16), Image.BILINEAR)) for s in small])
  x[:, :3] = rng.integers(0, 256, (6, 3, 16, 3))
  return x


@pytest.fixture(scope="module")
def jit_apply_op():
  return jax.jit(apply_op)


@pytest.mark.parametrize("channels", [3, 1])
def test_autoaugment_ops_match_pillow(channels, aa_images, jit_apply_op):
  # one batch holding every op x magnitude bin x sign, each on one of the test images
  cases = [(op, m, sign) for op in OPS for m in range(10) for sign in (1, -1)]
  x = aa_images[np.arange(len(cases)) % len(aa_images)][..., :channels]
  ops = np.array([OPS.index(op) for op, _, _ in cases])
  values = [op_value(op, MAGNITUDES[op][m], sign) for op, m, sign in cases]  # float64, as DeepVoltaire's
  ours = np.asarray(jit_apply_op(x, ops, np.array(values, np.float32))).astype(int)
  ref = np.stack([np.asarray(pillow_op(op, Image.fromarray(im if channels == 3 else im[..., 0]), v)).reshape(im.shape)
                  for (op, _, _), im, v in zip(cases, x, values)]).astype(int)
  diff = np.abs(ours - ref)
  for op in OPS:
    d = diff[ops == OPS.index(op)]
    assert (d > 0).mean() < 0.05 and (d > 1).mean() < 1e-3, (op, d.max(), (d > 0).mean())
    if op not in ("TranslateX", "TranslateY", "Rotate"):  # nearest neighbour: a rare boundary sample may flip
      assert d.max() <= 1, (op, d.max())  # within 1 grey level


@pytest.fixture(scope="module")
def jit_autoaugment():
  return jax.jit(D.cifar10_autoaugment)


def test_autoaugment_keeps_shape_range_and_is_keyed(aa_images, jit_autoaugment, jit_apply_op):
  x = jnp.asarray(np.concatenate([aa_images] * 8))  # 48 images
  a, b, c = jit_autoaugment(jax.random.key(0), x), jit_autoaugment(jax.random.key(0), x), jit_autoaugment(
      jax.random.key(1), x)
  assert a.shape == x.shape and a.dtype == jnp.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  changed = np.any(np.asarray(a) != np.asarray(x), axis=(1, 2, 3)).mean()
  # P(at least one op applied) averaged over the 25 sub-policies is 0.75; a few ops can leave an image as is
  assert 0.5 < changed < 0.95
  n = x.shape[0]
  np.testing.assert_array_equal(jit_apply_op(x, jnp.full((n,), len(OPS)), jnp.zeros((n,))), x)  # IDENTITY
  with pytest.raises(ValueError, match="C = 1 or 3"):
    D.cifar10_autoaugment(jax.random.key(0), jnp.zeros((2, 8, 8, 2), jnp.uint8))


# ------------------------------------------------------------------------------------- vmap over seeds

def test_vmap_over_seeds_every_cifar_transform(aa_images, jit_autoaugment, fast_compile):
  x = jnp.asarray(aa_images)
  keys = jax.random.split(jax.random.key(3), 3)
  fns = [(D.random_crop, jax.jit(D.random_crop)), (D.random_flip, jax.jit(D.random_flip)),
         (D.cutout, jax.jit(D.cutout)), (D.cifar10_autoaugment, jit_autoaugment)]
  augment = functools.partial(D.cifar_augment, padding=2, cutout_length=4)
  fns.append((augment, jax.jit(augment)))
  for fn, jit_fn in fns:
    many = np.asarray(jax.jit(jax.vmap(fn, in_axes=(0, None)))(keys, x))  # one batch, each seed its own draws
    assert many.shape == (3,) + x.shape
    one = np.asarray(jit_fn(keys[1], x))
    # seed 1 of the vmapped call is seed 1 alone: the same draws; XLA may fuse the arithmetic of the
    # two programs differently, which can move a uint8 result by one grey level
    assert np.mean(many[1] == one) > 0.99
    np.testing.assert_allclose(many[1].astype(np.float32), one.astype(np.float32), atol=1.0 if one.dtype == np.uint8 else 0.02)
    assert not np.array_equal(many[0], many[1])


# -------------------------------------------------------------------------------------- 224-px pipeline

def test_random_resized_crop(fast_compile):
  x = jnp.asarray(_ramp(8, 24, 24))
  out = jax.jit(functools.partial(D.random_resized_crop, size=16))(jax.random.key(0), x)
  assert out.shape == (8, 16, 16, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= 0 and float(out.max()) <= 1
  whole = jax.jit(functools.partial(D.random_resized_crop, size=24, scale=(1.0, 1.0), ratio=(1.0, 1.0)))
  np.testing.assert_allclose(whole(jax.random.key(0), x), np.asarray(x) / 255.0, atol=1e-5)  # full box, full size


def test_color_jitter_identity_and_range(fast_compile):
  x = jnp.asarray(np.random.default_rng(0).random((4, 6, 6, 3), np.float32))
  off = functools.partial(D.color_jitter, brightness=0, contrast=0, saturation=0, hue=0)
  np.testing.assert_allclose(jax.jit(off)(jax.random.key(0), x), x, atol=1e-5)  # incl. the HSV round trip
  out = jax.jit(D.color_jitter)(jax.random.key(0), x)
  assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
  assert not np.allclose(out, x)
  with pytest.raises(ValueError, match="RGB"):
    D.color_jitter(jax.random.key(0), x[..., :1])


def test_imagenet_train_and_test_transforms(fast_compile):
  x = jnp.asarray(_ramp(4, 40, 40))
  train = functools.partial(D.imagenet_train_augment, size=16)
  keys = jax.random.split(jax.random.key(1), 2)
  many = jax.jit(jax.vmap(train, in_axes=(0, None)))(keys, x)  # vmap over seeds
  assert many.shape == (2, 4, 16, 16, 3) and many.dtype == jnp.float32 and bool(jnp.isfinite(many).all())
  assert not np.array_equal(many[0], many[1])
  test = D.imagenet_test_transform(x, size=32, resize=40)  # stored at the resize size: centre crop only
  np.testing.assert_allclose(test, D.normalize(x[:, 4:36, 4:36], D.IMAGENET_MEAN, D.IMAGENET_STD), atol=1e-6)
  assert D.imagenet_test_transform(x, size=16, resize=20).shape == (4, 16, 16, 3)
  with pytest.raises(ValueError, match="smaller than"):
    D.imagenet_test_transform(x, size=32, resize=20)
