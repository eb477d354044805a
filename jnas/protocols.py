"""Retraining protocols: the DARTS recipe with every trick behind a switch [paper_protocol.md §3, §5].

A `Protocol` is a frozen value holding everything that decides how a genotype is trained from
scratch; ``jnas.train.train_genotypes`` reads nothing else. Named protocols (``PROTOCOLS``):

=====================  ==========================================================================
``base``               DARTS retraining (20 cells, C 36, 600 epochs, batch 96, SGD 0.025 cosine to
                       0, momentum 0.9, wd 3e-4, clip 5, crop + flip) with every trick off [YANG §4]
``A``                  + auxiliary tower, weight 0.4
``D``                  + drop path, p_max 0.2 (linear ramp p_max * epoch / epochs)
``C``                  + cutout 16
``C+D``                cutout + drop path
``C+D+A`` = ``darts``  the DARTS protocol [DARTS-C train.py]
``C+D+A+50C``          + 50 initial channels (alias ``+50C``)
``C+D+A+AA``           + AutoAugment, CIFAR-10 policy (alias ``+AA``)
``C+D+A+AA+1500E``     + AutoAugment + 1500 epochs (alias ``+1500E``)
``C+D+A+AA+50C+1500E`` everything (alias ``all``)
``nasbench-224``       NAS-Benchmark's protocol for Sport8 / MIT67 / Flowers102 [§1.5]: the
                       224-px macro (``imagenet``), 8 cells, C 36, the DARTS tricks, BN after
                       pooling (pt.darts ``PoolBN``), 224-px random resized crop + colour jitter
``enas``               ENAS-TF's fixed-arc CIFAR retraining [other_spaces.md §1.6]: 17 cells (15 N +
                       2 R), C 36, 630 epochs, batch 144, Nesterov 0.9, l2 2e-4 as sum w^2 (decay
                       4e-4), SGDR 0.05 -> 1e-4 (T0 10, x2), no clipping (the code's clip is a
                       no-op), aux 0.4, ScheduledDropPath keep 0.6, dropout 0.2, no cutout
``nao``                NB's NAO CIFAR retraining [§2.6]: 20 cells (3 x 6 + 2), C 36, 600 epochs,
                       batch 128, SGD 0.025 cosine -> 0, wd 3e-4, clip 5, aux 0.4, cutout 16,
                       ScheduledDropPath keep 0.8, dropout 0.4
``nao-224``            NAO's 224-px retraining: 8 cells (3 x 2 + 2), the DARTS stems, no cutout (parsed, not
                       applied), ScheduledDropPath keep 0.8, dropout 0.4, aux 0.4
``nsganet-224``        NSGA-Net's 224-px retraining: 8 cells, C 34 doubling at reductions, no SE, cutout 16
``nsganet``            NSGA-Net's CIFAR retraining [§3.5]: 20 cells, C 34 + 4 per cell (no
                       doubling), squeeze-and-excitation, 600 epochs, batch 96, SGD 0.025 cosine,
                       wd 3e-4, clip 5, aux 0.4, drop path 0.2 linear, cutout 16 (jnas cuts out
                       after normalisation; NSGA-Net before it, so its holes are -mean/std)
=====================  ==========================================================================

The three space protocols train ``jnas.cellspace.SpaceGenotype`` cells (``jnas.space_network``);
on the 224-px datasets NAS-Benchmark retrained ENAS cells with the DARTS code
(``nasbench-224`` on ``SpaceGenotype.to_darts(concat='all')``). Which epoch's accuracy entered
NB's tables is not documented for these codes (ENAS-TF logs every epoch; NAO and NSGA-Net keep
the best): both are reported.

The ladder is the paper's Fig. 3 / §5 table (``LADDER``, in its order). Presets scale a protocol to a
machine: ``preset='paper'`` leaves it as it is; ``preset='cpu'`` (`cpu_preset`) keeps every switch
but shrinks the network to 8 cells with C 16 (scaled by C/36, so 50C stays wider), the epochs to
``2 * epochs / 600`` (so 1500E stays longer) and the data to a 2,000 / 1,000 image subset: about 6
minutes per genotype (2 seeds) on 2 busy CPU cores, half of it compiling. It checks that a pipeline
runs end to end on real data; its accuracies (about 30 % on CIFAR-10) rank nothing. Where quark0/darts and pt.darts differ, the default is quark0's
(`pool_bn=False`, `lr_shift=False`); both are switches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jnas.network import MACROS

__all__ = ["Protocol", "PROTOCOLS", "LADDER", "ALIASES", "get_protocol", "cpu_preset", "PRESETS"]


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How a genotype is trained from scratch (defaults: the DARTS protocol, C+D+A).

  Attributes:
    name: a label (written to config.json).
    epochs: E; the cosine schedule and the drop-path ramp span E epochs.
    C, layers: initial channels and cells of the network.
    batch_size: training batch (the last partial batch of an epoch is dropped).
    lr, lr_min: cosine annealing per epoch from ``lr`` to ``lr_min`` [DARTS-C ``CosineAnnealingLR``].
    lr_shift: run epoch e at lr(e + 1), as pt.darts on PyTorch >= 1.1 (``jnas.optim``).
    momentum, weight_decay, grad_clip: SGD with coupled L2 after global-norm clipping
      (``jnas.optim.weight_optimizer``); ``grad_clip=0`` turns clipping off.
    cutout_length: cutout square side (0 = off), after normalisation [DARTS-C utils ``Cutout``].
    drop_path_prob: p_max of drop path (0 = off); epoch e runs at p_max * e / E [DARTS-C train.py].
    auxiliary_weight: weight of the auxiliary head's loss (0 = off, and no head is built):
      loss = CE(logits) + w * CE(aux_logits).
    autoaugment: the CIFAR-10 AutoAugment policy after crop + flip [YANG §4, NB Augmentation].
    label_smoothing: epsilon; targets (1 - eps) one-hot + eps / K (CNAS uses 0.1).
    macro: ``'cifar'`` (32-px stem) or ``'imagenet'`` (224-px stems, §1.5).
    pool_bn: BN after pooling ops (pt.darts / NAS-Benchmark); quark0 has none.
    image_size: crop size of the ``imagenet`` macro (224); the CIFAR macro uses the stored size.
    train_images, test_images: use a fixed random subset of this many images (0 = all); the
      subset is drawn with NumPy seed 0, the same for every genotype and seed.
  """

  name: str = "C+D+A"
  epochs: int = 600
  C: int = 36
  layers: int = 20
  batch_size: int = 96
  lr: float = 0.025
  lr_min: float = 0.0
  lr_shift: bool = False
  momentum: float = 0.9
  weight_decay: float = 3e-4
  grad_clip: float = 5.0
  cutout_length: int = 16
  drop_path_prob: float = 0.2
  auxiliary_weight: float = 0.4
  autoaugment: bool = False
  label_smoothing: float = 0.0
  macro: str = "cifar"
  pool_bn: bool = False
  image_size: int = 224
  train_images: int = 0
  test_images: int = 0
  lr_schedule_kind: str = "cosine"
  sgdr_t0: int = 10
  sgdr_mult: int = 2
  nesterov: bool = False
  drop_path_schedule: str = "linear"
  head_dropout: float = 0.0
  filter_increment: int = 0
  se: bool = False

  def __post_init__(self):
    def need(ok, what):
      if not ok:
        raise ValueError(f"protocol {self.name!r}: {what}")
    for f in ("epochs", "C", "layers", "batch_size", "image_size"):
      need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f"{f} must be an int >= 1, got {getattr(self, f)!r}")
    for f in ("cutout_length", "train_images", "test_images"):
      need(isinstance(getattr(self, f), int) and getattr(self, f) >= 0, f"{f} must be an int >= 0, got {getattr(self, f)!r}")
    need(0.0 <= self.drop_path_prob < 1.0, f"drop_path_prob must lie in [0, 1), got {self.drop_path_prob}")
    need(0.0 <= self.label_smoothing < 1.0, f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
    need(self.auxiliary_weight >= 0.0, f"auxiliary_weight must be >= 0, got {self.auxiliary_weight}")
    need(self.lr > 0.0 and self.lr_min >= 0.0, f"need lr > 0 and lr_min >= 0, got {self.lr}, {self.lr_min}")
    need(self.grad_clip >= 0.0 and self.weight_decay >= 0.0 and self.momentum >= 0.0,
         "grad_clip, weight_decay and momentum must be >= 0")
    need(self.macro in MACROS, f"macro must be one of {MACROS}, got {self.macro!r}")
    need(self.lr_schedule_kind in ("cosine", "sgdr"), f"lr_schedule_kind must be 'cosine' or 'sgdr', got "
         f"{self.lr_schedule_kind!r}")
    need(self.drop_path_schedule in ("linear", "scheduled"), "drop_path_schedule must be 'linear' (p_max e / E) or "
         f"'scheduled' (ENAS/NAO's ScheduledDropPath), got {self.drop_path_schedule!r}")
    need(0.0 <= self.head_dropout < 1.0, f"head_dropout must lie in [0, 1), got {self.head_dropout}")
    need(self.filter_increment >= 0 and self.sgdr_t0 >= 1 and self.sgdr_mult >= 1,
         "filter_increment must be >= 0, sgdr_t0 and sgdr_mult >= 1")
    need(not (self.autoaugment and self.macro == "imagenet"),
         "AutoAugment (CIFAR-10 policy) is defined for the 'cifar' macro only")

  # ------------------------------------------------------------------------------ derived values
  @property
  def auxiliary(self) -> bool:
    """Whether the network has an auxiliary head (only when its loss has a weight)."""
    return self.auxiliary_weight > 0.0

  def drop_path_at(self, epoch: int) -> float:
    """p of epoch ``epoch`` (0-based): p_max * epoch / epochs [DARTS-C train.py
    ``model.drop_path_prob = args.drop_path_prob * epoch / args.epochs``]; for the 'scheduled'
    rule the value at the epoch's first step (``drop_path_at_step``)."""
    if self.drop_path_schedule == "scheduled":
      return self.drop_path_prob * min(1.0, (epoch + 1) / self.epochs)
    return self.drop_path_prob * epoch / self.epochs

  def drop_path_at_step(self, epoch, i, steps_per_epoch: int):
    """p of step i of ``epoch`` (traced is fine): 'linear' p_max e / E; 'scheduled' (ENAS, NAO
    ``ScheduledDropPath``) (1 - keep) min(1, (t + 1) / T) with t = e * spe + i, T = E * spe (the
    network multiplies by (l + 1) / L per cell)."""
    if self.drop_path_schedule == "scheduled":
      t = epoch * steps_per_epoch + i
      return self.drop_path_prob * jnp.minimum(1.0, (t + 1) / (self.epochs * steps_per_epoch))
    return self.drop_path_prob * epoch / self.epochs

  def replace(self, **changes) -> "Protocol":
    """A copy with ``changes``; an unknown field is a ValueError naming the known ones."""
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
    if unknown:
      raise ValueError(f"unknown protocol field(s) {unknown}; known: {', '.join(f.name for f in dataclasses.fields(self))}")
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Protocol":
    return cls().replace(**d)

  def training_config(self) -> dict:
    """The derived training set-up, flat ``{'group.key': value}``: what a switch changes downstream
    (the network built, the loss, the augmentation, the optimizer, the schedules, the data)."""
    cfg = {
        "network.C": self.C, "network.layers": self.layers, "network.auxiliary": self.auxiliary,
        "network.macro": self.macro, "network.pool_bn": self.pool_bn,
        "loss.auxiliary_weight": self.auxiliary_weight if self.auxiliary else None,
        "loss.label_smoothing": self.label_smoothing,
        "augment.cutout_length": self.cutout_length, "augment.autoaugment": self.autoaugment,
        "augment.image_size": self.image_size if self.macro == "imagenet" else None,
        "drop_path.max": self.drop_path_prob,
        "drop_path.first_last": (self.drop_path_at(0), self.drop_path_at(self.epochs - 1)),
        "optimizer.lr": self.lr, "optimizer.lr_min": self.lr_min, "optimizer.lr_shift": self.lr_shift,
        "optimizer.momentum": self.momentum, "optimizer.weight_decay": self.weight_decay,
        "optimizer.grad_clip": self.grad_clip or None,
        "schedule.epochs": self.epochs, "data.batch_size": self.batch_size,
        "data.train_images": self.train_images or "all", "data.test_images": self.test_images or "all",
    }
    return cfg

  def network(self, genotype, num_classes: int):
    """The network this protocol trains for ``genotype``: a ``jnas.Network`` (DARTS-space
    genotypes), or a ``jnas.space_network.SpaceNetwork`` (a ``jnas.cellspace.SpaceGenotype``)."""
    from jnas.cellspace import SpaceGenotype
    if isinstance(genotype, SpaceGenotype):
      from jnas.space_network import SpaceNetwork
      return SpaceNetwork(genotype, C=self.C, layers=self.layers, num_classes=num_classes, auxiliary=self.auxiliary,
                          macro=self.macro, filter_increment=self.filter_increment, se=self.se,
                          head_dropout=self.head_dropout, drop_path_schedule=self.drop_path_schedule)
    if self.filter_increment or self.se or self.head_dropout or self.drop_path_schedule != "linear":
      raise ValueError(f"protocol {self.name!r} has settings of the ENAS / NAO / NSGA-Net networks (filter_increment, "
                       "se, head_dropout, scheduled drop path) that the DARTS network lacks; train a "
                       "jnas.cellspace.SpaceGenotype with it")
    from jnas.network import Network
    return Network(genotype, C=self.C, layers=self.layers, num_classes=num_classes, auxiliary=self.auxiliary,
                   macro=self.macro, pool_bn=self.pool_bn)

  def arc_network(self, op_names, n_nodes: int, num_classes: int):
    """The ``jnas.arc_network.ArcNetwork`` (one program for every genotype of ``n_nodes`` nodes over
    ``op_names``) with this protocol's network settings."""
    if self.filter_increment or self.se or self.head_dropout or self.drop_path_schedule != "linear":
      raise ValueError(f"protocol {self.name!r} has settings of the ENAS / NAO / NSGA-Net networks that the shared "
                       "DARTS program lacks")
    from jnas.arc_network import ArcNetwork
    return ArcNetwork(tuple(op_names), n_nodes=n_nodes, C=self.C, layers=self.layers, num_classes=num_classes,
                      auxiliary=self.auxiliary, macro=self.macro, pool_bn=self.pool_bn)

  def packed_network(self, genotypes, num_classes: int):
    """The ``jnas.packed.PackedNetwork`` of ``genotypes`` with this protocol's network settings."""
    from jnas.packed import PackedNetwork
    return PackedNetwork(tuple(genotypes), C=self.C, layers=self.layers, num_classes=num_classes,
                         auxiliary=self.auxiliary, macro=self.macro, pool_bn=self.pool_bn)

  def lr_schedule(self, steps_per_epoch: int):
    from jnas.optim import cosine_epoch_schedule, sgdr_epoch_schedule
    if self.lr_schedule_kind == "sgdr":
      return sgdr_epoch_schedule(self.lr, self.lr_min, steps_per_epoch, self.sgdr_t0, self.sgdr_mult)
    return cosine_epoch_schedule(self.lr, self.epochs, steps_per_epoch, self.lr_min, shift=self.lr_shift)

  def optimizer(self, steps_per_epoch: int, clip: bool = True):
    """``jnas.optim.weight_optimizer`` with this protocol's schedule, momentum, decay and clip
    (``clip=False``: without the clip, for a packed network that clips each genotype itself; the
    state tree is the same)."""
    from jnas.optim import weight_optimizer
    return weight_optimizer(self.lr_schedule(steps_per_epoch), self.momentum, self.weight_decay,
                            (self.grad_clip or None) if clip else None, nesterov=self.nesterov)


# ---------------------------------------------------------------------------------- the ladder
_BASE = Protocol(name="base", cutout_length=0, drop_path_prob=0.0, auxiliary_weight=0.0)
_A = dict(auxiliary_weight=0.4)  # DARTS-P A.2.1
_D = dict(drop_path_prob=0.2)
_C = dict(cutout_length=16)
_AA = dict(autoaugment=True)
_50C = dict(C=50)
_1500E = dict(epochs=1500)


def _make(name: str, *parts: dict, base: Protocol = _BASE) -> Protocol:
  changes = {}
  for p in parts:
    changes.update(p)
  return dataclasses.replace(base, name=name, **changes)


LADDER = ("base", "A", "D", "C", "C+D", "C+D+A", "C+D+A+50C", "C+D+A+AA", "C+D+A+AA+1500E",
          "C+D+A+AA+50C+1500E")

PROTOCOLS: dict[str, Protocol] = {
    "base": _BASE,
    "A": _make("A", _A),
    "D": _make("D", _D),
    "C": _make("C", _C),
    "C+D": _make("C+D", _C, _D),
    "C+D+A": _make("C+D+A", _C, _D, _A),
    "C+D+A+50C": _make("C+D+A+50C", _C, _D, _A, _50C),
    "C+D+A+AA": _make("C+D+A+AA", _C, _D, _A, _AA),
    "C+D+A+AA+1500E": _make("C+D+A+AA+1500E", _C, _D, _A, _AA, _1500E),
    "C+D+A+AA+50C+1500E": _make("C+D+A+AA+50C+1500E", _C, _D, _A, _AA, _50C, _1500E),
    # LHD's evaluation [LHD eval/cifar10/train.py]: batch 64, cutout 16, aux 0.4 and drop path on by
    # default; its drop path is 0.01 per concat output of the normal cell (``jnas.lhd.eval_settings``)
    "lhd": _make("lhd", _C, _A, dict(batch_size=64, drop_path_prob=0.01)),
    # NAS-Benchmark on the 224-px datasets [§1.5, YANG Table 2]: 8 cells, C 36, DARTS tricks, PoolBN.
    "nasbench-224": _make("nasbench-224", _C, _D, _A, dict(macro="imagenet", layers=8, pool_bn=True)),
    # The three non-DARTS spaces' own CIFAR protocols [other_spaces.md §4]
    "enas": _make("enas", _A, dict(layers=17, epochs=630, batch_size=144, lr=0.05, lr_min=1e-4, lr_schedule_kind="sgdr",
                                   nesterov=True, weight_decay=4e-4, grad_clip=0.0, drop_path_prob=0.4,
                                   drop_path_schedule="scheduled", head_dropout=0.2)),
    "nao": _make("nao", _C, _A, dict(layers=20, batch_size=128, drop_path_prob=0.2, drop_path_schedule="scheduled",
                                     head_dropout=0.4)),
    "nsganet": _make("nsganet", _C, _D, _A, dict(C=34, layers=20, filter_increment=4, se=True)),
    # their 224-px retraining [§2.6, §3.5] (ENAS's: NB retrained converted cells with the DARTS code,
    # ``nasbench-224`` on ``SpaceGenotype.to_darts(concat='all')``)
    "nao-224": _make("nao-224", _A, dict(macro="imagenet", layers=8, drop_path_prob=0.2, drop_path_schedule="scheduled",
                                         head_dropout=0.4)),
    "nsganet-224": _make("nsganet-224", _C, _D, _A, dict(macro="imagenet", layers=8, C=34)),
}

ALIASES = {"darts": "C+D+A", "+50C": "C+D+A+50C", "+AA": "C+D+A+AA", "+1500E": "C+D+A+AA+1500E",
           "all": "C+D+A+AA+50C+1500E"}
for _alias, _target in ALIASES.items():
  PROTOCOLS[_alias] = PROTOCOLS[_target]

PRESETS = ("paper", "cpu")


def cpu_preset(p: Protocol, *, epochs: int = 2, C: int = 16, layers: int = 8, train_images: int = 2000,
               test_images: int = 1000) -> Protocol:
  """``p`` scaled to a 2-core CPU: ``layers`` cells, C scaled as ``C * p.C / 36`` (rounded to an even
  number, as FactorizedReduce needs), epochs as
  ``epochs * p.epochs / 600`` (at least 1), and a ``train_images`` / ``test_images`` subset. The
  switches (cutout, drop path, aux, AA, smoothing, optimizer) are kept. For 'imagenet' the crop
  shrinks to 64 px (stored images must be at least 64 * 256 / 224 px)."""
  changes: dict[str, Any] = dict(
      C=2 * max(1, int(round(C * p.C / 72))), layers=layers, epochs=max(1, int(round(epochs * p.epochs / 600))),
      train_images=train_images, test_images=test_images)
  if p.macro == "imagenet":
    changes["image_size"] = 64
  return dataclasses.replace(p, **changes)


def get_protocol(name: str, preset: str = "paper", **overrides) -> Protocol:
  """A named protocol (``PROTOCOLS``), scaled by ``preset`` ('paper' | 'cpu'), then ``overrides``
  (Protocol fields). Raises ValueError for an unknown name, preset or field."""
  if isinstance(name, Protocol):
    p = name
  else:
    if name not in PROTOCOLS:
      raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; use one of {PRESETS}")
  if preset == "cpu":
    p = cpu_preset(p)
  return p.replace(**overrides) if overrides else p

