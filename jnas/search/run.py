"""A whole DARTS search job: many seeds in one compiled program, a run directory, resume.

``run_search(config, seeds, weights_split, alphas_split, out=...)`` puts both halves of the training
data on the device once, then per step and per seed draws batches from that seed's epoch
permutations, augments them inside ``jit`` (crop + flip + normalise, as the DARTS search; cutout
optional) and applies ``DartsSearch.step``. Seeds are a leading axis of the state:

* ``seed_batching='vmap'`` (default): one program, ``jax.vmap`` over seeds.
* ``seed_batching='loop'``: one single-seed program called once per seed (same numbers; pick it
  where vmapped convolutions are slower, see ``benchmarks/search_step.py``).

Every random draw of seed s derives from ``jax.random.key(s)`` and the step count, so seed s inside
a batch of seeds and seed s alone follow the same trajectory, and a resumed run the same as an
uninterrupted one.

Run directory: ``config.json``; ``metrics.jsonl`` (per epoch per seed: losses, accuracies, lr, time,
genotype); ``checkpoints/<epoch>``; at the end, per seed ``seed_<s>/genotype.json`` and
``seed_<s>/alphas.npz``, and ``results.json`` for all seeds. ``load_search(out)`` reads them back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jnas import data as D
from jnas import guard
from jnas.compile_options import lean_jit, step_jit
from jnas.genotype import Genotype
from jnas.progress import Progress
from jnas.rundir import RunDir
from jnas.search.darts import DartsSearch, SearchConfig, SearchState

__all__ = ["SEED_BATCHING", "run_search", "load_search", "make_epoch_fns"]

SEED_BATCHING = ("vmap", "loop")

# fold_in tags of a seed's key
_DATA_W, _DATA_A, _AUG = 1, 2, 3


def make_epoch_fns(search: DartsSearch, *, mean, std, cutout_length: int = 0, seed_batching: str = "vmap"):
  """``(perms_fn, step_fn, eval_fn)`` over a stacked state with a leading seed axis.

  perms_fn(keys, epoch, n_w, n_a) -> (perm_w (S, n_w), perm_a (S, n_a))
  step_fn(state, w_images, w_labels, a_images, a_labels, perm_w, perm_a, i) -> (state, metrics)
  eval_fn(state, images, labels) -> {'loss', 'correct'} per seed (one eval-mode batch)
  """
  if seed_batching not in SEED_BATCHING:
    raise ValueError(f"unknown seed_batching {seed_batching!r}; use one of {SEED_BATCHING}")
  B = search.config.batch_size

  def one_perms(key, epoch, n_w, n_a):
    k_e = jax.random.fold_in
    return (D.epoch_permutation(k_e(k_e(key, _DATA_W), epoch), n_w),
            D.epoch_permutation(k_e(k_e(key, _DATA_A), epoch), n_a))

  def one_step(state: SearchState, w_images, w_labels, a_images, a_labels, perm_w, perm_a, i):
    k = jax.random.fold_in(jax.random.fold_in(state.key, _AUG), state.step)
    k_w, k_a = jax.random.split(k)
    xw, yw = D.get_batch(w_images, w_labels, perm_w, i, B)
    xa, ya = D.get_batch(a_images, a_labels, perm_a, i, B)
    aug = lambda key, x: D.cifar_augment(key, x, mean=mean, std=std, cutout_length=cutout_length)
    return search.step(state, (aug(k_w, xw), yw), (aug(k_a, xa), ya))

  def one_eval(state, images, labels):
    return search.eval_batch(state, (D.normalize(images, mean, std), labels))

  perms_fn = lean_jit(jax.vmap(one_perms, in_axes=(0, None, None, None)), static_argnums=(2, 3))
  data_axes = (0, None, None, None, None, 0, 0, None)
  if seed_batching == "vmap":
    step_fn = step_jit(jax.vmap(one_step, in_axes=data_axes), donate_argnums=0)
    eval_fn = step_jit(jax.vmap(one_eval, in_axes=(0, None, None)))
  else:
    step1 = step_jit(one_step, donate_argnums=0)
    eval1 = step_jit(one_eval)

    def step_fn(state, wi, wl, ai, al, pw, pa, i):
      outs = [step1(jax.tree.map(lambda a: a[s], state), wi, wl, ai, al, pw[s], pa[s], i)
              for s in range(pw.shape[0])]
      return jax.tree.map(lambda *a: jnp.stack(a), *outs)

    def eval_fn(state, images, labels):
      outs = [eval1(jax.tree.map(lambda a: a[s], state), images, labels)
              for s in range(jax.tree.leaves(state.step)[0].shape[0])]
      return jax.tree.map(lambda *a: jnp.stack(a), *outs)
  return perms_fn, step_fn, eval_fn


@functools.lru_cache(maxsize=8)
def _cached_epoch_fns(config: SearchConfig, steps_per_epoch: int, mean: tuple, std: tuple, cutout_length: int,
                      seed_batching: str):
  # One set of jitted functions per setting, so repeated runs in one process (resume, tests,
  # studies) reuse the compiled programs.
  search = DartsSearch(config, steps_per_epoch)
  # The initialisation runs once: LEAN options (``jnas.compile_options``).
  return (lean_jit(jax.vmap(search.init)),) + make_epoch_fns(
      search, mean=mean, std=std, cutout_length=cutout_length, seed_batching=seed_batching)


def _check_split(split, name: str, batch_size: int):
  if split.images.ndim != 4 or split.images.shape[-1] != 3:
    raise ValueError(f"{name}: images must be (N, H, W, 3), got shape {split.images.shape}")
  if split.images.dtype != np.uint8:
    raise ValueError(f"{name}: images must be uint8, got {split.images.dtype}")
  if len(split.labels) < batch_size:
    raise ValueError(f"{name}: {len(split.labels)} images are fewer than one batch of {batch_size}")


def run_search(config: SearchConfig, seeds: Sequence[int], weights_split: D.Split, alphas_split: D.Split, *,
               out: str | None = None, resume: bool = False, overwrite: bool = False, quiet: bool = False,
               mean: Sequence[float] = D.CIFAR10_MEAN, std: Sequence[float] = D.CIFAR10_STD,
               cutout_length: int = 0, seed_batching: str = "vmap", eval_images: int | None = None,
               extra_config: dict | None = None, stop_after_epochs: int | None = None,
               progress_stream=None) -> dict:
  """Runs (or resumes) a DARTS search for every seed in ``seeds``.

  Args:
    config: the search settings (``config.epochs`` epochs of ``len(weights_split) // batch_size``
      steps).
    seeds: integer seeds; seed s starts from ``jax.random.key(s)``.
    weights_split, alphas_split: uint8 data for the weights and for the alphas (``jnas.data.search_split``).
    out: run directory (None: nothing written, no resume).
    resume: continue the run in ``out`` from its last checkpoint.
    overwrite: replace another run in ``out``.
    quiet: no progress line (messages about dead seeds and stops are still printed).
    mean, std: normalisation constants of the dataset.
    cutout_length: cutout in the search (0 = DARTS).
    seed_batching: 'vmap' or 'loop' (see the module docstring).
    eval_images: eval-mode validation on the first ``eval_images`` images of ``alphas_split`` each
      epoch (None: all of them, as quark0's ``infer``; 0: none).
    extra_config: more JSON-able settings stored in config.json (e.g. the dataset).
    stop_after_epochs: stop (with a checkpoint) after this many epochs in total, as if interrupted.

  Returns:
    ``{'genotypes': {seed: Genotype}, 'alphas': {seed: {'normal', 'reduce'}}, 'alive': {seed: bool},
    'history': [per epoch per seed records], 'epochs_done': int, 'stopped': bool}``.
  """
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
  B = config.batch_size
  _check_split(weights_split, "weights_split", B)
  _check_split(alphas_split, "alphas_split", B)
  steps_per_epoch = min(D.num_batches(len(weights_split.labels), B), D.num_batches(len(alphas_split.labels), B))
  search = DartsSearch(config, steps_per_epoch)
  S = len(seeds)

  run = None
  if out is not None:
    cfg = {"search": dataclasses.asdict(config), "seeds": seeds, "cutout_length": cutout_length,
           "seed_batching": seed_batching, "eval_images": eval_images, "steps_per_epoch": steps_per_epoch,
           **(extra_config or {})}
    run = RunDir(out, cfg, resume=resume, overwrite=overwrite, resume_may_change=("seed_batching", "quiet"))

  init_fn, perms_fn, step_fn, eval_fn = _cached_epoch_fns(config, steps_per_epoch, tuple(map(float, mean)),
                                                          tuple(map(float, std)), int(cutout_length), seed_batching)
  state = init_fn(jnp.stack([jax.random.key(s) for s in seeds]))
  epochs_done = 0
  history: list[dict] = []
  if run is not None and resume:
    state, epochs_done = run.restore(state)
    run.truncate_records(lambda r: r.get("epoch", 0) <= epochs_done)
    history = run.records()

  w_images, w_labels = jax.device_put(weights_split.images), jax.device_put(weights_split.labels.astype(np.int32))
  a_images, a_labels = jax.device_put(alphas_split.images), jax.device_put(alphas_split.labels.astype(np.int32))
  n_eval = len(alphas_split.labels) if eval_images is None else min(eval_images, len(alphas_split.labels))
  eval_bs = min(500, max(n_eval, 1))

  bar = Progress(config.epochs * steps_per_epoch, f"search x{S} seeds", quiet=quiet, stream=progress_stream,
                 initial=epochs_done * steps_per_epoch)
  if epochs_done:
    bar.message(f"resumed {out} after epoch {epochs_done}")
  alive_before = np.asarray(state.alive)
  dead_since = {r["seed"]: int(r["status"].rsplit(" ", 1)[-1]) for r in history
                if not r.get("alive", True) and "epoch" in r.get("status", "")}
  stopped = False
  last_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, stop_after_epochs)
  with RunDir.stop_requests() as stop:
    for epoch in range(epochs_done, last_epoch):
      t0 = time.perf_counter()
      perm_w, perm_a = perms_fn(state.key, epoch, len(w_labels), len(a_labels))
      sums = None
      for i in range(steps_per_epoch):
        state, m = step_fn(state, w_images, w_labels, a_images, a_labels, perm_w, perm_a, jnp.int32(i))
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
        if not quiet:
          tl = np.asarray(m["train_loss"])
          bar.update(epoch * steps_per_epoch + i + 1, images=2 * B * S, epoch=f"{epoch + 1}/{config.epochs}",
                     step=f"{i + 1}/{steps_per_epoch}", loss=float(np.nanmean(tl)) if np.isfinite(tl).any() else float("nan"),
                     val=float(np.nanmean(np.asarray(m["val_loss"]))))
        if stop.requested:
          break
      if stop.requested and i + 1 < steps_per_epoch:
        # An epoch cut short is not checkpointed: resume repeats it from its start.
        stopped = True
        bar.message(f"{stop.signal_name}: stopping; the last checkpoint is epoch {epochs_done}", always=True)
        break
      means = jax.device_get(jax.tree.map(lambda a: a / steps_per_epoch, sums))
      evals = _evaluate(eval_fn, state, a_images, a_labels, n_eval, eval_bs) if n_eval else None
      wall = time.perf_counter() - t0
      alive = np.asarray(state.alive)
      for s_idx, seed in enumerate(seeds):
        g = search.derive(jax.tree.map(lambda a: np.asarray(a[s_idx]), state.alphas)) if alive[s_idx] else None
        if not alive[s_idx] and seed not in dead_since:
          dead_since[seed] = epoch + 1
        status = "ok" if alive[s_idx] else f"stopped: non-finite loss or alpha gradient in epoch {dead_since[seed]}"
        rec = {"epoch": epoch + 1, "seed": seed, "alive": bool(alive[s_idx]), "status": status,
               **{k: float(means[k][s_idx]) for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")},
               "time": wall, "genotype": str(g) if g is not None else None}
        if evals is not None:
          rec.update(eval_loss=float(evals["loss"][s_idx]), eval_acc=float(evals["acc"][s_idx]))
        history.append(rec)
        if run is not None:
          run.log(rec)
      for s_idx in guard.newly_dead(alive_before, alive):
        bar.message(f"seed {seeds[s_idx]}: non-finite loss or alpha gradient in epoch {epoch + 1}; this seed "
                    f"stopped and keeps its last finite state; the other seeds go on", always=True)
      alive_before = alive
      epochs_done = epoch + 1
      if run is not None:
        run.save(epochs_done, state)
      if not quiet:
        line = " ".join(f"s{r['seed']}: loss {r['train_loss']:.3f} acc {r['train_acc']:.1f}"
                        + (f" eval {r['eval_acc']:.1f}" if "eval_acc" in r else "")
                        for r in history[-S:])
        bar.message(f"epoch {epoch + 1}/{config.epochs} ({wall:.1f} s): {line}")
      if stop.requested:
        stopped = True
        bar.message(f"{stop.signal_name}: stopped after epoch {epochs_done} (checkpointed)", always=True)
        break
  bar.close()
  if epochs_done < config.epochs:
    stopped = True

  alphas_host = jax.device_get(state.alphas)
  alive = np.asarray(state.alive)
  result = {"genotypes": {}, "alphas": {}, "alive": {}, "history": history, "epochs_done": epochs_done,
            "stopped": stopped}
  for s_idx, seed in enumerate(seeds):
    a = {k: np.asarray(v[s_idx]) for k, v in alphas_host.items()}
    result["alphas"][seed] = a
    result["alive"][seed] = bool(alive[s_idx])
    result["genotypes"][seed] = search.derive(a) if np.all([np.isfinite(v).all() for v in a.values()]) else None
  if run is not None and not stopped:
    summary = []
    for seed in seeds:
      g = result["genotypes"][seed]
      if g is not None:
        run.write_json(f"seed_{seed}/genotype.json", json.loads(g.to_json()))
      run.write_npz(f"seed_{seed}/alphas.npz", **result["alphas"][seed])
      last = [r for r in history if r["seed"] == seed][-1:]
      summary.append({"seed": seed, "alive": result["alive"][seed], "genotype": str(g) if g else None,
                      "final": last[0] if last else None})
    run.write_json("results.json", {"epochs": epochs_done, "seeds": summary})
  return result


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
  total_loss, correct = jax.device_get((total_loss, correct))
  return {"loss": np.asarray(total_loss) / seen, "acc": 100.0 * np.asarray(correct) / seen}


def load_search(out: str) -> dict:
  """Reads a finished search run: ``{'config', 'genotypes': {seed: Genotype}, 'alphas': {seed: dict},
  'history': [records]}``."""
  run_cfg = os.path.join(out, "config.json")
  if not os.path.exists(run_cfg):
    raise FileNotFoundError(f"{out} is not a search run directory (no config.json)")
  with open(run_cfg) as f:
    cfg = json.load(f)
  res = {"config": cfg, "genotypes": {}, "alphas": {}, "history": []}
  for seed in cfg["seeds"]:
    gp = os.path.join(out, f"seed_{seed}", "genotype.json")
    if os.path.exists(gp):
      with open(gp) as f:
        res["genotypes"][seed] = Genotype.from_json(f.read())
    ap = os.path.join(out, f"seed_{seed}", "alphas.npz")
    if os.path.exists(ap):
      with np.load(ap) as z:
        res["alphas"][seed] = {k: z[k] for k in z.files}
  mp = os.path.join(out, "metrics.jsonl")
  if os.path.exists(mp):
    from jnas.checkpoint import read_jsonl
    res["history"] = read_jsonl(mp)
  return res
