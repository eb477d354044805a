"""A whole search job: any registered method, many seeds in one compiled program, stages, resume.

``run_search(method, config, seeds, weights_split, alphas_split, out=...)`` puts the data on the
device once, then per step and per seed draws batches from that seed's epoch permutations, augments
them inside ``jit`` (crop + flip + normalise, as the DARTS search; cutout by ``config.cutout_length``)
and applies the method's step. Seeds are a leading axis of the state:

* ``seed_batching='vmap'``: one program, ``jax.vmap`` over seeds.
* ``seed_batching='loop'``: one single-seed program called once per seed (same numbers; pick it
  where vmapped convolutions are slower).
* ``seed_batching='auto'`` (default): 'loop' for single-path supernets (GDAS; their
  ``lax.switch`` would become a select that computes every op under ``vmap``), else 'vmap'.
One seed always runs the single-seed program.

Stages (P-DARTS, DrNAS): after a stage's last epoch each seed's state goes through the method's
host-side ``transition`` (prune ops, widen channels); seeds whose next contexts agree (the same
pruned op sets) form a group that shares one compiled program; a seed group is a member of
``jnas.loop.run_epochs``. One compile per stage and group.

Every random draw of seed s derives from ``jax.random.key(s)`` and the step count, so seed s inside
a batch of seeds and seed s alone follow the same trajectory, and a resumed run the same as an
uninterrupted one.

Run directory: ``config.json``; ``metrics.jsonl`` (per stage, epoch (0-based) and seed: every
metric the method returns, averaged over the epoch, eval-mode validation, time, the derived
genotype); ``stages.json`` (each stage's first checkpoint number and per-seed context);
``checkpoints/<n>``; ``rollback/<stage>/seed_<s>/epoch_<e>.npz`` (DARTS-ADA's states to go back to);
at the end, per seed ``seed_<s>/genotype.json`` and ``seed_<s>/arch.npz``, and
``results.json`` for all seeds. ``load_search(out)`` reads them back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnas import checkpoint, lhd, macro, parallel
from jnas import data as D
from jnas.compile_options import lean_jit, step_jit
from jnas.genotype import Genotype
from jnas.loop import Interrupted, Member, run_epochs
from jnas.progress import Progress
from jnas.rundir import RunDir
from jnas.search.base import Search, SearchConfig, SearchMethod, SearchState
from jnas.search.registry import MethodSpec

__all__ = ["SEED_BATCHING", "EvalData", "run_search", "load_search", "make_epoch_fns", "resolve_method",
           "Interrupted"]

SEED_BATCHING = ("auto", "vmap", "loop")

# fold_in tags of a seed's key
_DATA_W, _DATA_A, _AUG = 1, 2, 3


class EvalData(NamedTuple):
  """Held-out data for a method's ``derive`` (random search ranks architectures on it): uint8
  images on the device, labels, normalisation, and the batch size to use."""
  images: Any
  labels: Any
  mean: tuple
  std: tuple
  batch_size: int


def resolve_method(method) -> MethodSpec:
  from jnas.search import METHODS
  if isinstance(method, MethodSpec):
    return method
  if method not in METHODS:
    raise ValueError(f"unknown search method {method!r}; known: {', '.join(sorted(METHODS))}")
  return METHODS[method]


def _zero_seeds(state, mask):
  """``state`` with every floating-point leaf of the seeds in ``mask`` set to 0 (keys, counters
  and flags stay)."""
  def z(x):
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      return x
    return jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.zeros_like(x), x)
  return jax.tree.map(lambda x: x if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else z(x), state)


def make_epoch_fns(method: SearchMethod, batch_size: int, *, mean, std, cutout_length: int = 0,
                   seed_batching: str = "auto", layout: parallel.Layout | None = None):
  """``(perms_fn, step_fn, eval_fn)`` over a stacked state with a leading seed axis.

  ``layout`` (``jnas.parallel.Layout``): with 'seeds' the vmapped programs run per device on its
  seeds (``shard_map``); with 'data' every batch is constrained to be split over the devices.

  perms_fn(keys, epoch, n_w, n_a) -> (perm_w (S, n_w), perm_a (S, n_a))
  step_fn(state, sums, w_images, w_labels, a_images, a_labels, perm_w, perm_a, i) -> (state, sums):
    one step; ``sums`` accumulates the step metrics over the epoch (reset at i == 0) and counts
    the steps in ``sums['steps']``.
  eval_fn(state, images, labels) -> {'loss', 'correct'} per seed (one eval-mode batch)
  """
  if seed_batching not in SEED_BATCHING:
    raise ValueError(f"unknown seed_batching {seed_batching!r}; use one of {SEED_BATCHING}")
  B = batch_size
  batch_sharding = layout.batch_spec() if layout is not None else None

  def one_perms(key, epoch, n_w, n_a):
    k_e = jax.random.fold_in
    return (D.epoch_permutation(k_e(k_e(key, _DATA_W), epoch), n_w),
            D.epoch_permutation(k_e(k_e(key, _DATA_A), epoch), n_a))

  def one_step_m(state: SearchState, sums, w_images, w_labels, a_images, a_labels, perm_w, perm_a, i):
    k = jax.random.fold_in(jax.random.fold_in(state.key, _AUG), state.step)
    k_w, k_a = jax.random.split(k)
    xw, yw = D.get_batch(w_images, w_labels, perm_w, i, B)
    xa, ya = D.get_batch(a_images, a_labels, perm_a, i, B)
    aug = lambda key, x: D.cifar_augment(key, x, mean=mean, std=std, cutout_length=cutout_length)
    bw, ba = (aug(k_w, xw), yw), (aug(k_a, xa), ya)
    if batch_sharding is not None:  # data parallelism: every batch split over the devices
      bw, ba = jax.lax.with_sharding_constraint((bw, ba), batch_sharding)
    state, m = method.step(state, bw, ba)
    m = dict(m, steps=jnp.ones((), jnp.float32))
    m = {k_: v.astype(jnp.float32) for k_, v in m.items()}
    first = i == 0
    return state, jax.tree.map(lambda s, v: jnp.where(first, v, s + v), sums, m), m

  def one_step(*args):
    state, sums, _ = one_step_m(*args)
    return state, sums

  data_axes = (0, 0, None, None, None, None, 0, 0, None)
  vstep_m = jax.vmap(one_step_m, in_axes=data_axes)

  def isolated_vstep(state: SearchState, sums, *data):
    """The vmapped step, with the seeds kept apart when one diverges.

    XLA:CPU lowers the batched weight-gradient convolutions of vmapped seeds to dense ones with a
    block-diagonal mask, so a NaN in one seed's activations (0 * NaN) spreads to the other seeds'
    1x1-conv gradients. So: seeds already dead run on zeroed state (finite, and their result is
    discarded); and if in this step some seed's own loss turns non-finite while other seeds die
    with finite losses, the step is run again (a ``while_loop``: the step is compiled once) with
    the diverging seeds zeroed. The other seeds then get exactly the values they get alone.
    """
    alive0 = state.alive

    def body(carry):
      it, mask, _, _ = carry
      new, new_sums, m = vstep_m(_zero_seeds(state, mask), sums, *data)
      died = alive0 & ~mask & ~new.alive
      own_loss = m.get("train_loss")
      culprits = died & ~jnp.isfinite(own_loss) if own_loss is not None else died
      redo = jnp.any(culprits) & jnp.any(died & ~culprits)
      return it + 1, mask | culprits, redo, (new, new_sums)

    init = (jnp.zeros((), jnp.int32), ~alive0, jnp.ones((), bool), (state, sums))
    _, mask, _, (new, new_sums) = lax.while_loop(lambda c: c[2] & (c[0] < 2), body, init)
    keep_old = lambda o, n: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), o, n)
    is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    new = jax.tree.map(lambda o, n: n if is_key(n) else keep_old(o, n), state, new)
    return new._replace(alive=new.alive & ~mask), new_sums

  def one_eval(state, images, labels):
    return method.evaluate(state, (D.normalize(images, mean, std), labels))

  perms_fn = lean_jit(jax.vmap(one_perms, in_axes=(0, None, None, None)), static_argnums=(2, 3))
  seed_batching = resolve_batching(method, seed_batching)
  # jit compiles on first use: only the programs a run calls are compiled
  step1, eval1 = step_jit(one_step, donate_argnums=(0, 1)), step_jit(one_eval)
  lay = layout or parallel.Layout(1)
  stepv = step_jit(lay.per_device(isolated_vstep, (True, True, False, False, False, False, True, True, False),
                                  (True, True)), donate_argnums=(0, 1))
  evalv = step_jit(lay.per_device(jax.vmap(one_eval, in_axes=(0, None, None)), (True, False, False), True))
  batched = lambda n: seed_batching == "vmap" and n > 1

  def step_fn(state, sums, wi, wl, ai, al, pw, pa, i):
    if batched(pw.shape[0]):
      return stepv(state, sums, wi, wl, ai, al, pw, pa, i)
    outs = [step1(jax.tree.map(lambda a: a[s], state), jax.tree.map(lambda a: a[s], sums), wi, wl, ai, al,
                  pw[s], pa[s], i) for s in range(pw.shape[0])]
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)

  def eval_fn(state, images, labels):
    n = jax.tree.leaves(state.step)[0].shape[0]
    if batched(n):
      return evalv(state, images, labels)
    outs = [eval1(jax.tree.map(lambda a: a[s], state), images, labels) for s in range(n)]
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)

  step_fn.single, step_fn.batched, step_fn.mode = step1, stepv, seed_batching
  return perms_fn, step_fn, eval_fn


class _Programs(NamedTuple):
  method: SearchMethod
  init: Any
  perms: Any
  step: Any
  evaluate: Any
  sums: Any  # zero metric sums of one seed (structure for checkpoints)
  hessian: Any = None  # (state, images, labels, perm_a, i) -> {'hessian_max', 'hessian_min'} per seed


MONITORS = ("hessian",)


def make_hessian_fn(method: SearchMethod, batch_size: int, *, mean, std, iters: int, seed_batching: str,
                    layout: parallel.Layout | None = None, hvp: str = "fd"):
  """``(state, a_images, a_labels, perm_a, i) -> {'hessian_max', 'hessian_min'}`` per seed: the
  arch Hessian's extreme eigenvalues on architecture batch ``i`` of each seed's permutation
  (normalised, not augmented), seeds vmapped (or looped, as the step is)."""
  from jnas.search.hessian import arch_hessian_eigenvalue

  def one(state, images, labels, perm, i):
    x, y = D.get_batch(images, labels, perm, i, batch_size)
    key = jax.random.fold_in(state.key, state.step)
    return arch_hessian_eigenvalue(method, state, (D.normalize(x, mean, std), y), key=key, iters=iters, hvp=hvp)

  lay = layout or parallel.Layout(1)
  vmapped = step_jit(lay.per_device(jax.vmap(one, in_axes=(0, None, None, 0, None)),
                                    (True, False, False, True, False), True))
  single = step_jit(one)
  loop = resolve_batching(method, seed_batching) != "vmap"

  def fn(state, images, labels, perm, i):
    n = perm.shape[0]
    if not loop or n == 1:
      return vmapped(state, images, labels, perm, i)
    outs = [single(jax.tree.map(lambda a: a[s], state), images, labels, perm[s], i) for s in range(n)]
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)

  return fn


@functools.lru_cache(maxsize=16)
def _programs(spec: MethodSpec, config: SearchConfig, steps_per_epoch: int, stage: int, context_json: str,
              mean: tuple, std: tuple, seed_batching: str, image_shape: tuple,
              layout: parallel.Layout | None = None, hessian_iters: int = 20, hessian_hvp: str = "fd") -> _Programs:
  # One set of jitted functions per setting, so repeated runs in one process (resume, tests,
  # studies) reuse the compiled programs.
  search = spec(config, steps_per_epoch)
  method = search.stage(stage, json.loads(context_json)).method
  perms, step, evaluate = make_epoch_fns(method, config.batch_size, mean=mean, std=std,
                                         cutout_length=config.cutout_length, seed_batching=seed_batching,
                                         layout=layout)
  B = config.batch_size
  batch = (jax.ShapeDtypeStruct((B,) + image_shape, jnp.float32), jax.ShapeDtypeStruct((B,), jnp.int32))
  state = jax.eval_shape(method.init, jax.random.key(0))
  _, metrics = jax.eval_shape(method.step, state, batch, batch)
  sums = {k: jnp.zeros((), jnp.float32) for k in list(metrics) + ["steps"]}
  # The initialisation runs once: LEAN options (``jnas.compile_options``).
  hessian = make_hessian_fn(method, B, mean=mean, std=std, iters=hessian_iters, hvp=hessian_hvp,
                            seed_batching=seed_batching, layout=layout) if method.loss is not None else None
  # (compiled on first use)
  return _Programs(method, lean_jit(jax.vmap(method.init)), perms, step, evaluate, sums, hessian)


def _check_split(split, name: str, batch_size: int, num_classes: int):
  if len(split.images) != len(split.labels):
    raise ValueError(f"{name}: {len(split.images)} images but {len(split.labels)} labels")
  if split.images.ndim != 4 or split.images.shape[-1] != 3:
    raise ValueError(f"{name}: images must be (N, H, W, 3), got shape {split.images.shape}")
  if split.images.dtype != np.uint8:
    raise ValueError(f"{name}: images must be uint8, got {split.images.dtype}")
  if len(split.labels) < batch_size:
    raise ValueError(f"{name}: {len(split.labels)} images are fewer than one batch of {batch_size}")
  labels = np.asarray(split.labels)
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"{name}: labels run from {labels.min()} to {labels.max()}, outside 0..{num_classes - 1} "
                     f"(the config's num_classes={num_classes})")


def _stage_key(seed: int, stage: int):
  key = jax.random.key(seed)
  return key if stage == 0 else jax.random.fold_in(key, 1000 + stage)


def _ctx_json(ctx) -> str:
  return json.dumps(ctx, sort_keys=True)


def _host(tree, s_idx):
  """Seed ``s_idx``'s slice of a stacked tree as NumPy arrays (PRNG keys stay JAX arrays)."""
  is_key = lambda a: jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
  tree = parallel.to_host(tree)
  return jax.tree.map(lambda a: a[s_idx] if is_key(a) else np.asarray(a[s_idx]), tree)


