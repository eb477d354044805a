"""Training genotypes from scratch: the retraining side of the evaluation protocol [paper_protocol.md §3].

``train_genotypes(genotypes, seeds, protocol, train, test, num_classes=...)`` trains every
(genotype, seed) pair and evaluates each on the test split after every epoch (BN in eval mode, running
statistics), as DARTS-C ``train.py`` and NAS-Benchmark's ``augment.py`` do; it returns the per-epoch
curves with the final-epoch and the best-epoch accuracy (the paper's numbers are best-over-epochs, §6).

How the work is laid out (chosen by measurement, ``benchmarks/train_step.py``):

* The seeds of one genotype run in one compiled program with a leading seed axis (``jax.vmap``): the
  state is ``TrainState`` with every leaf shaped ``(S, ...)``.
* Genotypes of one shape (``jnas.packed.shape_key``: equal concat lists, nodes and reduction cell)
  are packed: up to ``pack_size`` of them train in one program, a ``jnas.packed.PackedNetwork``
  that runs each op type of a node once over all its (genotype, edge) instances, so the work is the
  sum of the genotypes' own work and one compile serves the pack (S seeds x K genotypes per step).
  Each genotype keeps its own gradient clip and NaN guard, so its numbers equal those of its own
  program up to float summation order. Packs (and genotypes of other shapes) are different
  programs, run one after the other inside each epoch. A shared layout with one-hot op masks
  would compile once too but computes every candidate op on every edge (the supernet's work: 10x and
  more per step on CPU). Programs are cached per (genotypes, protocol, ...).

Randomness depends only on the seed: seed s draws its initial weights, its epoch permutations and its
augmentation / drop-path keys from ``jax.random.key(s)``, so a pair trained alone or inside a batch of
genotypes gets the same numbers, and every genotype with seed s sees the same data order (YANG §3.1:
"same augmentation seed for all").

Per step (one seed)::

  x, y = batch i of the epoch's permutation; x = augment(x)     (crop, flip, [AA], normalise, [cutout])
  loss = CE_ls(logits, y) + w_aux CE_ls(aux_logits, y)           (DARTS-C train.py, w_aux = 0.4)
  w <- SGD(clip(grad), lr(epoch)) with drop path p(epoch) = p_max * epoch / E
  a non-finite loss or weight freezes that seed (``jnas.guard``); the others go on.

Run directory (``out=``): ``config.json``; ``metrics.jsonl`` (one line per epoch per pair); orbax
checkpoints of all the states after every epoch and when SIGINT/SIGTERM arrives (then
`TrainingInterrupted` is raised); ``results.json`` (atomic) at the end. ``resume=True`` continues a
killed run from its newest checkpoint to the same result.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnas import data as D
from jnas import guard, macro, parallel
from jnas.compile_options import lean_jit, step_jit
from jnas.genotype import Genotype
from jnas.loop import Interrupted, Member, run_epochs
from jnas.network import count_params
from jnas.packed import group_by_shape
from jnas.progress import Progress
from jnas.protocols import ALIASES, LADDER, PROTOCOLS, Protocol, cpu_preset, get_protocol  # noqa: F401 (re-exported)
from jnas.rundir import RunDir

__all__ = ["Protocol", "PROTOCOLS", "LADDER", "get_protocol", "cpu_preset", "train_genotypes", "TrainState",
           "TrainingInterrupted", "cross_entropy", "training_loss", "programs", "shared_programs", "default_pack_size"]

# Genotypes per program by backend (``default_pack_size``): 1 where packing is not measured to be faster
# (benchmarks/results/packed.md: slower on XLA:CPU; GPUs not measured yet, ``bash benchmarks/gpu.sh packed``).
DEFAULT_PACK_SIZE = {"cpu": 1, "gpu": 1}


# SIGINT/SIGTERM stopped ``train_genotypes`` (or a search); its state is checkpointed in ``out``
# (resume with ``resume=True``). The same exception as every jnas run raises (``jnas.loop``).
TrainingInterrupted = Interrupted


class TrainState(NamedTuple):
  """State of one seed (leaves gain a leading seed axis under vmap)."""
  params: Any
  batch_stats: Any
  opt_state: Any
  alive: jax.Array  # bool: no non-finite loss or weight so far
  loss_sum: jax.Array  # running sums of the current epoch
  correct: jax.Array
  seen: jax.Array  # images in loss_sum / correct


# ------------------------------------------------------------------------------------ the loss
def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Mean CE with label smoothing eps: targets (1 - eps) one_hot(y) + eps / K, i.e.
  (1 - eps) (-log p_y) + eps mean_k(-log p_k) (CNAS ``CrossEntropyLabelSmooth``; eps = 0 is
  ``nn.CrossEntropyLoss``)."""
  # At least float32 (bf16 logits are upcast); float64 stays float64 (gradient checks run in it).
  logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
  return jnp.mean(nll)


