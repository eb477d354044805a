"""Dataset sources: each returns a `Dataset` of uint8 NHWC images and int32 labels, train and test.

==========================  ================================================================
``load_digits()``           scikit-learn's 8x8 digits: offline, the default for tests and first runs
``load_cifar_python(path)`` a ``cifar-10-batches-py`` / ``cifar-100-python`` folder (PyTorch's format)
``load_npz(path)``          an ``.npz`` with ``images``, ``labels`` (+ ``test_images``, ``test_labels``)
``load_tfds(name)``         tensorflow-datasets by name (optional extra ``jnas[tfds]``)
``load_image_folder(root)`` ``root/<split>/<class>/*.jpg`` (`jnas.data.folder`)
``load_csv_split(...)``     NAS-Benchmark's per-class csv lists (`jnas.data.folder`)
``load_dataset(name, ...)`` picks one of the above by name
==========================  ================================================================

Decoded CIFAR, tfds and image-folder data are cached as ``.npy`` (`jnas.data.cache`).
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from jnas.data import folder
from jnas.data.cache import cached, file_stamps, source_key
from jnas.data.dataset import (CIFAR100_MEAN, CIFAR100_STD, CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN,
                               IMAGENET_STD, SVHN_MEAN, SVHN_STD, Dataset, make_dataset)

_CIFAR_HELP = ("Get the python version (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, "
               "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz), extract it and pass its folder as "
               "data_dir (command line: --data-dir), or `pip install 'jnas[tfds]'` to let tensorflow-datasets "
               "fetch 'cifar10' / 'cifar100'.")
_TFDS_HELP = "tensorflow-datasets is not installed: `pip install 'jnas[tfds]'` (the optional extra) to use it."

# name -> (train split, test split, stored side length or None, mean, std)
_TFDS = {
    "cifar10": ("train", "test", None, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("train", "test", None, CIFAR100_MEAN, CIFAR100_STD),
    "oxford_flowers102": ("train+validation", "test", 256, IMAGENET_MEAN, IMAGENET_STD),
    "svhn_cropped": ("train", "test", None, SVHN_MEAN, SVHN_STD),
}


# ------------------------------------------------------------------------------------------- SVHN
def load_svhn(path: str) -> Dataset:
  """SVHN (the cropped 32x32 digits; train 73,257 and test 26,032 images, the 'extra' split not
  used, as LHD's benchmark) from ``path`` holding one of: ``svhn_train.npz`` + ``svhn_test.npz``
  (``images``, ``labels``); ``train_32x32.mat`` + ``test_32x32.mat`` (the official files, as
  torchvision downloads them: ``X`` (32, 32, 3, N), ``y`` with 10 for the digit 0, read with
  scipy); or ``train/<class>/`` and ``test/<class>/`` image folders. Labels are the digits 0-9."""
  npz = [os.path.join(path, f"svhn_{s}.npz") for s in ("train", "test")]
  if all(os.path.isfile(f) for f in npz):
    return load_npz(*npz, name="svhn", num_classes=10, mean=SVHN_MEAN, std=SVHN_STD)
  mats = [os.path.join(path, f"{s}_32x32.mat") for s in ("train", "test")]
  if all(os.path.isfile(f) for f in mats):
    from scipy.io import loadmat
    splits = []
    for f in mats:
      try:
        m = loadmat(f)
        x, y = np.transpose(m["X"], (3, 0, 1, 2)), np.asarray(m["y"]).reshape(-1).astype(np.int64)
      except (KeyError, ValueError, OSError, NotImplementedError) as e:
        raise ValueError(f"{f}: not an SVHN .mat file with X (32, 32, 3, N) and y ({type(e).__name__}: {e})") from None
      splits.append((np.ascontiguousarray(x, np.uint8), np.where(y == 10, 0, y)))
    (xtr, ytr), (xte, yte) = splits
    return make_dataset(xtr, ytr, xte, yte, name="svhn", num_classes=10, mean=SVHN_MEAN, std=SVHN_STD)
  if os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "test")):
    return folder.load_image_folder(path, name="svhn")._replace(mean=SVHN_MEAN, std=SVHN_STD)
  raise FileNotFoundError(f"{path}: no SVHN data: expected svhn_{{train,test}}.npz, {{train,test}}_32x32.mat "
                          "(http://ufldl.stanford.edu/housenumbers/) or train/ and test/ class folders; or "
                          "`pip install 'jnas[tfds]'` and no data_dir to let tensorflow-datasets fetch 'svhn_cropped'")


# ----------------------------------------------------------------------------------------- digits

def load_digits(*, size: int = 8, channels: int = 1) -> Dataset:
  """scikit-learn's handwritten digits: 1,797 8x8 grayscale images, 10 classes, no download.

  Pixel values 0..16 are scaled to uint8 by ``round(v * 255 / 16)``. The split is fixed: a
  permutation drawn with NumPy seed 0, first 1,500 images train, last 297 test.

  Args:
    size: side length; a multiple of 8, upsampled by pixel repetition (nearest neighbour), e.g. 16 or 32.
    channels: 1 (grayscale) or 3 (the gray channel tiled, for RGB pipelines).
  """
  from sklearn.datasets import load_digits as sk_load_digits
  if size < 8 or size % 8:
    raise ValueError(f"load_digits: size must be a multiple of 8 (8, 16, 32, ...), got {size}")
  if channels not in (1, 3):
    raise ValueError(f"load_digits: channels must be 1 or 3, got {channels}")
  d = sk_load_digits()
  x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
  r = size // 8
  x = np.repeat(np.repeat(x, r, axis=1), r, axis=2)[..., None]
  x = np.repeat(x, channels, axis=3)
  perm = np.random.default_rng(0).permutation(len(x))
  tr, te = perm[:1500], perm[1500:]
  return make_dataset(x[tr], d.target[tr], x[te], d.target[te], name="digits", num_classes=10)


# -------------------------------------------------------------------------------------- npz files

def load_npz(path: str, test_path: str | None = None, *, name: str | None = None,
             num_classes: int | None = None, mean=None, std=None) -> Dataset:
  """Arrays from ``.npz`` files: ``images`` (N, H, W[, C]) uint8 and ``labels`` (N,) int.

  The test split is ``test_images`` / ``test_labels`` in the same file, or ``images`` / ``labels``
  in ``test_path`` (as `decode.py --format npz` writes ``cifar10_train.npz`` and ``cifar10_test.npz``).

  Args:
    path: the training file.
    test_path: optional second file holding the test split.
    name: dataset name (default: the file name without extension).
    num_classes: default ``1 + max(train labels)``.
    mean, std: normalisation constants in [0, 1] units (default: training-split statistics).
  """
  name = name or os.path.splitext(os.path.basename(path))[0]
  tr = _read_npz(path, ("images", "labels"))
  if test_path is not None:
    te = _read_npz(test_path, ("images", "labels"))
    xte, yte = te["images"], te["labels"]
  elif "test_images" in tr and "test_labels" in tr:
    xte, yte = tr["test_images"], tr["test_labels"]
  else:
    raise ValueError(f"{path}: no test split: expected arrays 'test_images' and 'test_labels' in the file, "
                     f"or a second file passed as test_path; found {sorted(tr)}")
  return make_dataset(tr["images"], tr["labels"], xte, yte, name=name, num_classes=num_classes,
                      mean=mean, std=std, what=path)


def _read_npz(path: str, required: tuple[str, ...]) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (expected an .npz with arrays {', '.join(required)})")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError: all mean "not a good npz"
    raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e}); expected arrays "
                     f"{', '.join(required)} as written by numpy.savez") from e
  missing = [k for k in required if k not in arrays]
  if missing:
    raise ValueError(f"{path}: missing arrays {missing}; expected {list(required)}, found {sorted(arrays)}")
  return arrays


# ----------------------------------------------------------------------------- cifar-python folders

def load_cifar_python(path: str, *, cache_dir: str | None = None, use_cache: bool = True) -> Dataset:
  """CIFAR-10 or CIFAR-100 from the "python version" folder that torchvision also reads.

  ``path`` is ``cifar-10-batches-py`` (files ``data_batch_1..5``, ``test_batch``, label key
  ``b'labels'``) or ``cifar-100-python`` (files ``train``, ``test``, fine labels ``b'fine_labels'``),
  or a folder containing one of them. Each file is a pickled dict whose ``b'data'`` is (N, 3072)
  uint8, each row a 32x32 image in CHW order (1024 red, 1024 green, 1024 blue values, row-major).
  Pickles are read with an unpickler that only builds NumPy arrays.

  Args:
    path: the folder (or its parent).
    cache_dir, use_cache: see `jnas.data.cache` (decoding costs a second or two; the cache, less).
  """
  root = _find_cifar_root(path)
  cifar100 = os.path.isfile(os.path.join(root, "train"))
  name = "cifar100" if cifar100 else "cifar10"
  files = (["train"], ["test"]) if cifar100 else ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
  paths = [os.path.join(root, f) for f in files[0] + files[1]]

  def build() -> Dataset:
    label_key = b"fine_labels" if cifar100 else b"labels"
    (xtr, ytr), (xte, yte) = [_read_cifar_files([os.path.join(root, f) for f in fs], label_key) for fs in files]
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if cifar100 else (CIFAR10_MEAN, CIFAR10_STD)
    return make_dataset(xtr, ytr, xte, yte, name=name, num_classes=100 if cifar100 else 10,
                        mean=mean, std=std, what=root)

  if not use_cache:
    return build()
  key = source_key(loader="cifar_python", files=file_stamps(paths))
  return cached(build, name=name, key=key, cache_dir=cache_dir)


def _find_cifar_root(path: str) -> str:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such folder; expected a cifar-10-batches-py or cifar-100-python folder. "
                            + _CIFAR_HELP)
  for root in (path, os.path.join(path, "cifar-10-batches-py"), os.path.join(path, "cifar-100-python")):
    if os.path.isfile(os.path.join(root, "test_batch")) or os.path.isfile(os.path.join(root, "train")):
      return root
  raise FileNotFoundError(f"{path}: no CIFAR data: expected cifar-10-batches-py/{{data_batch_1..5,test_batch}} "
                          f"or cifar-100-python/{{train,test}} in or at this path. " + _CIFAR_HELP)


class _ArrayUnpickler(pickle.Unpickler):
  """Builds only NumPy arrays and plain containers: a CIFAR pickle cannot run code."""
  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    if module == "numpy.core.multiarray":  # pickles written by NumPy < 2
      module = "numpy._core.multiarray"
    return super().find_class(module, name)


def _read_cifar_files(paths: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  xs, ys = [], []
  for p in paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"{p}: missing CIFAR batch file. " + _CIFAR_HELP)
    try:
      with open(p, "rb") as f:
        d = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # truncated or foreign files raise many kinds of errors
      raise ValueError(f"{p}: not a CIFAR python batch ({type(e).__name__}: {e}); expected a pickled dict "
                       "with b'data' (N, 3072) uint8 and b'labels' or b'fine_labels'. " + _CIFAR_HELP) from e
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
      keys = sorted(d) if isinstance(d, dict) else type(d).__name__
      raise ValueError(f"{p}: expected a dict with keys b'data' and {label_key!r}, got {keys}")
    x = np.asarray(d[b"data"])
    if x.ndim != 2 or x.shape[1] != 3072 or x.dtype != np.uint8:
      raise ValueError(f"{p}: b'data' must be (N, 3072) uint8 (32x32x3 images, CHW row-major), "
                       f"got {x.shape} {x.dtype}")
    xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    ys.append(np.asarray(d[label_key]))
  return np.concatenate(xs), np.concatenate(ys)


# ------------------------------------------------------------------------------------------ tfds

def load_tfds(name: str, *, data_dir: str | None = None, download: bool = True, size: int | None = None,
              cache_dir: str | None = None, use_cache: bool = True) -> Dataset:
  """A dataset from tensorflow-datasets (``pip install 'jnas[tfds]'``), e.g. ``cifar10``, ``cifar100``,
  ``oxford_flowers102``.

  Splits: ``train`` / ``test``; for ``oxford_flowers102``, ``train+validation`` / ``test`` (tfds's
  official split, which differs from NAS-Benchmark's csv lists; see `jnas.data.folder.load_csv_split`).
  Images of varying size are stored at ``size`` x ``size`` (shorter side resized, then centre crop).

  Args:
    name: a tfds dataset name.
    data_dir: tfds's data folder (default: tfds's own, ``~/tensorflow_datasets``).
    download: let tfds download when the data is not in ``data_dir``.
    size: stored side length; default 256 for ``oxford_flowers102`` and the native size for the
      others (whose images must then all share one size).
    cache_dir, use_cache: see `jnas.data.cache`.
  """
  train_split, test_split, default_size, mean, std = _TFDS.get(name, ("train", "test", None, None, None))
  size = default_size if size is None else size

  def build() -> Dataset:
    tfds = _import_tfds()
    splits, info = [], None
    for split in (train_split, test_split):
      try:
        ds, info = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir, download=download,
                             with_info=True)
      except Exception as e:  # offline, unknown name, missing files: tfds raises many types
        raise FileNotFoundError(f"tfds could not load {name!r} split {split!r} (data_dir={data_dir!r}): "
                                f"{type(e).__name__}: {e}. Offline? Prepare it once with network "
                                "(tfds.load or `tfds build`) into data_dir, or use a local copy.") from e
      pairs = [(folder.resize_center_crop(x, size) if size else x, y) for x, y in tfds.as_numpy(ds)]
      splits += [np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])]
    num_classes = info.features["label"].num_classes
    return make_dataset(*splits, name=name, num_classes=num_classes, mean=mean, std=std, what=f"tfds:{name}")

  if not use_cache:
    return build()
  key = source_key(loader="tfds", name=name, data_dir=os.path.abspath(data_dir) if data_dir else None,
                   splits=(train_split, test_split), size=size)
  return cached(build, name=name, key=key, cache_dir=cache_dir)


def _import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(_TFDS_HELP) from e
  return tfds


# ---------------------------------------------------------------------------------- by name

def load_dataset(name: str, data_dir: str | None = None, *, cache_dir: str | None = None,
                 use_cache: bool = True, download: bool = True) -> Dataset:
  """Loads a dataset by name, from a local copy when there is one.

  ==================================  =====================================================
  ``name``                            source
  ==================================  =====================================================
  ``'digits'``                        `load_digits()` (no files, no network)
  ``'cifar10'``, ``'cifar100'``       ``data_dir`` holding ``cifar-10-batches-py`` /
                                      ``cifar-100-python`` (`load_cifar_python`), or
                                      ``<name>_train.npz`` + ``<name>_test.npz`` (`load_npz`);
                                      with no ``data_dir``: tfds, if installed
  ``'svhn'``                          ``data_dir`` holding ``{train,test}_32x32.mat``,
                                      ``svhn_{train,test}.npz`` or class folders (`load_svhn`);
                                      with no ``data_dir``: tfds ``svhn_cropped``, if installed
  ``'oxford_flowers102'``             tfds (`load_tfds`), ``data_dir`` is tfds's
  ``'sport8'``, ``'mit67'``,          ``data_dir/{train,test}/<class>/*.jpg`` (`load_image_folder`,
  ``'flowers102'``                    256 px); for the csv lists use `load_csv_split`
  a path ending in ``.npz``           `load_npz(name)`
  ==================================  =====================================================

  Args:
    name: see the table.
    data_dir: where the local copy is.
    cache_dir, use_cache: see `jnas.data.cache`.
    download: for tfds sources, allow downloading.
  """
  if name == "digits":
    return load_digits()
  if name.endswith(".npz"):
    return load_npz(name)
  if name in ("cifar10", "cifar100"):
    if data_dir is not None:
      tr, te = (os.path.join(data_dir, f"{name}_{s}.npz") for s in ("train", "test"))
      if os.path.isfile(tr) and os.path.isfile(te):
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        return load_npz(tr, te, name=name, num_classes=10 if name == "cifar10" else 100, mean=mean, std=std)
      ds = load_cifar_python(data_dir, cache_dir=cache_dir, use_cache=use_cache)
      if ds.name != name:
        raise ValueError(f"{data_dir}: holds {ds.name}, not {name}")
      return ds
    try:
      _import_tfds()
    except ImportError:
      raise FileNotFoundError(f"{name}: no local copy (data_dir=None) and tensorflow-datasets is not installed. "
                              "Pass data_dir= a folder holding cifar-10-batches-py / cifar-100-python. "
                              + _CIFAR_HELP) from None
    return load_tfds(name, download=download, cache_dir=cache_dir, use_cache=use_cache)
  if name == "svhn":
    if data_dir is not None:
      return load_svhn(data_dir)
    try:
      _import_tfds()
    except ImportError:
      raise FileNotFoundError("svhn: no local copy (data_dir=None) and tensorflow-datasets is not installed. Pass "
                              "data_dir= a folder holding train_32x32.mat and test_32x32.mat "
                              "(http://ufldl.stanford.edu/housenumbers/)") from None
    return load_tfds("svhn_cropped", download=download, cache_dir=cache_dir, use_cache=use_cache)._replace(name="svhn")
  if name == "oxford_flowers102":
    return load_tfds(name, data_dir=data_dir, download=download, cache_dir=cache_dir, use_cache=use_cache)
  if name in ("sport8", "mit67", "flowers102"):
    if data_dir is None:
      raise FileNotFoundError(f"{name}: pass data_dir= a folder with train/<class>/*.jpg and test/<class>/*.jpg "
                              "(NAS-Benchmark's split, see jnas.data.load_csv_split to build it from its csv lists)")
    return folder.load_image_folder(data_dir, name=name, cache_dir=cache_dir, use_cache=use_cache)
  raise ValueError(f"unknown dataset {name!r}: expected 'digits', 'cifar10', 'cifar100', 'svhn', 'oxford_flowers102', "
                   "'sport8', 'mit67', 'flowers102' or a path ending in .npz")