def _finite_mean(x: float):
  return None if not np.isfinite(x) else float(x)


def resolve_batching(method: SearchMethod, seed_batching: str) -> str:
  """'auto' -> 'loop' for a single-path supernet (its ``lax.switch`` would become a select over
  every op under ``vmap``), else 'vmap'; 'vmap' and 'loop' as given."""
  if seed_batching == "auto":
    return "loop" if getattr(method.net, "single_path", False) else "vmap"
  return seed_batching


def _layout(search: Search, n_seeds: int, devices, parallel_mode: str, seed_batching: str,
            batch_size: int) -> parallel.Layout:
  """The device layout of a search: in 'seeds' mode one device when the seeds run one after
  another (a single-path method, or one seed)."""
  method = search.stage(0, search.initial_context).method
  if parallel_mode == "seeds" and (resolve_batching(method, seed_batching) == "loop" or n_seeds == 1):
    if devices is not None:
      parallel.Layout(int(devices), parallel_mode)  # (more devices than visible is still an error)
    devices = 1
  return parallel.resolve(devices, parallel_mode, seeds=n_seeds, batch_size=batch_size)


def validate_search(method, config: SearchConfig, weights_split: D.Split, alphas_split: D.Split | None = None,
                    seeds: Sequence[int] = (0,), *, devices: int | None = None, parallel_mode: str = "seeds",
                    seed_batching: str = "auto") -> MethodSpec:
  """Every check of ``run_search``'s input that needs no compilation (config type, seeds, splits,
  labels, image size for the supernet, the method's own build, the device layout); returns the
  method's spec. A command calls it before it creates the run directory."""
  spec = resolve_method(method)
  if not isinstance(config, spec.config):
    raise ValueError(f"method {spec.name!r} takes a {spec.config.__name__}, got {type(config).__name__}")
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
  B = config.batch_size
  _check_split(weights_split, "weights_split", B, config.num_classes)
  if alphas_split is not None:
    _check_split(alphas_split, "alphas_split", B, config.num_classes)
    if alphas_split.images.shape[1:] != weights_split.images.shape[1:]:
      raise ValueError(f"weights_split and alphas_split images differ in shape: {weights_split.images.shape[1:]} "
                       f"and {alphas_split.images.shape[1:]}")
  image_shape = tuple(weights_split.images.shape[1:])
  macro.check_images(jax.ShapeDtypeStruct((1, *image_shape), jnp.float32), layers=config.layers,
                     what=f"the {spec.name} supernet ({config.layers} cells)")
  arch_split = alphas_split if alphas_split is not None else weights_split
  search = spec(config, min(D.num_batches(len(weights_split.labels), B), D.num_batches(len(arch_split.labels), B)))
  _layout(search, len(seeds), devices, parallel_mode, seed_batching, B)
  return spec


