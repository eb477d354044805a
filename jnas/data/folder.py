"""Image folders and NAS-Benchmark's csv split lists, decoded on the host into fixed-size uint8 arrays.

Sport8, MIT67 and Flowers102 images come in many sizes. They are stored once at ``size`` x ``size``
(default 256): the shorter side is resized to ``size`` (bilinear, antialiased, as torchvision's
``Resize(256)``) and the centre ``size`` x ``size`` is kept (``CenterCrop``). On the device,
`jnas.data.imagenet` then draws ``RandomResizedCrop(224)`` from that square (training) or takes the
centre 224 (test, the paper's "resize 256 + centre crop 224").

Warning: the PyTorch pipelines draw RandomResizedCrop from the whole image; here it is drawn from the
centre square, so the parts of a wide image outside it are never seen.

Decoding runs in a thread pool (Pillow releases the GIL) and the result is cached (`jnas.data.cache`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from jnas.data.cache import cached, file_stamps, source_key
from jnas.data.dataset import IMAGENET_MEAN, IMAGENET_STD, Dataset, make_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def resize_center_crop(image, size: int) -> np.ndarray:
  """torchvision ``Resize(size)`` then ``CenterCrop(size)`` on one image; returns (size, size, C) uint8.

  Args:
    image: a PIL image or an (H, W) / (H, W, C) uint8 array.
    size: the output side length.
  """
  from PIL import Image
  if not isinstance(image, Image.Image):
    a = np.asarray(image)
    image = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
  w, h = image.size
  if w <= h:  # torchvision: the shorter side becomes `size`, the longer int(size * long / short)
    nw, nh = size, int(size * h / w)
  else:
    nw, nh = int(size * w / h), size
  if (nw, nh) != (w, h):
    image = image.resize((nw, nh), Image.BILINEAR)
  top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
  a = np.asarray(image.crop((left, top, left + size, top + size)))
  return a if a.ndim == 3 else a[..., None]


def load_image_folder(root: str, *, size: int | None = 256, name: str | None = None,
                      splits: tuple[str, str] = ("train", "test"), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      cache_dir: str | None = None, use_cache: bool = True) -> Dataset:
  """Images in ``root/<split>/<class>/*.{jpg,jpeg,png}``, as torchvision's ``ImageFolder`` reads them.

  Classes are the sorted sub-folder names of the training split (label = index in that order); the
  test split may not have classes the training split lacks. Images are converted to RGB.

  Args:
    root: the folder holding the two split folders.
    size: stored side length (see module docstring); None keeps the images as they are, which
      then must all have one size (e.g. ``decode.py --format folder`` CIFAR PNGs).
    name: dataset name (default: the folder's name).
    splits: names of the train and test sub-folders.
    mean, std: normalisation constants in [0, 1] units (default ImageNet's, as NAS-Benchmark uses for
      these datasets); None computes them from the training images.
    cache_dir, use_cache: see `jnas.data.cache`.
  """
  name = name or os.path.basename(os.path.normpath(root))
  train_dir, test_dir = (os.path.join(root, s) for s in splits)
  for d in (train_dir, test_dir):
    if not os.path.isdir(d):
      raise FileNotFoundError(f"{d}: no such folder; expected {root}/{{{splits[0]},{splits[1]}}}/<class>/*.jpg")
  classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
  if not classes:
    raise FileNotFoundError(f"{train_dir}: no class sub-folders; expected {train_dir}/<class>/*.jpg")
  lists = [_list_folder(d, classes) for d in (train_dir, test_dir)]
  return _load_lists(lists, classes, size=size, name=name, source=os.path.abspath(root), mean=mean, std=std,
                     cache_dir=cache_dir, use_cache=use_cache)


def load_csv_split(images_root: str, train_csv: str | Sequence[str], test_csv: str | Sequence[str], *,
                   size: int | None = 256, name: str | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   cache_dir: str | None = None, use_cache: bool = True) -> Dataset:
  """The train/test split given by NAS-Benchmark's per-class csv lists (``NB:data/*.csv``).

  Format (the one NAS-Benchmark ships): a header line, then one row per class. The class name is the
  last cell before the first image file name (a cell ending in .jpg/.jpeg/.png); the file names
  follow; empty cells are ignored. This reads ``Sport8_test.csv`` (``croquet,Easy_Mid_croquet_101.jpg,...``)
  and ``flowers102_train2.csv`` (``50,flower_78,image_01828.jpg,...``) alike. A file ``f`` of class
  ``c`` is ``images_root/c/f``, or ``images_root/f`` when that does not exist (a flat folder such as
  Flowers102's ``jpg/``). Several csv files (MIT67's ``MIT67_train1..4.csv``) are concatenated.

  Classes are the sorted class names of the training lists.

  Args:
    images_root: folder holding the images.
    train_csv, test_csv: a csv path or a list of them.
    size, name, mean, std, cache_dir, use_cache: as in `load_image_folder`.
  """
  train_csv = [train_csv] if isinstance(train_csv, str) else list(train_csv)
  test_csv = [test_csv] if isinstance(test_csv, str) else list(test_csv)
  if not os.path.isdir(images_root):
    raise FileNotFoundError(f"{images_root}: no such folder (expected the images named in the csv lists)")
  train_rows = read_split_csv(train_csv)
  classes = sorted(train_rows)
  lists = []
  for rows, csvs in ((train_rows, train_csv), (read_split_csv(test_csv), test_csv)):
    unknown = sorted(set(rows) - set(classes))
    if unknown:
      raise ValueError(f"{csvs}: classes {unknown[:5]} are not in the training lists")
    lists.append([(_resolve(images_root, c, f), classes.index(c)) for c in sorted(rows) for f in rows[c]])
  name = name or os.path.splitext(os.path.basename(train_csv[0]))[0].split("_")[0].lower()
  return _load_lists(lists, classes, size=size, name=name, source=os.path.abspath(images_root), mean=mean,
                     std=std, cache_dir=cache_dir, use_cache=use_cache)


def read_split_csv(paths: Sequence[str]) -> dict[str, list[str]]:
  """Reads NAS-Benchmark csv lists (format in `load_csv_split`) into ``{class: [file, ...]}``."""
  rows: dict[str, list[str]] = {}
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such csv file (expected NAS-Benchmark's data/<Dataset>_train.csv form)")
    with open(path, newline="") as f:
      lines = f.read().splitlines()[1:]  # first line: pandas header
    for n, line in enumerate(lines, start=2):
      cells = [c.strip() for c in line.split(",")]
      first = next((i for i, c in enumerate(cells) if c.lower().endswith(IMAGE_EXTENSIONS)), None)
      if first is None or first == 0 or not cells[first - 1]:
        if any(cells):
          raise ValueError(f"{path}:{n}: expected 'class,file.jpg,file.jpg,...' (a class name before the "
                           f"first image file name), got {line[:80]!r}")
        continue
      rows.setdefault(cells[first - 1], []).extend(c for c in cells[first:] if c)
  if not rows:
    raise ValueError(f"{list(paths)}: no class rows found (expected 'class,file.jpg,...' after a header line)")
  return rows


def _resolve(images_root: str, cls: str, fname: str) -> str:
  nested = os.path.join(images_root, cls, fname)
  if os.path.isfile(nested):
    return nested
  flat = os.path.join(images_root, fname)
  if os.path.isfile(flat):
    return flat
  raise FileNotFoundError(f"{nested}: listed in the csv but not found (nor {flat})")


def _list_folder(d: str, classes: list[str]) -> list[tuple[str, int]]:
  out = []
  for e in sorted(os.scandir(d), key=lambda e: e.name):
    if not e.is_dir():
      continue
    if e.name not in classes:
      raise ValueError(f"{e.path}: class {e.name!r} is not among the training classes")
    out += [(f.path, classes.index(e.name)) for f in sorted(os.scandir(e.path), key=lambda f: f.name)
            if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS)]
  if not out:
    raise FileNotFoundError(f"{d}: no images; expected {d}/<class>/*.{{jpg,jpeg,png}}")
  return out


def _load_lists(lists: list[list[tuple[str, int]]], classes: list[str], *, size: int | None, name: str,
                source: str, mean, std, cache_dir: str | None, use_cache: bool) -> Dataset:
  def build() -> Dataset:
    arrays = []
    for items in lists:
      arrays += [_decode_all([p for p, _ in items], size), np.array([y for _, y in items], np.int64)]
    return make_dataset(*arrays, name=name, num_classes=len(classes), mean=mean, std=std, what=source)

  if not use_cache:
    return build()
  key = source_key(loader="image_list", source=source, size=size, classes=classes, mean=mean, std=std,
                   files=[file_stamps([p for p, _ in items]) for items in lists])
  return cached(build, name=name, key=key, cache_dir=cache_dir)


def _decode_all(paths: list[str], size: int | None) -> np.ndarray:
  from PIL import Image

  def decode(p: str) -> np.ndarray:
    try:
      with Image.open(p) as im:
        im = im.convert("RGB")
        return resize_center_crop(im, size) if size else np.asarray(im)
    except OSError as e:
      raise ValueError(f"{p}: cannot decode image ({e})") from e

  with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    if size:  # filled in place: MIT67 at 256 px is 3 GB, so no second copy
      out = np.empty((len(paths), size, size, 3), np.uint8)

      def fill(i: int) -> None:
        out[i] = decode(paths[i])

      list(pool.map(fill, range(len(paths))))
      return out
    images = list(pool.map(decode, paths))
  shapes = sorted({im.shape for im in images})
  if len(shapes) > 1:
    raise ValueError(f"images have different sizes {shapes[:3]}...: pass size=N to resize them to N x N")
  return np.stack(images)