def training_loss(net, protocol: Protocol, params, batch_stats, images, labels, *, key, drop_path_prob):
  """The retraining objective, DARTS-C train.py: CE(logits) + w_aux CE(aux_logits).

  Returns ``(loss, (logits, new_batch_stats))``; drop path is off when ``key`` is None.
  """
  logits, aux, new_stats = net.forward(params, batch_stats, images, train=True, key=key,
                                       drop_path_prob=drop_path_prob)
  loss = cross_entropy(logits, labels, protocol.label_smoothing)
  if protocol.auxiliary:
    loss = loss + protocol.auxiliary_weight * cross_entropy(aux, labels, protocol.label_smoothing)
  return loss, (logits, new_stats)


# ------------------------------------------------------------------------------- the programs
class Programs(NamedTuple):
  net: Any
  init: Any  # (seed keys (S,)) -> TrainState (S, ...)
  permutations: Any  # (seed keys, epoch, n) -> (S, n) int32
  step: Any  # (state, images, labels, perms, i, seed keys, epoch, p, mean, std) -> state
  evaluate: Any  # (params, stats, images (nb, B, ...), labels (nb, B), valid (nb, B), mean, std) -> correct (S,)


def _augment(protocol: Protocol, key, x, mean, std):
  if protocol.macro == "imagenet":
    return D.imagenet_train_augment(key, x, size=protocol.image_size, mean=mean, std=std,
                                    cutout_length=protocol.cutout_length)
  return D.cifar_augment(key, x, mean=mean, std=std, cutout_length=protocol.cutout_length,
                         autoaugment=protocol.autoaugment)


def _test_transform(protocol: Protocol, x, mean, std):
  if protocol.macro == "imagenet":
    return D.imagenet_test_transform(x, size=protocol.image_size, resize=int(round(protocol.image_size * 256 / 224)),
                                     mean=mean, std=std)
  return D.cifar_test_transform(x, mean=mean, std=std)


@functools.lru_cache(maxsize=8)
def programs(genotype: "Genotype | tuple[Genotype, ...]", protocol: Protocol, num_classes: int, steps_per_epoch: int,
             layout: "parallel.Layout | None" = None) -> Programs:
  """The jitted functions that train and evaluate ``genotype``, vmapped over seeds (cached, so a
  genotype trained again with the same protocol in this process does not compile again).

  ``genotype`` may be a tuple of K genotypes of one shape (``jnas.packed.group_by_shape``): one
  program trains them side by side (a ``PackedNetwork``); the state's per-seed fields (alive, sums)
  then have shape (K,), ``evaluate`` returns (S, K) counts, and each genotype's numbers equal those
  of its own program (each gets its own gradient clip and NaN guard). A 1-tuple is the genotype's
  own program.
  ``layout``: with data parallelism, each seed's batch is split over its devices."""
  if isinstance(genotype, tuple) and len(genotype) == 1:
    genotype = genotype[0]
  packed = isinstance(genotype, tuple)
  net = protocol.packed_network(genotype, num_classes) if packed else protocol.network(genotype, num_classes)
  return _build_programs(net, protocol, steps_per_epoch, layout, K=len(genotype) if packed else None)


@functools.lru_cache(maxsize=4)
def shared_programs(op_names: tuple[str, ...], n_nodes: int, protocol: Protocol, num_classes: int,
                    steps_per_epoch: int, layout: "parallel.Layout | None" = None) -> Programs:
  """One set of programs for every DARTS genotype of ``n_nodes`` nodes over ``op_names``
  (``jnas.arc_network.ArcNetwork``): ``init``, ``step`` and ``evaluate`` take the genotype's arc
  (``net.encode(genotype)``) as one more, last, argument (not vmapped: the seeds of one genotype
  share it, and ``lax.switch`` stays a conditional that runs only the chosen ops)."""
  return _build_programs(protocol.arc_network(op_names, n_nodes, num_classes), protocol, steps_per_epoch, layout,
                         K=None, shared=True)