def run_search(method, config: SearchConfig, seeds: Sequence[int], weights_split: D.Split,
               alphas_split: D.Split | None = None, *, out: str | None = None, resume: bool = False,
               overwrite: bool = False, quiet: bool = False, mean: Sequence[float] = D.CIFAR10_MEAN,
               std: Sequence[float] = D.CIFAR10_STD, seed_batching: str = "auto", eval_images: int | None = None,
               extra_config: dict | None = None, stop_at: int | None = None, progress_stream=None,
               seed_lr_scale: dict | None = None, devices: int | None = None, parallel_mode: str = "seeds",
               monitor: Sequence[str] = (), hessian_iters: int = 20, hessian_hvp: str = "fd",
               monitor_every: int | None = None, selection: str | None = None, pt_config=None) -> dict:
  """Runs (or resumes) a search with ``method`` for every seed in ``seeds``.

  Args:
    method: a name of ``jnas.search.METHODS`` ('darts', 'gdas', ...) or a ``MethodSpec``.
    config: the method's config (``METHODS[name].config(...)``; ``config.epochs`` per stage of
      ``len(weights_split) // batch_size`` steps).
    seeds: integer seeds; seed s starts from ``jax.random.key(s)``.
    weights_split, alphas_split: uint8 data for the weights and for the architecture
      (``jnas.data.search_split``); ``alphas_split=None``: single-level methods on all the data
      (the architecture batches, if a method wants them, come from ``weights_split``).
    out: run directory (None: nothing written, no resume).
    resume: continue the run in ``out`` from its last checkpoint.
    overwrite: replace another run in ``out``.
    quiet: no progress line (messages about dead seeds and stops are still printed).
    mean, std: normalisation constants of the dataset.
    seed_batching: 'auto', 'vmap' or 'loop' (see the module docstring).
    eval_images: eval-mode validation on the first ``eval_images`` images of ``alphas_split`` each
      epoch (None: all of them, as quark0's ``infer``; 0: none).
    extra_config: more JSON-able settings stored in config.json (e.g. the dataset).
    stop_at: stop (with a checkpoint) at this many steps of the run, as if interrupted (tests).
    devices, parallel_mode: spread the job over the first ``devices`` devices (None: all visible)
      by seeds (each device steps its share of the seeds; the seed count must divide) or by data
      (the batch split over the devices); see ``jnas.parallel``. Single-path methods, whose seeds
      run one after another, use one device in 'seeds' mode.
    seed_lr_scale: ``{seed: factor}`` on that seed's weight learning rate (default 1): per-seed
      learning rates in one compiled program (the updates are scaled, which for SGD and Adam is the
      same as a scaled rate; the virtual step of second-order DARTS keeps the unscaled rate).
    monitor: diagnostics per epoch and seed beyond the always-logged ``edge_entropy`` (mean entropy
      of the eval-mode edge weights) and ``skip_share`` (skip-connects in the derived normal cell):
      'hessian' adds ``hessian_max`` / ``hessian_min``, the extreme eigenvalues of the Hessian of
      the loss with respect to the alphas on the epoch's last architecture batch (normalised, not
      augmented; train-mode BN), by ``hessian_iters`` Lanczos steps on Hessian-vector products
      (``hessian_hvp``: 'fd', a central difference of two gradients, or 'exact', reverse over
      reverse, which needs far more memory; ``jnas.search.hessian``). A method whose rules need a
      monitor (DARTS-ES) adds it itself.
    monitor_every: compute the monitor at epochs e with e % monitor_every == 0 and at a stage's
      last epoch (None: the method's period, 1 for most methods, 2 for DARTS-ES).
    selection: 'method' (the method's own rule on its final state), 'pt' (DARTS-PT: decisions by
      perturbation on the trained supernet with fine-tuning between them, any method's supernet;
      ``jnas.search.projection``; its records go to ``projection_<group>.jsonl``, its checkpoints
      to ``projection/<group>/``, and a resumed run continues it) or None (the method's default: 'pt' for
      ``darts-pt``, else 'method'). pt_config: its ``projection.PTConfig`` (default: the search's
      batch size).

  Returns:
    ``{'genotypes': {seed: Genotype | None}, 'arch': {seed: arch arrays}, 'alive': {seed: bool},
    'history': [per stage, epoch and seed records], 'method': name}``, with ``'selected_epoch'``
    for methods with a ``select`` rule and ``'rollbacks'`` for methods that roll back (DARTS-ADA). A seed stopped by a
    non-finite loss, gradient or weight (``alive`` False) keeps its last finite state; its
    genotype here is derived from that state, and the run directory holds no ``seed_<s>/`` for it
    (``results.json`` gives it as ``genotype_last_finite``).

  Raises:
    ValueError: bad input. Interrupted: SIGINT/SIGTERM or ``stop_at`` (after the checkpoint).
  """
  spec = validate_search(method, config, weights_split, alphas_split, seeds, devices=devices,
                         parallel_mode=parallel_mode, seed_batching=seed_batching)
  monitor = tuple(monitor)
  if monitor_every is not None and int(monitor_every) < 1:
    raise ValueError(f"monitor_every must be >= 1, got {monitor_every}")
  unknown = sorted(set(monitor) - set(MONITORS))
  if unknown:
    raise ValueError(f"unknown monitor(s) {unknown}; known: {', '.join(MONITORS)}")
  if int(hessian_iters) < 1:
    raise ValueError(f"hessian_iters must be >= 1, got {hessian_iters}")
  if hessian_hvp not in ("fd", "exact"):
    raise ValueError(f"unknown hessian_hvp {hessian_hvp!r}; use 'fd' or 'exact'")
  if selection not in (None, "method", "pt"):
    raise ValueError(f"unknown selection {selection!r}; use 'method' or 'pt'")
  seeds = [int(s) for s in seeds]
  lr_scale = {int(k): float(v) for k, v in (seed_lr_scale or {}).items()}
  if set(lr_scale) - set(seeds) or any(not (v > 0 and np.isfinite(v)) for v in lr_scale.values()):
    raise ValueError(f"seed_lr_scale {seed_lr_scale}: needs factors > 0 for seeds among {seeds}")
  B = config.batch_size
  arch_split = alphas_split if alphas_split is not None else weights_split
  n_w, n_a = len(weights_split.labels), len(arch_split.labels)
  steps_per_epoch = min(D.num_batches(n_w, B), D.num_batches(n_a, B))
  search: Search = spec(config, steps_per_epoch)
  selection = selection or search.selection
  if selection == "pt":
    from jnas.search import projection
    if pt_config is None:  # the config's own selection settings (darts-pt), the search's batch size
      names = {f.name for f in dataclasses.fields(projection.PTConfig)} - {"batch_size", "eval_batch_size"}
      pt_config = projection.PTConfig(batch_size=config.batch_size,
                                      eval_batch_size=min(64, len(arch_split.labels)),
                                      **{k: v for k, v in config.to_dict().items() if k in names})
    if alphas_split is None:
      raise ValueError("selection='pt' needs a validation split (alphas_split): its decisions are by validation accuracy")
  monitor = tuple(dict.fromkeys(monitor + tuple(search.monitor)))  # (the method's rules may need one)
  monitor_every = int(monitor_every if monitor_every is not None else search.monitor_every)
  mean, std = tuple(map(float, mean)), tuple(map(float, std))
  image_shape = tuple(weights_split.images.shape[1:])

  layout = _layout(search, len(seeds), devices, parallel_mode, seed_batching, B)
  run = None
  if out is not None:
    cfg = {"method": spec.name, "search": config.to_dict(), "seeds": seeds, "seed_batching": seed_batching,
           "eval_images": eval_images, "steps_per_epoch": steps_per_epoch, "split": alphas_split is not None,
           **({"selection": "pt", "pt": dataclasses.asdict(pt_config)} if selection == "pt" else {}),
           **({"seed_lr_scale": {str(k): v for k, v in sorted(lr_scale.items())}} if lr_scale else {}),
           **(extra_config or {})}
    if monitor:
      cfg["monitor"] = {"names": list(monitor), "hessian_iters": int(hessian_iters), "hessian_hvp": hessian_hvp,
                        **({"every": monitor_every} if monitor_every != 1 else {})}
    run = RunDir(out, cfg, resume=resume, overwrite=overwrite,
                 resume_may_change=("seed_batching", "quiet", "monitor"))

  put = layout.place_replicated
  w_images, w_labels = put(jax.device_put(weights_split.images)), put(jax.device_put(weights_split.labels.astype(np.int32)))
  a_images, a_labels = put(jax.device_put(arch_split.images)), put(jax.device_put(arch_split.labels.astype(np.int32)))
  n_eval = 0 if alphas_split is None else (n_a if eval_images is None else min(eval_images, n_a))
  eval_bs = min(500, max(n_eval, 1))
  eval_data = EvalData(a_images, a_labels, mean, std, min(B * 4, n_a))

  if not quiet:
    print(f"metrics per epoch and seed: train_loss / train_acc on the epoch's training batches (train-mode BN, "
          f"as trained); eval_acc = eval-mode accuracy (running BN statistics) on "
          f"{'the validation split' if n_eval else 'no images (no validation split)'}"
          f"{f' ({n_eval} images)' if n_eval else ''}", file=progress_stream or sys.stderr)
  if not quiet and layout.sharded:
    print(f"devices: {layout.describe(B)}", file=progress_stream or sys.stderr)
  total_steps_estimate = search.num_stages * config.epochs * steps_per_epoch
  bar = Progress(total_steps_estimate, f"{spec.name} x{len(seeds)} seed{'s' * (len(seeds) > 1)}", quiet=quiet,
                 stream=progress_stream)

  # ------------------------------------------------------------------ stages: resume point
  stages = _read_stages(run) if (run is not None and run.resumed) else []
  history: list[dict] = run.records() if (run is not None and run.resumed) else []
  contexts = {s: search.initial_context for s in seeds}
  stage, start, restored = 0, 0, None
  latest = run.resume_point() if run is not None and run.resumed else None
  if latest is not None and stages:
    stage = max(i for i, st in enumerate(stages) if st["start"] <= latest)
    contexts = {int(k): v for k, v in stages[stage]["contexts"].items()}
    start, restored = latest - stages[stage]["start"], latest
  elif run is not None and run.resumed:
    stages = []

  alive_carry = {s: True for s in seeds}
  result_states: dict[int, Any] = {}
  steps_before = 0
  while stage < search.num_stages:
    groups = _group(seeds, contexts)
    progs = [_programs(spec, config, steps_per_epoch, stage, _ctx_json(contexts[g[0]]), mean, std, seed_batching,
                       image_shape, layout if layout.sharded else None, int(hessian_iters), hessian_hvp)
             for g in groups]
    stage_epochs = progs[0].method.epochs or config.epochs
    loop_epochs = stage_epochs + search.extra_epochs  # (seeds that went back finish their epochs)
    G = len(groups)
    offset = stages[stage]["start"] if stage < len(stages) else (
        (stages[-1]["start"] + stage_total(stages[-1]) + 1) if stages else 0)
    if stage >= len(stages):
      stages.append({"start": offset, "epochs": loop_epochs, "groups": G, "steps_per_epoch": steps_per_epoch,
                     "name": search.stage(stage, contexts[seeds[0]]).name,
                     "contexts": {str(s): contexts[s] for s in seeds}})
      if run is not None:
        run.write_json("stages.json", stages)
    # initial states (fresh, or carried over by the transition), or the checkpoint's
    carried = result_states
    states = []
    for g, prog in zip(groups, progs):
      if all(s in carried and carried[s] is not None for s in g):
        st = jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *[carried[s] for s in g])
      else:
        st = prog.init(jnp.stack([_stage_key(s, stage) for s in g]))
      st = st._replace(alive=jnp.asarray([alive_carry[s] for s in g]),
                       lr_scale=jnp.asarray([lr_scale.get(s, 1.0) for s in g], jnp.float32))
      states.append((st, jax.tree.map(lambda z: jnp.broadcast_to(z, (len(g),)), prog.sums)))
    if restored is not None:
      states = run.restore_step(states, restored)
      restored = None
      history = [r for r in history if _before(r, stage, start, groups, steps_per_epoch)]
      run.truncate_records(lambda r: _before(r, stage, start, groups, steps_per_epoch))
      bar.message(f"resumed {out} at stage {stage + 1}/{search.num_stages}, position {start} of "
                  f"{stage_epochs * G * steps_per_epoch}")
    elif run is not None and stage > 0 and start == 0:
      run.save(offset, list(states))  # the stage's first state (after the transition)
    if layout.sharded:  # seeds over the devices ('seeds'), or everything replicated ('data')
      states = [tuple(layout.place_seeded(x) if layout.mode == "seeds" and len(g) % layout.devices == 0
                      else layout.place_replicated(x) for x in st) for g, st in zip(groups, states)]
    members = [_member(spec.name, search.num_stages, stage, g, prog, (w_images, w_labels, a_images, a_labels),
                       n_eval, eval_bs, B, steps_per_epoch, run is not None, quiet, monitor,
                       lambda e, n=loop_epochs: e % monitor_every == 0 or e == n - 1,
                       own_epoch=search.adapt is not None)
               for g, prog in zip(groups, progs)]
    bar.total = max(bar.total, steps_before + stage_epochs * G * steps_per_epoch)
    label = (lambda e, st=stage: f"stage {st + 1}/{search.num_stages} epoch {e + 1}/{stage_epochs}") \
        if search.num_stages > 1 else None

    def log(rec):
      history.append(rec)
      if run is not None:
        run.log(rec)

    finished = None
    if search.stop is not None:
      announced: set[int] = set()

      def finished(e, stage=stage):
        """Every live seed's stop rule is met (DARTS-ES): the stage ends after epoch e - 1."""
        done = True
        for s in seeds:
          recs = _trajectory(_stage_records(history, stage, s))
          if recs and not recs[-1]["alive"]:
            continue
          if recs and search.stop(recs):
            if s not in announced:
              announced.add(s)
              sel = search.select(recs) if search.select is not None else None
              bar.message(f"seed {s}: the stop rule holds after epoch {e}"
                          + (f" (its result: the genotype of epoch {sel + 1})" if sel is not None else ""),
                          always=True)
          else:
            done = False
        if done and e < loop_epochs:
          bar.message(f"every seed has stopped: the stage ends after epoch {e} of {loop_epochs}", always=True)
        return done

    at_boundary = None
    if search.adapt is not None:
      snapshots = _Snapshots(run.file(os.path.join("rollback", str(stage))) if run is not None else None)

      def at_boundary(e, states, stage=stage):
        """Per seed: keep the state of the epoch just ended where a later rollback may want it; roll
        back the seeds whose ``adapt`` rule fires."""
        for gi, grp in enumerate(groups):
          st, sums = states[gi]
          host_st = None  # (one host copy of the group's state, made when a seed needs it)
          for k, s in enumerate(grp):
            recs = _trajectory(_stage_records(history, stage, s))
            if not recs or not recs[-1]["alive"]:
              continue
            own = recs[-1]["epoch"]
            if search.snapshot_at is not None and search.snapshot_at(own):
              host_st = parallel.to_host(st) if host_st is None else host_st
              snapshots.put(s, own, _host(host_st, k))
            decision = search.adapt(recs)
            if decision is None:
              continue
            to, update, what = decision
            if not any(r["epoch"] == to for r in recs):
              raise RuntimeError(f"seed {s}: rollback to epoch {to}, which is not in its records")
            host_st = parallel.to_host(st) if host_st is None else host_st
            st = _set_seed(st, k, update(snapshots.get(s, to, _host(host_st, k))))
            snapshots.drop_after(s, to)
            bar.message(f"seed {s}: rolled back after its epoch {own + 1} to the end of its epoch {to + 1}: {what}",
                        always=True)
            # (the progress line's total: this seed now needs stage_epochs - 1 - to more epochs)
            bar.total = max(bar.total, steps_before + (e + stage_epochs - 1 - to) * G * steps_per_epoch)
          states[gi] = (st, sums)
        return states

    try:
      states = run_epochs(members, states, epochs=loop_epochs, steps_per_epoch=steps_per_epoch, run=run,
                          start=start, offset=offset, bar=bar, bar_offset=steps_before,
                          stop_at=None if stop_at is None else stop_at - offset, log=log, epoch_label=label,
                          finished=finished, at_boundary=at_boundary)
    except Interrupted:
      bar.close()
      raise
    steps_before += loop_epochs * G * steps_per_epoch
    start = 0
    # per seed host states at the stage's end
    host = {}
    for g, (st, _) in zip(groups, states):
      for k, s in enumerate(g):
        host[s] = _host(st, k)
        alive_carry[s] = bool(host[s].alive)
    final_methods = {s: progs[gi].method for gi, g in enumerate(groups) for s in g}
    if stage + 1 < search.num_stages:
      new_contexts, result_states = {}, {}
      for s in seeds:
        ctx, nxt = search.transition(stage, host[s], contexts[s], jax.random.fold_in(jax.random.key(s), 2000 + stage))
        new_contexts[s], result_states[s] = ctx, nxt
      contexts = new_contexts
      if not quiet:
        bar.message(f"stage {stage + 1} done; stage {stage + 2}: {search.stage(stage + 1, contexts[seeds[0]]).name}")
    stage += 1
  bar.close()

  projected = {}
  if selection == "pt":
    projected = _project(groups, host, final_methods, weights_split, alphas_split, pt_config, mean, std, run, quiet,
                         progress_stream)

  result = {"method": spec.name, "genotypes": {}, "arch": {}, "alive": {}, "history": history}
  if search.select is not None:
    result["selected_epoch"] = {}
  if search.adapt is not None:
    result["rollbacks"] = {s: _rollbacks(_stage_records(history, search.num_stages - 1, s)) for s in seeds}
  for s in seeds:
    st = host[s]
    result["arch"][s] = jax.tree.map(np.asarray, st.arch)
    result["alive"][s] = bool(st.alive)
    selected = None
    if search.select is not None:
      recs = _trajectory(_stage_records(history, search.num_stages - 1, s))
      selected = search.select(recs) if recs else None
      result["selected_epoch"][s] = selected
    try:
      if s in projected:
        result["genotypes"][s] = projected[s]
      elif selected is not None:  # the genotype derived at the end of the selected epoch
        text = next(r["genotype"] for r in recs if r["epoch"] == selected)
        result["genotypes"][s] = lhd.genotype_from_text(text) if text else None
      else:
        result["genotypes"][s] = final_methods[s].derive(st, eval_data)
    except ValueError:  # non-finite architecture parameters
      result["genotypes"][s] = None
  if run is not None:
    summary = []
    for s in seeds:
      g = result["genotypes"][s]
      last = [r for r in history if r["seed"] == s][-1:]
      if result["alive"][s]:
        if g is not None:
          run.write_json(f"seed_{s}/genotype.json", g.to_dict())
        run.write_npz(f"seed_{s}/arch.npz", **_flatten(result["arch"][s]))
        summary.append({"seed": s, "alive": True, "genotype": str(g) if g else None,
                        "final": last[0] if last else None,
                        **({"selected_epoch": result["selected_epoch"][s]} if "selected_epoch" in result else {}),
                        **({"rollbacks": result["rollbacks"][s]} if "rollbacks" in result else {})})
      else:  # a stopped seed's search did not finish: no genotype.json, its last finite one here
        summary.append({"seed": s, "alive": False, "genotype": None,
                        "genotype_last_finite": str(g) if g else None, "final": last[0] if last else None})
    run.write_json("results.json", {"method": spec.name, "stages": search.num_stages, "seeds": summary})
  return result


