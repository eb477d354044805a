"""On-disk cache of decoded datasets, so that a second run starts in seconds.

An entry is a folder ``<cache_dir>/<name>-<key>/`` holding ``train_images.npy``, ``train_labels.npy``,
``test_images.npy``, ``test_labels.npy`` and ``meta.json``. ``key`` is a hash of where the data came
from (loader, absolute path, options, and the size and mtime of every source file), so a changed
source gives a new entry. An entry is written into a temporary folder beside it and renamed into
place with ``os.replace``: a killed run never leaves a half-written entry. A damaged entry is
reported and rebuilt; the cache is never the only copy of anything.

The cache folder is ``cache_dir`` when given, else ``$JNAS_CACHE``, else ``~/.cache/jnas``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Callable

import numpy as np

from jnas.data.dataset import Dataset, Split, validate_dataset

_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def default_cache_dir() -> str:
  """``$JNAS_CACHE`` if set, else ``~/.cache/jnas``."""
  return os.environ.get("JNAS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jnas")


def source_key(**description: Any) -> str:
  """A 16-hex-digit hash of a JSON-able description of a data source."""
  text = json.dumps(description, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_stamps(paths: list[str]) -> list[tuple[str, int, int]]:
  """(path, size, mtime_ns) of each file: enough to notice that a source changed."""
  stats = [os.stat(p) for p in paths]
  return [(p, st.st_size, st.st_mtime_ns) for p, st in zip(paths, stats)]


def cached(build: Callable[[], Dataset], *, name: str, key: str, cache_dir: str | None) -> Dataset:
  """Returns the cached dataset ``<name>-<key>`` or builds, stores and returns it.

  Args:
    build: decodes the dataset from its source (called only on a miss).
    name: dataset name, the readable part of the entry's folder name.
    key: hash of the source (see `source_key`).
    cache_dir: cache folder; None means `default_cache_dir()`.
  """
  root = cache_dir or default_cache_dir()
  entry = os.path.join(root, f"{name}-{key}")
  if os.path.isdir(entry):
    try:
      return _read(entry)
    except (OSError, ValueError, KeyError) as e:
      warnings.warn(f"jnas: damaged cache entry {entry} ({e}); rebuilding it", stacklevel=2)
      shutil.rmtree(entry, ignore_errors=True)
  ds = build()
  try:
    _write(ds, entry, root)
  except OSError as e:  # a read-only or full disk must not stop a run
    warnings.warn(f"jnas: could not write cache entry {entry} ({e}); continuing without it", stacklevel=2)
  return ds


def _read(entry: str) -> Dataset:
  with open(os.path.join(entry, "meta.json")) as f:
    meta = json.load(f)
  a = {k: np.load(os.path.join(entry, f"{k}.npy"), allow_pickle=False) for k in _ARRAYS}
  ds = Dataset(train=Split(a["train_images"], a["train_labels"]), test=Split(a["test_images"], a["test_labels"]),
               num_classes=int(meta["num_classes"]), name=meta["name"],
               mean=tuple(meta["mean"]), std=tuple(meta["std"]))
  validate_dataset(ds, what=f"cache entry {entry}")
  return ds


def _write(ds: Dataset, entry: str, root: str) -> None:
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
  try:
    arrays = dict(train_images=ds.train.images, train_labels=ds.train.labels,
                  test_images=ds.test.images, test_labels=ds.test.labels)
    for k, v in arrays.items():
      np.save(os.path.join(tmp, f"{k}.npy"), v, allow_pickle=False)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(dict(num_classes=ds.num_classes, name=ds.name, mean=ds.mean, std=ds.std), f)
    try:
      os.replace(tmp, entry)
    except OSError:
      if not os.path.isdir(entry):  # else another process stored the same entry first
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