class _Bound(NamedTuple):
  """An ``ArcNetwork`` with its arc: the ``init_variables`` / ``forward`` of a ``Network``."""
  net: Any
  arc: Any

  def init_variables(self, key):
    return self.net.init_variables(key, self.arc)

  def forward(self, params, batch_stats, images, *, train=False, key=None, drop_path_prob=0.0):
    return self.net.forward(params, batch_stats, images, self.arc, train=train, key=key,
                            drop_path_prob=0.0 if drop_path_prob is None else drop_path_prob)


def _build_programs(net, protocol: Protocol, steps_per_epoch: int, layout, *, K: int | None,
                    shared: bool = False) -> Programs:
  packed = K is not None
  batch_sharding = layout.batch_spec() if layout is not None else None
  lay = layout or parallel.Layout(1)
  tx = protocol.optimizer(steps_per_epoch, clip=not packed)
  B = protocol.batch_size
  use_drop_path = protocol.drop_path_prob > 0
  per = (lambda x: jnp.zeros((K,), x.dtype) + x) if packed else (lambda x: x)  # a field per genotype

  def init_one(key, arc=None):
    net_ = _Bound(net, arc) if shared else net
    v = net_.init_variables(jax.random.fold_in(key, 0))
    zero = jnp.zeros((), jnp.float32)
    return TrainState(v["params"], v["batch_stats"], tx.init(v["params"]), per(jnp.ones((), bool)), per(zero),
                      per(jnp.zeros((), jnp.int32)), per(jnp.zeros((), jnp.int32)))

  def perm_one(key, epoch, n):
    return D.epoch_permutation(jax.random.fold_in(jax.random.fold_in(key, 1), epoch), n)

  def packed_loss(params, batch_stats, x, y, key, p):  # (never shared)
    """Sum over the pack of each genotype's training loss (the gradients stay apart)."""
    logits, aux, new_stats = net.forward(params, batch_stats, x, train=True, key=key, drop_path_prob=p)
    ce = jax.vmap(lambda lg: cross_entropy(lg, y, protocol.label_smoothing))
    losses = ce(logits)
    if protocol.auxiliary:
      losses = losses + protocol.auxiliary_weight * ce(aux)
    return jnp.sum(losses), (losses, logits, new_stats)

  def step_one(state: TrainState, images, labels, perm, i, key, epoch, p, mean, std, arc=None):
    net_ = _Bound(net, arc) if shared else net
    x, y = D.get_batch(images, labels, perm, i, B)
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 2), epoch), i)
    k_aug, k_dp = jax.random.split(k)
    x = _augment(protocol, k_aug, x, mean, std)
    if batch_sharding is not None:
      x, y = jax.lax.with_sharding_constraint((x, y), batch_sharding)
    dp_key = k_dp if use_drop_path else None
    if protocol.drop_path_schedule == "scheduled":  # (per step: ScheduledDropPath)
      p = protocol.drop_path_at_step(epoch, i, steps_per_epoch)
    first = i == 0  # a new epoch starts its sums afresh
    if packed:
      (_, (loss, logits, new_stats)), grads = jax.value_and_grad(
          lambda w: packed_loss(w, state.batch_stats, x, y, dp_key, p), has_aux=True)(state.params)
      if protocol.grad_clip:
        grads = net.clip_by_global_norm(grads, protocol.grad_clip)
      correct = jnp.sum(jnp.argmax(logits, axis=-1) == y[None], axis=1).astype(jnp.int32)
    else:
      (loss, (logits, new_stats)), grads = jax.value_and_grad(
          lambda w: training_loss(net_, protocol, w, state.batch_stats, x, y, key=dp_key, drop_path_prob=p),
          has_aux=True)(state.params)
      correct = jnp.sum(jnp.argmax(logits, axis=-1) == y).astype(jnp.int32)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = net.finite if packed else guard.all_finite
    ok = state.alive & jnp.isfinite(loss) & finite(params, new_stats, opt_state)
    new = TrainState(params, new_stats, opt_state, ok,
                     jnp.where(first, 0.0, state.loss_sum) + loss * B,
                     jnp.where(first, 0, state.correct) + correct,
                     jnp.where(first, 0, state.seen) + B)
    if not packed:
      return guard.keep_if(ok, new, state)._replace(alive=ok)
    return TrainState(net.select(ok, params, state.params), net.select(ok, new_stats, state.batch_stats),
                      net.select(ok, opt_state, state.opt_state), ok,
                      *(jnp.where(ok, a, b) for a, b in zip(new[4:], state[4:])))

  def eval_one(params, stats, images, labels, valid, mean, std, arc=None):
    net_ = _Bound(net, arc) if shared else net

    def body(total, xs):
      x, y, v = xs
      logits, _, _ = net_.forward(params, stats, _test_transform(protocol, x, mean, std), train=False)
      pred = jnp.argmax(logits, axis=-1)
      hit = (pred == y) & v if not packed else (pred == y[None]) & v[None]
      return total + jnp.sum(hit, axis=-1).astype(jnp.int32), None
    return jax.lax.scan(body, per(jnp.zeros((), jnp.int32)), (images, labels, valid))[0]

  a = (None,) if shared else ()  # (the arc: one more argument, not vmapped, replicated)
  f = (False,) if shared else ()
  return Programs(
      net=net,
      # Run-once programs: LEAN options (``jnas.compile_options``).
      init=lean_jit(jax.vmap(init_one, (0,) + a)),
      permutations=lean_jit(lambda keys, epoch, n: jax.vmap(perm_one, (0, None, None))(keys, epoch, n),
                            static_argnums=2),
      step=step_jit(lay.per_device(jax.vmap(step_one, (0, None, None, 0, None, 0, None, None, None, None) + a),
                                   (True, False, False, True, False, True, False, False, False, False) + f, True),
                    donate_argnums=0),
      evaluate=step_jit(lay.per_device(jax.vmap(eval_one, (0, 0, None, None, None, None, None) + a),
                                       (True, True, False, False, False, False, False) + f, True)),
  )