def _project(groups, host, methods, weights_split, alphas_split, pt_config, mean, std, run, quiet, stream) -> dict:
  """DARTS-PT on the final supernet of every seed group (one pair of programs per group), resumable
  from ``projection/<group>/``; returns ``{seed: Genotype}``."""
  from jnas import checkpoint as ckpt
  from jnas.search import projection
  out = {}
  for gi, g in enumerate(groups):
    method = methods[g[0]]
    state = jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *[host[s] for s in g])
    directory = run.file(os.path.join("projection", str(gi))) if run is not None else None
    restore = None
    latest = ckpt.latest_step(directory) if directory is not None else None
    if latest is not None:
      template = projection.payload_template(state, method.net, pt_config)
      saved = ckpt.restore_state(directory, {"state": template["state"], "selection": template["selection"]},
                                 step=latest)
      with open(os.path.join(directory, f"history_{latest}.json")) as f:
        restore = {"position": latest, "history": json.load(f), **saved}
    if not quiet:
      print(f"DARTS-PT selection on seeds {list(g)}" + (f" (resumed at position {restore['position']})" if restore else ""),
            file=stream or sys.stderr)

    n_pos = 2 * len(projection.schedule(method.net.steps, pt_config.proj_intv))
    bar = Progress(n_pos, f"DARTS-PT seeds {list(g)}", quiet=quiet, stream=stream,
                   initial=restore["position"] if restore else 0)

    def save(position, payload, directory=directory, bar=bar):
      # positions: 2k + 1 after decision k, 2k + 2 after the tuning epochs that follow it
      bar.update(position, decision=f"{(position + 1) // 2}/{n_pos // 2}",
                 phase="decided" if position % 2 else "tuned")
      if directory is None:
        return
      # the records first: a checkpoint without its records is never the latest
      ckpt.atomic_write_json(os.path.join(directory, f"history_{position}.json"), payload["history"])
      ckpt.save_state(directory, position, {"state": payload["state"], "selection": payload["selection"]})
      for name in os.listdir(directory):  # records of checkpoints no longer kept
        if name.startswith("history_") and int(name[8:-5]) < position - 1:
          os.remove(os.path.join(directory, name))

    res = projection.project(method, state, weights_split, alphas_split, pt_config, a_tx=method.a_tx, mean=mean,
                             std=std, checkpoint=save, restore=restore)
    bar.close()
    for k, s in enumerate(g):
      out[s] = res.genotypes[k]
    if run is not None:
      lines = [json.dumps({"seed": s, **r}) for k, s in enumerate(g) for r in res.history[k]]
      ckpt.atomic_write_text(run.file(f"projection_{gi}.jsonl"), "\n".join(lines) + "\n")
  return out


