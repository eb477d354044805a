"""Data sources, splits and batches (jnas.data): formats written in tmp_path, digits, small arrays."""

import os
import pickle
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jnas.data as D


@pytest.fixture(autouse=True)
def strict_rank_promotion():
  with jax.numpy_rank_promotion("raise"):
    yield


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
  """No test writes to the user's ~/.cache/jnas."""
  monkeypatch.setenv("JNAS_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def digits():
  return D.load_digits()


def _chw_rows(images):
  """NHWC uint8 -> the CIFAR python rows (N, 3072): CHW, row-major."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(root, rng, per_batch=4, n_test=3):
  """A cifar-10-batches-py folder in the exact CIFAR format (as decode.py and the original write it)."""
  d = root / "cifar-10-batches-py"
  d.mkdir(parents=True)
  x = rng.integers(0, 256, (5 * per_batch + n_test, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 10, len(x))
  for b in range(5):
    sl = slice(b * per_batch, (b + 1) * per_batch)
    with open(d / f"data_batch_{b + 1}", "wb") as f:
      pickle.dump({b"batch_label": b"training batch", b"labels": y[sl].tolist(), b"data": _chw_rows(x[sl]),
                   b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
  with open(d / "test_batch", "wb") as f:
    pickle.dump({b"labels": y[-n_test:].tolist(), b"data": _chw_rows(x[-n_test:])}, f, protocol=2)
  return d, x, y


# ----------------------------------------------------------------------------------------- digits

def test_digits_shapes_and_range(digits):
  assert digits.train.images.shape == (1500, 8, 8, 1) and digits.test.images.shape == (297, 8, 8, 1)
  assert digits.train.images.dtype == np.uint8 and digits.train.labels.dtype == np.int32
  assert digits.train.images.max() == 255 and digits.num_classes == 10
  assert set(np.unique(digits.train.labels)) == set(range(10))
  assert len(digits.mean) == 1 and 0 < digits.mean[0] < 1


def test_digits_deterministic_and_upsampled(digits):
  big = D.load_digits(size=16, channels=3)
  assert big.train.images.shape == (1500, 16, 16, 3)
  np.testing.assert_array_equal(big.train.labels, digits.train.labels)
  # nearest-neighbour upsampling: every 2x2 block repeats one original pixel, in every channel
  np.testing.assert_array_equal(big.train.images[:, ::2, ::2, 2:], digits.train.images)


def test_digits_bad_arguments():
  with pytest.raises(ValueError, match="multiple of 8"):
    D.load_digits(size=12)
  with pytest.raises(ValueError, match="channels must be 1 or 3"):
    D.load_digits(channels=2)


# ----------------------------------------------------------------------------------- cifar-python

def test_cifar10_python_folder_exact(tmp_path):
  d, x, y = write_cifar10(tmp_path, np.random.default_rng(0))
  ds = D.load_cifar_python(str(tmp_path), use_cache=False)  # the parent folder works too
  assert ds.name == "cifar10" and ds.num_classes == 10 and ds.mean == D.CIFAR10_MEAN
  np.testing.assert_array_equal(ds.train.images, x[:20])
  np.testing.assert_array_equal(ds.test.images, x[20:])
  np.testing.assert_array_equal(ds.train.labels, y[:20])
  # row-major CHW: pixel (row 1, col 2, green) of image 0 is data[0, 1024 + 1 * 32 + 2]
  with open(d / "data_batch_1", "rb") as f:
    raw = pickle.load(f, encoding="bytes")[b"data"]
  assert ds.train.images[0, 1, 2, 1] == raw[0, 1024 + 32 + 2]


def test_cifar100_python_folder(tmp_path):
  d = tmp_path / "cifar-100-python"
  d.mkdir()
  rng = np.random.default_rng(1)
  for split, n in (("train", 6), ("test", 2)):
    with open(d / split, "wb") as f:
      pickle.dump({b"data": _chw_rows(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)),
                   b"fine_labels": [99] * n, b"coarse_labels": [0] * n}, f, protocol=2)
  ds = D.load_cifar_python(str(d), use_cache=False)
  assert ds.name == "cifar100" and ds.num_classes == 100 and ds.train.images.shape == (6, 32, 32, 3)
  assert (ds.train.labels == 99).all()


def test_cifar_cache_roundtrip_and_atomic(tmp_path):
  write_cifar10(tmp_path / "data", np.random.default_rng(2))
  cdir = tmp_path / "cache"
  a = D.load_cifar_python(str(tmp_path / "data"), cache_dir=str(cdir))
  entries = os.listdir(cdir)
  assert len(entries) == 1 and entries[0].startswith("cifar10-")  # no temporary leftovers
  b = D.load_cifar_python(str(tmp_path / "data"), cache_dir=str(cdir))
  np.testing.assert_array_equal(a.train.images, b.train.images)
  assert a.mean == b.mean and a.num_classes == b.num_classes
  # a damaged entry is reported and rebuilt
  with open(cdir / entries[0] / "train_images.npy", "wb") as f:
    f.write(b"garbage")
  with pytest.warns(UserWarning, match="damaged cache entry"):
    c = D.load_cifar_python(str(tmp_path / "data"), cache_dir=str(cdir))
  np.testing.assert_array_equal(a.train.images, c.train.images)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("JNAS_CACHE", str(tmp_path / "envcache"))
  assert D.default_cache_dir() == str(tmp_path / "envcache")
  write_cifar10(tmp_path / "data", np.random.default_rng(3))
  D.load_cifar_python(str(tmp_path / "data"))
  assert len(os.listdir(tmp_path / "envcache")) == 1


def test_cifar_errors(tmp_path):
  # the error says where to get the data and which flag points to it, and names no local path
  with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*--data-dir") as e:
    D.load_cifar_python(str(tmp_path / "nowhere"))
  assert "shared" not in str(e.value)
  with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
    D.load_cifar_python(str(tmp_path))
  d, _, _ = write_cifar10(tmp_path / "a", np.random.default_rng(0))
  (d / "data_batch_3").write_bytes(b"\x80\x02not a pickle at all")
  with pytest.raises(ValueError, match="not a CIFAR python batch"):
    D.load_cifar_python(str(d), use_cache=False)
  d, _, _ = write_cifar10(tmp_path / "b", np.random.default_rng(0))
  with open(d / "test_batch", "wb") as f:
    pickle.dump({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, f, protocol=2)
  with pytest.raises(ValueError, match=r"\(N, 3072\) uint8"):
    D.load_cifar_python(str(d), use_cache=False)
  d, _, _ = write_cifar10(tmp_path / "c", np.random.default_rng(0))
  with open(d / "test_batch", "wb") as f:
    pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f, protocol=2)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
    D.load_cifar_python(str(d), use_cache=False)
  d, _, _ = write_cifar10(tmp_path / "d", np.random.default_rng(0))
  with open(d / "test_batch", "wb") as f:  # a pickle that would run code is refused
    pickle.dump({b"data": types.SimpleNamespace()}, f, protocol=2)
  with pytest.raises(ValueError, match="refusing to load"):
    D.load_cifar_python(str(d), use_cache=False)


# ------------------------------------------------------------------------------------------- npz

def test_npz_one_file_and_two_files(tmp_path):
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8), np.arange(10) % 4
  np.savez(tmp_path / "one.npz", images=x, labels=y, test_images=x[:3], test_labels=y[:3])
  ds = D.load_npz(str(tmp_path / "one.npz"))
  assert ds.name == "one" and ds.num_classes == 4 and ds.test.images.shape == (3, 6, 6, 3)
  np.savez(tmp_path / "tr.npz", images=x[..., 0], labels=y)  # (N, H, W) grayscale gains a channel
  np.savez(tmp_path / "te.npz", images=x[:2, ..., 0], labels=y[:2])
  ds = D.load_npz(str(tmp_path / "tr.npz"), str(tmp_path / "te.npz"), num_classes=5)
  assert ds.train.images.shape == (10, 6, 6, 1) and ds.num_classes == 5
  np.testing.assert_array_equal(D.load_dataset(str(tmp_path / "one.npz")).train.images, x)


def test_npz_errors(tmp_path):
  x, y = np.zeros((4, 5, 5, 3), np.uint8), np.array([0, 1, 2, 3])
  with pytest.raises(FileNotFoundError, match="expected an .npz"):
    D.load_npz(str(tmp_path / "missing.npz"))
  (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(ValueError, match="not a readable .npz"):
    D.load_npz(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "keys.npz", x=x, y=y)
  with pytest.raises(ValueError, match="missing arrays"):
    D.load_npz(str(tmp_path / "keys.npz"))
  np.savez(tmp_path / "notest.npz", images=x, labels=y)
  with pytest.raises(ValueError, match="no test split"):
    D.load_npz(str(tmp_path / "notest.npz"))
  cases = [
      (dict(images=np.zeros((4, 75), np.uint8), labels=y), r"shape \(N, H, W, C\)"),
      (dict(images=x.astype(np.float32), labels=y), "expected uint8"),
      (dict(images=x.astype(np.int64) + 300, labels=y), "0..255"),
      (dict(images=x, labels=y[:3]), "expected 4 labels"),
      (dict(images=x, labels=y.astype(np.float32)), "integer class labels"),
      (dict(images=x, labels=-y), r"\[0, "),
  ]
  for i, (arrays, match) in enumerate(cases):
    np.savez(tmp_path / f"c{i}.npz", test_images=x, test_labels=y, **arrays)
    with pytest.raises(ValueError, match=match):
      D.load_npz(str(tmp_path / f"c{i}.npz"))
  np.savez(tmp_path / "shape.npz", images=x, labels=y, test_images=x[:, :4], test_labels=y)
  with pytest.raises(ValueError, match="same"):
    D.load_npz(str(tmp_path / "shape.npz"))
  np.savez(tmp_path / "range.npz", images=x, labels=y, test_images=x, test_labels=y)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    D.load_npz(str(tmp_path / "range.npz"), num_classes=3)


# ---------------------------------------------------------------------------------- image folders

def _png(path, w, h, color):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (w, h), color).save(path)


def test_image_folder(tmp_path):
  for split, n in (("train", 3), ("test", 1)):
    for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
      for i in range(n):
        _png(tmp_path / split / c / f"{i}.png", 40 + 7 * i, 30, color)
  ds = D.load_image_folder(str(tmp_path), size=16, use_cache=False)
  assert ds.train.images.shape == (6, 16, 16, 3) and ds.test.images.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(ds.train.labels, [0, 0, 0, 1, 1, 1])  # sorted class names: cat, dog
  assert (ds.train.images[0] == [255, 0, 0]).all() and (ds.train.images[3] == [0, 0, 255]).all()
  assert ds.mean == D.IMAGENET_MEAN and ds.num_classes == 2
  with pytest.raises(ValueError, match="pass size"):
    D.load_image_folder(str(tmp_path), size=None, use_cache=False)
  cached = D.load_image_folder(str(tmp_path), size=16, cache_dir=str(tmp_path / ".c"))
  np.testing.assert_array_equal(cached.train.images, ds.train.images)


def test_image_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="expected"):
    D.load_image_folder(str(tmp_path / "none"))
  _png(tmp_path / "train" / "a" / "0.png", 8, 8, (0, 0, 0))
  with pytest.raises(FileNotFoundError, match="test"):
    D.load_image_folder(str(tmp_path), use_cache=False)
  _png(tmp_path / "test" / "b" / "0.png", 8, 8, (0, 0, 0))
  with pytest.raises(ValueError, match="not among the training classes"):
    D.load_image_folder(str(tmp_path), use_cache=False)
  (tmp_path / "test" / "b" / "0.png").unlink()
  (tmp_path / "test" / "b").rmdir()
  (tmp_path / "test" / "a").mkdir()
  (tmp_path / "test" / "a" / "0.png").write_bytes(b"\x89PNG broken")
  with pytest.raises(ValueError, match="cannot decode"):
    D.load_image_folder(str(tmp_path), size=8, use_cache=False)


def test_resize_center_crop():
  a = np.arange(10 * 16 * 3, dtype=np.uint8).reshape(10, 16, 3)  # H 10, W 16: no resize, crop cols 3..12
  np.testing.assert_array_equal(D.resize_center_crop(a, 10), a[:, 3:13])
  b = np.zeros((20, 40, 3), np.uint8)
  b[:, 10:30] = 200  # the centre 20 columns become the 10 x 10 output (edges blend a little)
  out = D.resize_center_crop(b, 10)
  assert out.shape == (10, 10, 3) and (out[:, 1:-1] == 200).all()
  assert D.resize_center_crop(np.zeros((9, 7), np.uint8), 7).shape == (7, 7, 1)


def test_csv_split_nas_benchmark_format(tmp_path):
  root = tmp_path / "images"
  names = {"croquet": ["a.jpg", "b.jpg", "c.jpg"], "polo": ["d.jpg", "e.jpg"]}
  for c, files in names.items():
    for f in files:
      _png(root / c / f, 12, 10, (10, 20, 30))
  _png(root / "flat.jpg", 10, 12, (1, 2, 3))  # a flat layout (Flowers102's jpg/) is found too
  # Sport8 form: the class in the index column; trailing empty cells
  (tmp_path / "S_train.csv").write_text(",0,1,2\ncroquet,a.jpg,b.jpg,\npolo,d.jpg,,\n")
  # flowers form: an index column, then the class
  (tmp_path / "S_test.csv").write_text(",Unnamed: 0,0,1\n0,croquet,c.jpg,\n1,polo,e.jpg,flat.jpg\n")
  ds = D.load_csv_split(str(root), str(tmp_path / "S_train.csv"), [str(tmp_path / "S_test.csv")], size=8,
                        use_cache=False)
  assert ds.train.images.shape == (3, 8, 8, 3) and ds.test.images.shape == (3, 8, 8, 3)
  np.testing.assert_array_equal(ds.train.labels, [0, 0, 1])
  np.testing.assert_array_equal(ds.test.labels, [0, 1, 1])
  assert ds.name == "s" and ds.num_classes == 2
  (tmp_path / "bad.csv").write_text(",0\ncroquet,missing.jpg\n")
  with pytest.raises(FileNotFoundError, match="listed in the csv"):
    D.load_csv_split(str(root), str(tmp_path / "bad.csv"), str(tmp_path / "S_test.csv"), use_cache=False)
  (tmp_path / "rows.csv").write_text("header\nno images here,at all\n")
  with pytest.raises(ValueError, match="class name before"):
    D.load_csv_split(str(root), str(tmp_path / "rows.csv"), str(tmp_path / "S_test.csv"), use_cache=False)


# ------------------------------------------------------------------------------------------- tfds

def test_tfds_missing_extra_is_named(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(ImportError, match=r"jnas\[tfds\]"):
    D.load_tfds("cifar10", use_cache=False)
  with pytest.raises(FileNotFoundError, match=r"jnas\[tfds\].*|decode.py"):
    D.load_dataset("cifar10")


def test_tfds_with_a_fake_module(monkeypatch):
  rng = np.random.default_rng(0)

  def load(name, split, as_supervised, data_dir, download, with_info):
    sizes = [(40, 30), (30, 50), (64, 64)] if name == "oxford_flowers102" else [(32, 32)] * 3
    ds = [(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), np.int64(i)) for i, (h, w) in enumerate(sizes)]
    info = types.SimpleNamespace(features={"label": types.SimpleNamespace(num_classes=3)})
    return ds, info

  fake = types.SimpleNamespace(load=load, as_numpy=lambda ds: ds)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  ds = D.load_tfds("cifar10", use_cache=False)
  assert ds.train.images.shape == (3, 32, 32, 3) and ds.num_classes == 3
  ds = D.load_tfds("oxford_flowers102", size=20, use_cache=False)
  assert ds.train.images.shape == (3, 20, 20, 3) and ds.mean == D.IMAGENET_MEAN

  def offline(*a, **k):
    raise ConnectionError("no network")

  monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(load=offline))
  with pytest.raises(FileNotFoundError, match="Offline"):
    D.load_tfds("cifar10", use_cache=False)


def test_load_dataset_dispatch(tmp_path, digits):
  np.testing.assert_array_equal(D.load_dataset("digits").train.images, digits.train.images)
  x, y = np.zeros((4, 32, 32, 3), np.uint8), np.arange(4)
  np.savez(tmp_path / "cifar10_train.npz", images=x, labels=y)  # decode.py --format npz
  np.savez(tmp_path / "cifar10_test.npz", images=x[:2], labels=y[:2])
  ds = D.load_dataset("cifar10", str(tmp_path))
  assert ds.num_classes == 10 and ds.mean == D.CIFAR10_MEAN and len(ds.test.labels) == 2
  write_cifar10(tmp_path / "py", np.random.default_rng(0))
  assert D.load_dataset("cifar10", str(tmp_path / "py"), use_cache=False).train.images.shape == (20, 32, 32, 3)
  with pytest.raises(ValueError, match="holds cifar10, not cifar100"):
    D.load_dataset("cifar100", str(tmp_path / "py"), use_cache=False)
  with pytest.raises(ValueError, match="unknown dataset"):
    D.load_dataset("imagenet21k")
  with pytest.raises(FileNotFoundError, match="data_dir"):
    D.load_dataset("sport8")


# ----------------------------------------------------------------------------------------- splits

def _indexed(n):
  """A split whose image i has pixel value i % 256 and label i, so parts can be traced back."""
  return D.Split(np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 2, 2, 1)),
                 np.arange(n, dtype=np.int32))


def test_search_split_sizes_disjoint_deterministic():
  s = _indexed(1000)
  w, a = D.search_split(s, seed=2)
  assert len(w.labels) == len(a.labels) == 500
  assert not set(w.labels) & set(a.labels) and set(w.labels) | set(a.labels) == set(range(1000))
  np.testing.assert_array_equal(w.images[:, 0, 0, 0], w.labels % 256)  # images follow their labels
  w2, _ = D.search_split(s, seed=2)
  w3, _ = D.search_split(s, seed=3)
  np.testing.assert_array_equal(w.labels, w2.labels)
  assert not np.array_equal(w.labels, w3.labels)
  first, second = D.search_split(s, shuffle=False, portion=0.3)  # quark0 rule
  np.testing.assert_array_equal(first.labels, np.arange(300))
  np.testing.assert_array_equal(second.labels, np.arange(300, 1000))


def test_holdout_and_retrain_split(digits):
  rest, val = D.holdout_split(digits.train, val_fraction=0.2, seed=0)
  assert len(rest.labels) == 1200 and len(val.labels) == 300
  tr, te = D.retrain_split(digits)
  assert tr is digits.train and te is digits.test
  with pytest.raises(ValueError, match="non-empty"):
    D.search_split(digits.train, portion=0.0)


# ---------------------------------------------------------------------------------------- batches

def test_num_batches_drops_last():
  assert D.num_batches(1500, 64) == 23 and D.num_batches(64, 64) == 1 and D.num_batches(63, 64) == 0
  with pytest.raises(ValueError, match="positive"):
    D.num_batches(10, 0)


def test_epoch_batches_same_seed_same_batches():
  data = jax.device_put(_indexed(100))
  step = jax.jit(lambda data, key, i: D.get_batch(*data, D.epoch_permutation(key, 100), i, 16))
  k0, k1 = jax.random.key(0), jax.random.key(1)
  seen = np.concatenate([np.asarray(step(data, k0, i)[1]) for i in range(D.num_batches(100, 16))])
  assert len(seen) == 96 and len(set(seen)) == 96  # batches of one epoch are disjoint
  xb, yb = step(data, k0, 3)
  assert xb.shape == (16, 2, 2, 1) and xb.dtype == jnp.uint8 and yb.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(xb)[:, 0, 0, 0], np.asarray(yb) % 256)
  np.testing.assert_array_equal(yb, step(data, k0, 3)[1])
  assert not np.array_equal(yb, step(data, k1, 3)[1])
  perm = D.epoch_permutation(k0, 100)
  assert perm.dtype == jnp.int32 and sorted(np.asarray(perm).tolist()) == list(range(100))


def test_batches_vmap_over_seeds_without_copying_the_data():
  n, seeds, bs = 64, 4, 8
  s = _indexed(n)
  x, y = jnp.asarray(s.images), jnp.asarray(s.labels)
  keys = jax.random.split(jax.random.key(0), seeds)

  def batch(x, y, key, i):
    return D.get_batch(x, y, D.epoch_permutation(key, n), i, bs)

  many = jax.vmap(batch, in_axes=(None, None, 0, None))  # the dataset is shared by all seeds
  xs, ys = jax.jit(many)(x, y, keys, 2)
  assert xs.shape == (seeds, bs, 2, 2, 1)
  for k in range(seeds):  # seed k of the vmapped call is seed k alone
    np.testing.assert_array_equal(ys[k], batch(x, y, keys[k], 2)[1])
  assert len({tuple(np.asarray(r)) for r in ys}) == seeds
  # no intermediate of shape (S, N, ...): the dataset is gathered from, never copied per seed
  jaxpr = jax.make_jaxpr(many)(x, y, keys, 2)
  shapes = [v.aval.shape for e in jaxpr.jaxpr.eqns for v in e.outvars]
  assert (seeds, n, 2, 2, 1) not in shapes


def test_get_batch_bad_input():
  x, y = jnp.zeros((10, 2, 2, 1), jnp.uint8), jnp.zeros((10,), jnp.int32)
  perm = D.epoch_permutation(jax.random.key(0), 10)
  with pytest.raises(ValueError, match="batch_size must lie in"):
    D.get_batch(x, y, perm, 0, 11)
  with pytest.raises(ValueError, match="length N=10"):
    D.get_batch(x, y[:5], perm, 0, 2)


def test_svhn_mat_npz_and_errors(tmp_path):
  from scipy.io import savemat
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)  # the official layout: (H, W, C, N)
  y = np.array([[10], [1], [2], [10], [5], [9]])  # 10 is the digit 0
  d = tmp_path / "svhn"
  d.mkdir()
  savemat(d / "train_32x32.mat", {"X": x, "y": y})
  savemat(d / "test_32x32.mat", {"X": x[..., :2], "y": y[:2]})
  ds = D.load_dataset("svhn", str(d))
  assert ds.name == "svhn" and ds.num_classes == 10 and ds.mean == D.SVHN_MEAN
  assert ds.train.images.shape == (6, 32, 32, 3) and ds.test.images.shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(ds.train.images[3], x[..., 3])
  assert ds.train.labels.tolist() == [0, 1, 2, 0, 5, 9]
  e = tmp_path / "npz"
  e.mkdir()
  np.savez(e / "svhn_train.npz", images=ds.train.images, labels=ds.train.labels)
  np.savez(e / "svhn_test.npz", images=ds.test.images, labels=ds.test.labels)
  np.testing.assert_array_equal(D.load_svhn(str(e)).train.images, ds.train.images)
  with pytest.raises(FileNotFoundError, match="no SVHN data"):
    D.load_svhn(str(tmp_path))
  savemat(tmp_path / "train_32x32.mat", {"images": x})
  savemat(tmp_path / "test_32x32.mat", {"images": x})
  with pytest.raises(ValueError, match="not an SVHN .mat"):
    D.load_svhn(str(tmp_path))
