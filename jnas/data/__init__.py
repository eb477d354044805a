"""Data: real datasets in, augmented batches out, all on the device.

Whole datasets live on the accelerator as uint8 arrays; batching and augmentation run inside `jit`,
per seed, so no host data loader limits a search or a retraining::

  import jax, jnas.data as D
  ds = D.load_dataset("cifar10", "/data")            # or D.load_digits() offline
  w_half, a_half = D.search_split(ds.train, seed=2)  # DARTS search: 25k weights / 25k alphas
  train = jax.device_put(w_half)                     # uint8 (N, 32, 32, 3), int32 (N,), once

  @jax.jit
  def batch(train, key, epoch, i):  # pass the arrays in: closed over, they would become constants
    perm = D.epoch_permutation(jax.random.fold_in(key, epoch), train.images.shape[0])
    x, y = D.get_batch(*train, perm, i, 64)           # the last partial batch is dropped
    return D.cifar_augment(jax.random.fold_in(key, i), x, cutout_length=0), y

Modules: `dataset` (the `Dataset` and `Split` types, checks), `sources` (digits, cifar-python, npz,
tfds, `load_dataset`), `folder` (image folders, NAS-Benchmark csv lists), `cache` (.npy cache),
`splits`, `batches`, `augment` (CIFAR), `autoaugment`, `imagenet` (224-px datasets).
"""

from jnas.data.augment import cifar_augment as cifar_augment
from jnas.data.augment import cifar_test_transform as cifar_test_transform
from jnas.data.augment import cutout as cutout
from jnas.data.augment import normalize as normalize
from jnas.data.augment import random_crop as random_crop
from jnas.data.augment import random_flip as random_flip
from jnas.data.autoaugment import CIFAR10_POLICY as CIFAR10_POLICY
from jnas.data.autoaugment import cifar10_autoaugment as cifar10_autoaugment
from jnas.data.batches import epoch_permutation as epoch_permutation
from jnas.data.batches import get_batch as get_batch
from jnas.data.batches import num_batches as num_batches
from jnas.data.cache import default_cache_dir as default_cache_dir
from jnas.data.dataset import CIFAR100_MEAN as CIFAR100_MEAN
from jnas.data.dataset import CIFAR100_STD as CIFAR100_STD
from jnas.data.dataset import CIFAR10_MEAN as CIFAR10_MEAN
from jnas.data.dataset import CIFAR10_STD as CIFAR10_STD
from jnas.data.dataset import IMAGENET_MEAN as IMAGENET_MEAN
from jnas.data.dataset import IMAGENET_STD as IMAGENET_STD
from jnas.data.dataset import Dataset as Dataset
from jnas.data.dataset import SVHN_MEAN as SVHN_MEAN
from jnas.data.dataset import SVHN_STD as SVHN_STD
from jnas.data.dataset import Split as Split
from jnas.data.dataset import make_dataset as make_dataset
from jnas.data.folder import load_csv_split as load_csv_split
from jnas.data.folder import load_image_folder as load_image_folder
from jnas.data.folder import resize_center_crop as resize_center_crop
from jnas.data.imagenet import color_jitter as color_jitter
from jnas.data.imagenet import imagenet_test_transform as imagenet_test_transform
from jnas.data.imagenet import imagenet_train_augment as imagenet_train_augment
from jnas.data.imagenet import random_resized_crop as random_resized_crop
from jnas.data.sources import load_cifar_python as load_cifar_python
from jnas.data.sources import load_dataset as load_dataset
from jnas.data.sources import load_digits as load_digits
from jnas.data.sources import load_npz as load_npz
from jnas.data.sources import load_svhn as load_svhn
from jnas.data.sources import load_tfds as load_tfds
from jnas.data.splits import holdout_split as holdout_split
from jnas.data.splits import retrain_split as retrain_split
from jnas.data.splits import search_split as search_split

__all__ = [
    "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR10_MEAN", "CIFAR10_POLICY", "CIFAR10_STD", "Dataset",
    "IMAGENET_MEAN", "IMAGENET_STD", "SVHN_MEAN", "SVHN_STD", "Split", "cifar10_autoaugment", "cifar_augment",
    "cifar_test_transform", "color_jitter", "cutout", "default_cache_dir", "epoch_permutation",
    "get_batch", "holdout_split", "imagenet_test_transform", "imagenet_train_augment",
    "load_cifar_python", "load_csv_split", "load_dataset", "load_digits", "load_image_folder",
    "load_npz", "load_svhn", "load_tfds", "make_dataset", "normalize", "num_batches", "random_crop",
    "random_flip", "random_resized_crop", "resize_center_crop", "retrain_split", "search_split",
]