def stage_total(stage_rec: dict) -> int:
  return stage_rec["epochs"] * stage_rec["groups"] * stage_rec["steps_per_epoch"]


def _before(record: dict, stage: int, pos: int, groups, spe: int) -> bool:
  """A metrics record written before position ``pos`` of ``stage`` (kept on resume)."""
  if record.get("stage", 0) != stage:
    return record.get("stage", 0) < stage
  g = next((i for i, grp in enumerate(groups) if record.get("seed") in grp), 0)
  return (record["epoch"] * len(groups) + g + 1) * spe <= pos


def _trajectory(records: list) -> list:
  """A seed's records (epoch order of the run) as its own trajectory: with ``search_epoch`` in the
  records (methods that roll back), ``epoch`` becomes the seed's own epoch (``loop_epoch`` the
  run's), and a record whose own epoch is not after the last one's (a rollback happened before it)
  drops the records from that epoch on; ``rollbacks`` counts the rollbacks before each record.
  Without ``search_epoch`` the records are returned as they are."""
  if not records or "search_epoch" not in records[0]:
    return records
  out, n = [], 0
  for r in records:
    own = r["search_epoch"]
    if r.get("alive", True) and out and own <= out[-1]["epoch"]:
      n += 1
      out = [x for x in out if x["epoch"] < own]
    out.append({**r, "epoch": own, "loop_epoch": r["epoch"], "rollbacks": n})
  return out