def _bind_arc(prog: Programs, arc) -> Programs:
  """``shared_programs``' functions with one genotype's arc bound (the interface of ``programs``)."""
  return prog._replace(init=lambda keys: prog.init(keys, arc),
                       step=lambda *args: prog.step(*args, arc),
                       evaluate=lambda *args: prog.evaluate(*args, arc))


# ------------------------------------------------------------------------------------ helpers
def _subset(split: D.Split, n: int) -> D.Split:
  """A fixed random subset of ``n`` images (NumPy seed 0, sorted), or the whole split if n = 0."""
  if not n or n >= len(split.labels):
    return split
  idx = np.sort(np.random.default_rng(0).permutation(len(split.labels))[:n])
  return D.Split(split.images[idx], split.labels[idx])


def _eval_batches(split: D.Split, batch: int):
  """The test split as (nb, batch, ...) arrays with a validity mask (the last batch is padded)."""
  n = len(split.labels)
  batch = max(1, min(batch, n))
  nb = -(-n // batch)
  pad = nb * batch - n
  images = np.concatenate([split.images, np.zeros((pad,) + split.images.shape[1:], split.images.dtype)])
  labels = np.concatenate([split.labels, np.zeros((pad,), split.labels.dtype)])
  valid = np.arange(nb * batch) < n
  shape = lambda a: a.reshape((nb, batch) + a.shape[1:])
  return jax.device_put((shape(images), shape(labels), shape(valid)))


def validate_training(genotypes, seeds, protocol, train, test, num_classes, *, devices: int | None = None,
                      parallel_mode: str = "seeds") -> list[int]:
  """Every check of ``train_genotypes``'s input that needs no compilation (protocol, genotypes,
  seeds, splits, labels, image size for the protocol's network, the device layout); returns the
  seeds as ints. A command calls it before it creates the run directory."""
  seeds = _check_inputs(genotypes, seeds, protocol, train, test, num_classes)
  parallel.resolve(devices, parallel_mode, seeds=len(seeds), batch_size=protocol.batch_size)
  return seeds


def _check_inputs(genotypes, seeds, protocol, train, test, num_classes):
  if not isinstance(protocol, Protocol):
    raise ValueError(f"protocol must be a jnas.train.Protocol, got {type(protocol).__name__} "
                     "(use jnas.train.get_protocol(name))")
  if not genotypes:
    raise ValueError("no genotypes to train")
  from jnas.cellspace import SpaceGenotype
  from jnas.lhd import LHDGenotype
  for i, g in enumerate(genotypes):
    if not isinstance(g, (Genotype, LHDGenotype, SpaceGenotype)):
      raise ValueError(f"genotypes[{i}] is a {type(g).__name__}, not a jnas.Genotype, jnas.lhd.LHDGenotype or "
                       "jnas.cellspace.SpaceGenotype (parse text with jnas.Genotype.parse, "
                       "jnas.lhd.genotype_from_text or jnas.cellspace.genotype_from_text)")
  protocol.network(genotypes[0], int(num_classes))  # (a protocol that does not fit the genotype's network raises)
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError("no seeds")
  if len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
  for name, s in (("train", train), ("test", test)):
    if not isinstance(s, tuple) or len(s) != 2 or np.ndim(s[0]) != 4:
      raise ValueError(f"{name} must be a jnas.data.Split (images (N, H, W, 3) uint8, labels (N,))")
    if np.shape(s[0])[-1] != 3:
      raise ValueError(f"{name} images must have 3 channels (the network's stem is RGB), got shape "
                       f"{np.shape(s[0])}; e.g. jnas.data.load_digits(channels=3)")
    if len(s[0]) != len(s[1]):
      raise ValueError(f"{name}: {len(s[0])} images but {len(s[1])} labels")
    dtype = getattr(s[0], "dtype", None)
    if dtype != np.uint8:
      raise ValueError(f"{name} images are {dtype}; train_genotypes takes uint8 RGB images as jnas.data loads "
                       "them (it augments and normalises them itself)")
  if int(num_classes) < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  for name, s in (("train", train), ("test", test)):
    labels = np.asarray(s[1])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"{name} labels run from {labels.min()} to {labels.max()}, outside 0..{num_classes - 1} "
                       f"(num_classes={num_classes})")
  h, w = np.shape(train[0])[1:3]
  if protocol.macro == "imagenet":
    h = w = protocol.image_size
  spaces = {g.cell_space.macro for g in genotypes if isinstance(g, SpaceGenotype)}
  layouts = [dict(reductions=m.reductions(protocol.layers), aux_position=m.aux_position(protocol.layers))
             for m in spaces]
  if len(spaces) < len(genotypes):
    layouts.append({})
  for layout in layouts:
    macro.check_images(jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32), layers=protocol.layers,
                       auxiliary=protocol.auxiliary_weight > 0, macro=protocol.macro,
                       what=f"protocol {protocol.name!r} ({protocol.layers} cells)", **layout)
  n_train = protocol.train_images or len(train.labels)
  if min(n_train, len(train.labels)) < protocol.batch_size:
    raise ValueError(f"{min(n_train, len(train.labels))} training images are fewer than one batch "
                     f"({protocol.batch_size})")
  return seeds