def _rollbacks(records: list) -> list:
  """``[{'after_epoch': own epoch, 'loop_epoch': ..., 'to_epoch': ...}]``: the rollbacks of a seed."""
  out, last = [], None
  for r in records:
    own = r.get("search_epoch")
    if own is None:
      return []
    if r.get("alive", True) and last is not None and own <= last[0]:
      out.append({"after_epoch": last[0], "loop_epoch": last[1], "to_epoch": own - 1})
    last = (own, r["epoch"])
  return out


def _set_seed(stacked, k: int, one):
  """``stacked`` (a leading seed axis) with seed ``k``'s slice replaced by the host state ``one``
  (its PRNG keys stay: a seed's key does not change)."""
  is_key = lambda a: jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
  return jax.tree.map(lambda a, b: a if is_key(a) else a.at[k].set(jnp.asarray(b, a.dtype)), stacked, one)


class _Snapshots:
  """End-of-epoch states of single seeds that a rollback may return to: in memory, or, with a run
  directory, as ``<dir>/seed_<s>/epoch_<e>.npz`` (written atomically; a resumed run finds them)."""

  def __init__(self, directory: str | None):
    self.directory, self.memory = directory, {}

  def _path(self, seed, epoch):
    return os.path.join(self.directory, f"seed_{seed}", f"epoch_{epoch}.npz")

  def put(self, seed: int, epoch: int, state) -> None:
    if self.directory is None:
      self.memory[(seed, epoch)] = state
      return
    leaves = jax.tree.leaves(state)
    arrays = {f"leaf_{i}": (np.asarray(jax.random.key_data(a)) if _is_key(a) else np.asarray(a))
              for i, a in enumerate(leaves)}
    os.makedirs(os.path.dirname(self._path(seed, epoch)), exist_ok=True)
    checkpoint.atomic_write_npz(self._path(seed, epoch), **arrays)

  def get(self, seed: int, epoch: int, template):
    if self.directory is None:
      if (seed, epoch) not in self.memory:
        raise RuntimeError(f"seed {seed}: no kept state of epoch {epoch} to roll back to")
      return self.memory[(seed, epoch)]
    path = self._path(seed, epoch)
    if not os.path.exists(path):
      raise RuntimeError(f"seed {seed}: no kept state of epoch {epoch} to roll back to ({path} is missing)")
    leaves, treedef = jax.tree.flatten(template)
    with np.load(path) as z:
      if len(z.files) != len(leaves):
        raise RuntimeError(f"{path}: {len(z.files)} arrays, but the state has {len(leaves)}")
      new = [jax.random.wrap_key_data(z[f"leaf_{i}"]) if _is_key(t) else z[f"leaf_{i}"]
             for i, t in enumerate(leaves)]
    return jax.tree.unflatten(treedef, new)

  def drop_after(self, seed: int, epoch: int) -> None:
    """Forget the states of epochs after ``epoch`` (the seed runs them again)."""
    if self.directory is None:
      for key in [k for k in self.memory if k[0] == seed and k[1] > epoch]:
        del self.memory[key]
      return
    d = os.path.dirname(self._path(seed, 0))
    for name in os.listdir(d) if os.path.isdir(d) else []:
      if name.startswith("epoch_") and int(name[6:-4]) > epoch:
        os.remove(os.path.join(d, name))


def _is_key(a) -> bool:
  return jax.dtypes.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key)


def _stage_records(history: list, stage: int, seed: int) -> list:
  """Seed ``seed``'s records of ``stage``, in epoch order."""
  return sorted((r for r in history if r.get("stage", 0) == stage and r.get("seed") == seed),
                key=lambda r: r["epoch"])


def _read_stages(run: RunDir) -> list:
  p = run.file("stages.json")
  if not os.path.exists(p):
    return []
  with open(p) as f:
    return json.load(f)


def _group(seeds, contexts) -> list[list[int]]:
  """Seeds with equal contexts, in seed order of first appearance."""
  order: dict[str, list[int]] = {}
  for s in seeds:
    order.setdefault(_ctx_json(contexts[s]), []).append(s)
  return list(order.values())


def _flatten(tree) -> dict:
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    out[jax.tree_util.keystr(path).strip("[]'\"").replace("']['", "/")] = np.asarray(leaf)
  return out


def _member(name, num_stages, stage, group, prog: _Programs, data, n_eval, eval_bs, B, spe, has_run, quiet,
            monitor=(), monitor_at=lambda e: True, own_epoch=False):
  w_images, w_labels, a_images, a_labels = data
  n_w, n_a = int(w_labels.shape[0]), int(a_labels.shape[0])
  t_epoch = {}

  def begin_epoch(state, e):
    st, _ = state
    t_epoch["t0"] = time.perf_counter()
    t_epoch["perms"] = prog.perms(st.key, e, n_w, n_a)
    return t_epoch["perms"]

  def step(state, e, i, ctx):
    st, sums = state
    perm_w, perm_a = ctx
    return prog.step(st, sums, w_images, w_labels, a_images, a_labels, perm_w, perm_a, jnp.int32(i))

  def end_epoch(state, e):
    st, sums = state
    sums = parallel.to_host(sums)
    n = np.maximum(sums["steps"], 1)
    means = {k: v / n for k, v in sums.items() if k != "steps"}
    evals = _evaluate(prog.evaluate, st, a_images, a_labels, n_eval, eval_bs) if n_eval else None
    alive = parallel.to_host(st.alive)
    wall = time.perf_counter() - t_epoch.get("t0", time.perf_counter())
    hess = None
    if "hessian" in monitor and prog.hessian is not None and alive.any() and monitor_at(e):
      perm_a = t_epoch["perms"][1] if "perms" in t_epoch else prog.perms(st.key, e, n_w, n_a)[1]
      t_h = time.perf_counter()
      hess = parallel.to_host(prog.hessian(st, a_images, a_labels, perm_a, jnp.int32(spe - 1)))
      hess["time"] = time.perf_counter() - t_h
    records = []
    steps = parallel.to_host(st.step) if own_epoch else None
    for k, seed in enumerate(group):
      g = None
      if alive[k]:
        try:
          g = prog.method.derive(_host(st.arch, k))
        except ValueError:
          g = None
      rec = {"stage": stage, "epoch": e, "seed": seed, "alive": bool(alive[k]),
             "status": "ok" if alive[k] else "stopped: non-finite loss or gradient",
             **{m: _finite_mean(means[m][k]) for m in means if m != "alive"},
             "time": wall, "genotype": str(g) if g is not None else None}
      if own_epoch:  # the seed's own epoch (differs from the run's after a rollback)
        rec["search_epoch"] = int(steps[k]) // spe - 1
      if evals is not None:
        rec.update(eval_loss=_finite_mean(evals["loss"][k]), eval_acc=_finite_mean(evals["acc"][k]))
      rec.update(_diagnostics(prog.method, _host(st.arch, k) if alive[k] else None, g))
      if hess is not None and alive[k]:
        rec.update(hessian_max=_finite_mean(hess["hessian_max"][k]), hessian_min=_finite_mean(hess["hessian_min"][k]),
                   hessian_time=hess["time"])
      records.append(rec)
    return records

  def progress(state):
    st, sums = state
    s = parallel.to_host(sums)
    n = np.maximum(s["steps"], 1)
    loss = s["train_loss"] / n
    return {"loss": float(np.nanmean(loss)) if np.isfinite(loss).any() else float("nan")}

  label = f"seeds {list(group)}"
  return Member(label, begin_epoch, step, end_epoch, lambda state: parallel.to_host(state[0].alive), progress,
                images_per_step=2 * B * len(group))