def _default_norm(protocol: Protocol):
  return (D.IMAGENET_MEAN, D.IMAGENET_STD) if protocol.macro == "imagenet" else (D.CIFAR10_MEAN, D.CIFAR10_STD)


def _summary(g_index: int, genotype: Genotype, seed: int, n_params: int, records: list[dict]) -> dict:
  """The result dict of one pair from its metrics records (ordered by epoch)."""
  recs = sorted(records, key=lambda r: r["epoch"])
  ok = [r for r in recs if r["status"] == "ok"]
  test = [r["test_acc"] for r in ok]
  status = "ok"
  dead = [r for r in recs if r["status"] != "ok"]
  if dead:
    status = f"nan (epoch {dead[0]['epoch']})"
  best_epoch = int(np.argmax(test)) if test else -1
  return {
      "genotype": str(genotype), "genotype_hash": genotype.hash(), "genotype_index": g_index, "seed": seed,
      "test_acc": test, "train_loss": [r["train_loss"] for r in ok], "train_acc": [r["train_acc"] for r in ok],
      "final_acc": test[-1] if test else float("nan"), "best_acc": test[best_epoch] if test else float("nan"),
      "best_epoch": best_epoch, "params": n_params, "status": status,
  }


# --------------------------------------------------------------------------------- the driver
def train_genotypes(genotypes: Sequence[Genotype], seeds: Sequence[int], protocol: Protocol,
                    train: D.Split, test: D.Split, *, num_classes: int,
                    out: str | None = None, resume: bool = False, quiet: bool = False,
                    eval_batch_size: int = 500, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, meta: dict | None = None,
                    overwrite: bool = False, devices: int | None = None, parallel_mode: str = "seeds",
                    pack_size: int | None = None, share_program: "bool | Sequence[str]" = False,
                    _stop_at: int | None = None) -> list[dict]:
  """Trains every (genotype, seed) pair from scratch by ``protocol``; one result dict per pair.

  Args:
    genotypes: the cells to train (``jnas.Genotype``).
    seeds: distinct integer seeds; each pair's randomness depends only on its seed.
    protocol: a ``Protocol`` (``get_protocol('darts')``, ``get_protocol('darts', preset='cpu')``, ...).
    train, test: ``jnas.data.Split`` of uint8 RGB images; ``protocol.train_images`` /
      ``test_images`` pick a fixed subset.
    num_classes: K.
    out: run directory (config.json, metrics.jsonl, checkpoints/, results.json); None keeps
      nothing on disk and leaves signals alone.
    resume: continue the run in ``out`` (its config must match).
    quiet: no progress line.
    eval_batch_size: test batch (500, as NAO/NB evaluate).
    mean, std: normalisation constants (default CIFAR-10's, or ImageNet's for the 224-px macro).
    meta: extra JSON-able facts for config.json (dataset name, method, ...).
    overwrite: replace a run already in ``out``.
    devices, parallel_mode: the first ``devices`` devices (None: all visible that the seed count or
      batch divides by), each stepping its share of the seeds ('seeds') or of every batch
      ('data'); see ``jnas.parallel``. Results equal a one-device run up to float summation order.
    pack_size: genotypes trained side by side in one program (``jnas.packed``: genotypes of one shape,
      in list order, up to ``pack_size`` per program); 1 = one program per genotype. None: the
      measured default for the backend (``default_pack_size``), or on resume the run's own packing.
      Results equal unpacked training up to float summation order.
    share_program: train every genotype through one compiled program with the genotype as data
      (``jnas.arc_network.ArcNetwork``; DARTS genotypes of one node count, two ops per node):
      True = over the ops the genotypes use, a sequence of op names = over those (so that later
      calls with other genotypes of those ops reuse the program, as NSGA-Net's generations do).
      One compile instead of one per genotype; each genotype's numbers are a draw of the same
      distribution as its own program's (same network, same initial distributions, other draws).

  Returns:
    Genotype-major list of ``{"genotype", "genotype_hash", "genotype_index", "seed", "test_acc",
    "train_loss", "train_acc", "final_acc", "best_acc", "best_epoch", "params", "status"}``;
    accuracies in %, ``best_epoch`` 0-based, ``status`` "ok" or "nan (epoch k)" (k 0-based; the
    curves then hold the epochs before k).

  Raises:
    ValueError: bad input. TrainingInterrupted: SIGINT/SIGTERM (after checkpointing ``out``).
  """
  genotypes = list(genotypes)
  seeds = _check_inputs(genotypes, seeds, protocol, train, test, num_classes)
  mean0, std0 = _default_norm(protocol)
  mean = tuple(float(m) for m in (mean0 if mean is None else mean))
  std = tuple(float(s) for s in (std0 if std is None else std))
  train, test = _subset(train, protocol.train_images), _subset(test, protocol.test_images)
  n_train, G, S, E = len(train.labels), len(genotypes), len(seeds), protocol.epochs
  spe = D.num_batches(n_train, protocol.batch_size)
  shared_ops = _shared_ops(genotypes, share_program)
  packs = [[g] for g in range(G)] if shared_ops else _choose_packs(genotypes, pack_size, out if resume else None)
  M = len(packs)
  per_epoch = M * spe  # position of a checkpoint: ((epoch * M) + m) * spe + steps done, m = pack

  config = {"kind": "train_genotypes", "protocol": protocol.to_dict(), "genotypes": [str(g) for g in genotypes],
            "genotype_hashes": [g.hash() for g in genotypes], "seeds": seeds, "num_classes": int(num_classes),
            "train_images": n_train, "test_images": len(test.labels), "image_shape": list(train.images.shape[1:]),
            "eval_batch_size": int(eval_batch_size), "mean": mean, "std": std, "meta": meta or {}}
  if shared_ops:
    config["share_program"] = list(shared_ops)
  if any(len(p) > 1 for p in packs):
    config["packs"] = packs  # (runs from before packing, one program per genotype, have no such key)
  layout = parallel.resolve(devices, parallel_mode, seeds=S, batch_size=protocol.batch_size)
  run = RunDir(out, config, resume=resume, overwrite=overwrite) if out is not None else None

  if shared_ops:
    shared = shared_programs(shared_ops, len(genotypes[0].nodes(False)), protocol, int(num_classes), spe,
                             layout if layout.sharded else None)
    progs = [_bind_arc(shared, shared.net.encode(genotypes[p[0]])) for p in packs]
  else:
    progs = [programs(tuple(genotypes[g] for g in p), protocol, int(num_classes), spe,
                      layout if layout.sharded else None) for p in packs]
  norm = (jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
  states = [p.init(keys) for p in progs]
  n_params = {}
  for p, prog, st in zip(packs, progs, states):
    first = jax.tree.map(lambda a: a[0], st.params)
    for j, g in enumerate(p):
      if shared_ops:  # (the discrete network's count, not the shared program's every-op weights)
        shapes = jax.eval_shape(prog.net.network(genotypes[g]).init_variables, jax.random.key(0))
        n_params[g] = count_params(shapes["params"])
      else:
        n_params[g] = count_params(prog.net.unpack(first, j) if len(p) > 1 else first)
  member_of = {g: m for m, p in enumerate(packs) for g in p}
  records: list[dict] = []
  start = 0
  if run is not None and run.resumed:
    states, start = run.restore(states)
    e0, m0 = divmod(start // spe, M) if start else (0, 0)
    run.truncate_records(lambda r: (r["epoch"], member_of[r["genotype_index"]]) < (e0, m0))
    records = run.records()
  train_dev = layout.place_replicated(jax.device_put(train))
  test_dev = layout.place_replicated(_eval_batches(test, eval_batch_size))
  if layout.sharded:
    place = layout.place_seeded if layout.mode == "seeds" else layout.place_replicated
    states, keys = [place(st) for st in states], place(keys)
    if not quiet:
      print(f"devices: {layout.describe(protocol.batch_size)}", file=sys.stderr)

  bar = Progress(E * per_epoch, f"train {G} genotype{'s' * (G > 1)} x {S} seed{'s' * (S > 1)}", quiet=quiet,
                 initial=start)
  bar.message("metrics per epoch and seed: train_loss / train_acc on the epoch's training batches (train mode, "
              "augmented); test_acc = eval-mode accuracy (running BN statistics) on the test split")
  if shared_ops:
    bar.message(f"{G} genotypes through one shared program (jnas.arc_network, ops {', '.join(shared_ops)})")
  if M < G:
    bar.message(f"{G} genotypes in {M} packed program{'s' * (M > 1)} of up to {max(map(len, packs))} "
                "(jnas.packed; pack_size=1 trains one program per genotype)")
  if run is not None and run.resumed and start:
    where = f"genotype {packs[(start % per_epoch) // spe][0]}" if M == G else f"pack {(start % per_epoch) // spe}"
    bar.message(f"resuming {out} at epoch {start // per_epoch}, {where}, step {start % spe}")
  members = [_member(p, [genotypes[g] for g in p], progs[m], protocol, seeds, train_dev, test_dev, norm, keys, spe,
                     len(test.labels)) for m, p in enumerate(packs)]
  if shared_ops:
    members = [m._replace(program="shared") for m in members]

  def log(rec):
    records.append(rec)
    if run is not None:
      run.log(rec)

  t_run = time.perf_counter()
  states = run_epochs(members, states, epochs=E, steps_per_epoch=spe, run=run, start=start, bar=bar,
                      stop_at=_stop_at, log=log)
  bar.close()

  results = []
  for g, genotype in enumerate(genotypes):
    for s in seeds:
      recs = [r for r in records if r["genotype_index"] == g and r["seed"] == s]
      results.append(_summary(g, genotype, s, n_params[g], recs))
  if run is not None:
    run.write_json("results.json", {"kind": "train_genotypes", "protocol": protocol.to_dict(),
                                    "num_classes": int(num_classes), "meta": meta or {},
                                    "wall_s": round(time.perf_counter() - t_run, 1), "results": results})
  return results


def _shared_ops(genotypes, share_program) -> tuple[str, ...] | None:
  """The op list of the shared program (``share_program``), checking every genotype fits it."""
  if share_program is False or share_program is None:
    return None
  from jnas import ops
  from jnas.arc_network import check_genotype
  if share_program is True:
    used = set().union(*(g.ops() for g in genotypes if isinstance(g, Genotype)))
    op_names = tuple(n for n in ops.OP_NAMES if n in used)
  else:
    op_names = tuple(share_program)
  n_nodes = len(genotypes[0].nodes(False)) if isinstance(genotypes[0], Genotype) else 0
  for i, g in enumerate(genotypes):
    try:
      check_genotype(g, op_names, n_nodes)
    except ValueError as e:
      raise ValueError(f"share_program: genotypes[{i}]: {e}") from None
  return op_names


def default_pack_size(backend: str | None = None) -> int:
  """Genotypes per program when ``train_genotypes`` is not told: ``DEFAULT_PACK_SIZE`` for the backend
  (measured with ``python -m benchmarks.train_step --part packed``; ``benchmarks/results/packed.md``)."""
  backend = backend or jax.default_backend()
  return DEFAULT_PACK_SIZE.get(backend, DEFAULT_PACK_SIZE["cpu"])


def _choose_packs(genotypes, pack_size, resume_dir) -> list[list[int]]:
  """The packs of a run: ``group_by_shape(genotypes, pack_size)``; without ``pack_size``, a resumed
  run keeps the packing it was started with (none for runs from before packing)."""
  if pack_size is None and resume_dir is not None:
    try:
      with open(os.path.join(resume_dir, "config.json")) as f:
        stored = json.load(f)
    except (OSError, ValueError):
      stored = None
    if isinstance(stored, dict) and stored.get("genotypes") == [str(g) for g in genotypes]:
      return [list(map(int, p)) for p in stored.get("packs", [[g] for g in range(len(genotypes))])]
  size = default_pack_size() if pack_size is None else int(pack_size)
  return group_by_shape(genotypes, size)


def _member(pack: list[int], genotypes: list[Genotype], prog: Programs, protocol: Protocol, seeds, train_dev,
            test_dev, norm, keys, spe: int, n_test: int) -> Member:
  """The genotypes ``pack`` (one program; their seeds vmapped) as a member of ``jnas.loop.run_epochs``."""
  alive_at_begin = {}
  K = len(pack)
  col = (lambda a: np.asarray(a).reshape(len(seeds), K))  # (S,) or (S, K) -> (S, K)

  def begin_epoch(state, e):
    alive_at_begin["value"] = col(parallel.to_host(state.alive))
    return prog.permutations(keys, e, len(train_dev.labels)), protocol.drop_path_at(e), state.alive

  def step(state, e, i, ctx):
    perms, p, _ = ctx
    return prog.step(state, train_dev.images, train_dev.labels, perms, i, keys, e, p, *norm)

  def end_epoch(state, e):
    correct = col(parallel.to_host(prog.evaluate(state.params, state.batch_stats, *test_dev, *norm)))
    alive = col(parallel.to_host(state.alive))
    loss_sum, corr, seen = map(col, parallel.to_host((state.loss_sum, state.correct, state.seen)))
    lr = float(protocol.lr_schedule(spe)(e * spe))
    recs = []
    before = alive_at_begin.get("value", alive)
    for c, g in enumerate(pack):
      for j, s in enumerate(seeds):
        if not before[j, c]:
          continue  # stopped in an earlier epoch (its 'nan' record is there)
        rec = {"genotype_index": g, "genotype_hash": genotypes[c].hash(), "seed": s, "epoch": e, "lr": lr,
               "drop_path_prob": protocol.drop_path_at(e)}
        if alive[j, c]:
          rec.update(status="ok", train_loss=float(loss_sum[j, c] / max(seen[j, c], 1)),
                     train_acc=100.0 * float(corr[j, c]) / max(int(seen[j, c]), 1),
                     test_acc=100.0 * float(correct[j, c]) / n_test)
        else:
          rec.update(status="nan")
        recs.append(rec)
    return recs

  def progress(state):
    ok, loss_sum, seen = parallel.to_host((state.alive, state.loss_sum, state.seen))
    loss = loss_sum / np.maximum(seen, 1)
    return {"loss": float(np.mean(loss[ok])) if ok.any() else float("nan")}

  name = f"genotype {pack[0]}" if K == 1 else f"pack of genotypes {_ranges(pack)}"
  return Member(name, begin_epoch, step, end_epoch, lambda state: col(parallel.to_host(state.alive)).reshape(-1),
                progress, images_per_step=len(seeds) * K * protocol.batch_size,
                unit="seed" if K == 1 else "(genotype, seed) run")


def _ranges(idx: list[int]) -> str:
  """[0, 1, 2, 5] -> '0-2, 5'."""
  out, i = [], 0
  while i < len(idx):
    j = i
    while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
      j += 1
    out.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
    i = j + 1
  return ", ".join(out)


def nan_to_none(x):  # JSON helper for CLIs: NaN -> None
  return None if isinstance(x, float) and math.isnan(x) else x