def _diagnostics(method: SearchMethod, arch, genotype) -> dict:
  """``edge_entropy``, ``skip_share`` and ``op_magnitude`` of one seed (host side; None where they
  do not apply). ``op_magnitude``: per op of the supernet, the sum over the normal cell's edges of
  its eval-mode edge weight (SS-DARTS's m_t)."""
  from jnas.search.hessian import edge_entropy, skip_share
  out = {"skip_share": None if genotype is None else _finite_mean(skip_share(genotype)), "edge_entropy": None,
         "op_magnitude": None}
  if arch is not None and method.eval_weights is not None:
    try:
      w = method.eval_weights(arch)
      if isinstance(w, dict) and "normal" in w:
        out["edge_entropy"] = _finite_mean(float(edge_entropy(w)))
        m = np.asarray(w["normal"], np.float64).sum(0)
        out["op_magnitude"] = [float(v) for v in m] if np.all(np.isfinite(m)) else None
    except (TypeError, ValueError, KeyError):
      pass
  return out


def _evaluate(eval_fn, state, images, labels, n: int, bs: int) -> dict:
  total_loss, correct, seen = 0.0, 0, 0
  for lo in range(0, n - n % bs if n >= bs else 0, bs):
    r = eval_fn(state, images[lo:lo + bs], labels[lo:lo + bs])
    total_loss = total_loss + r["loss"] * bs
    correct = correct + r["correct"]
    seen += bs
  if seen == 0:
    r = eval_fn(state, images[:n], labels[:n])
    total_loss, correct, seen = r["loss"] * n, r["correct"], n
  total_loss, correct = parallel.to_host((total_loss, correct))
  return {"loss": np.asarray(total_loss) / seen, "acc": 100.0 * np.asarray(correct) / seen}


def load_search(out: str) -> dict:
  """Reads a search run: ``{'config', 'method', 'genotypes': {seed: Genotype}, 'arch': {seed: {name:
  array}}, 'history': [records], 'finished': bool}`` (a run in progress has no genotypes yet)."""
  run_cfg = os.path.join(out, "config.json")
  if not os.path.exists(run_cfg):
    raise FileNotFoundError(f"{out} is not a search run directory (no config.json)")
  with open(run_cfg) as f:
    cfg = json.load(f)
  res = {"config": cfg, "method": cfg.get("method", "darts"), "genotypes": {}, "arch": {}, "history": [],
         "finished": os.path.exists(os.path.join(out, "results.json"))}
  for seed in cfg["seeds"]:
    gp = os.path.join(out, f"seed_{seed}", "genotype.json")
    if os.path.exists(gp):
      with open(gp) as f:
        res["genotypes"][seed] = lhd.genotype_from_dict(json.loads(f.read()))
    ap = os.path.join(out, f"seed_{seed}", "arch.npz")
    if os.path.exists(ap):
      with np.load(ap) as z:
        res["arch"][seed] = {k: z[k] for k in z.files}
  mp = os.path.join(out, "metrics.jsonl")
  if os.path.exists(mp):
    res["history"] = checkpoint.read_jsonl(mp)
  return res


def config_from_dict(spec: MethodSpec, d: dict) -> SearchConfig:
  """The method's config from a dict of its fields (config.json's 'search'); others are ignored."""
  names = {f.name for f in dataclasses.fields(spec.config)}
  kw = {k: (tuple(v) if k == "primitives" else v) for k, v in d.items() if k in names}
  return spec.config(**kw)
