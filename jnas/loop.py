"""The one epoch loop of jnas: every search stage and every retraining runs through it.

A run is a list of *members* that advance together, epoch by epoch: the seed groups of a search
stage (seeds that share a compiled program), or the genotypes (or packs of genotypes) of
``jnas.train.train_genotypes`` (each with its seeds vmapped). Epoch e runs member 0 for
``steps_per_epoch`` steps, then member 1, ..., then every member's ``end_epoch`` records are logged. So a run is a sequence of positions
``pos = (e * G + g) * steps_per_epoch + i`` (G members), and a checkpoint holds the states of all
members at one position:

* after every epoch, and when SIGINT or SIGTERM arrives (at the step where it arrived; the step in
  flight finishes first), or at ``stop_at`` (a test hook);
* checkpoint numbers are ``offset + pos``, so several loops (the stages of a search) can share
  one checkpoint directory with increasing numbers.

A stop raises ``Interrupted`` after the checkpoint; ``resume`` from that position continues to the
same result as an uninterrupted run. Members whose seeds all died (non-finite loss) are skipped.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from jnas.progress import Progress
from jnas.rundir import RunDir

__all__ = ["Interrupted", "Member", "run_epochs", "EXIT_CODES"]

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Interrupted(RuntimeError):
  """A run stopped by SIGINT/SIGTERM (or a requested stop) after checkpointing.

  ``signal_name`` is 'SIGINT', 'SIGTERM' or None (a requested stop); ``exit_code`` is what a
  command should exit with (130 for SIGINT, 143 for SIGTERM, 1 otherwise); ``position`` is the
  checkpointed position. Resume with ``resume=True`` (command line: ``--resume``).
  """

  def __init__(self, message: str, signal_name: str | None = None, position: int | None = None):
    super().__init__(message)
    self.signal_name = signal_name
    self.position = position
    self.exit_code = EXIT_CODES.get(signal_name or "", 1)


class Member(NamedTuple):
  """One member of a run (its state lives outside, in the list given to ``run_epochs``).

  begin_epoch(state, epoch) -> ctx: per-epoch inputs (data permutations), computed once per epoch.
  step(state, epoch, i, ctx) -> state: one step (a compiled program).
  end_epoch(state, epoch) -> list of records for metrics.jsonl (evaluation, derived genotypes).
  alive(state) -> per-seed bools. progress(state) -> fields for the progress line.
  ``alive`` and ``progress`` may gather arrays over processes (``parallel.to_host``); the loop calls
  them at the same steps in every process of a job.
  """
  name: str
  begin_epoch: Callable[[Any, int], Any]
  step: Callable[[Any, int, int, Any], Any]
  end_epoch: Callable[[Any, int], list]
  alive: Callable[[Any], np.ndarray]
  progress: Callable[[Any], dict] | None = None
  images_per_step: int = 0
  unit: str = "seed"  # what one entry of ``alive`` is, in messages (a pack's: '(genotype, seed) run')
  program: Any = None  # members with one (non-None) ``program`` share one compiled step


def run_epochs(members: Sequence[Member], states: list, *, epochs: int, steps_per_epoch: int,
               run: RunDir | None = None, start: int = 0, offset: int = 0, bar: Progress | None = None,
               bar_offset: int = 0, stop_at: int | None = None, log: Callable[[dict], None] | None = None,
               epoch_label: Callable[[int], str] | None = None,
               finished: Callable[[int], bool] | None = None,
               at_boundary: Callable[[int, list], list] | None = None) -> list:
  """Runs positions ``start .. epochs * len(members) * steps_per_epoch`` and returns the states.

  Args:
    members, states: the members and their states (one state per member; updated in place).
    epochs, steps_per_epoch: the run's length.
    run: where checkpoints go (None: no checkpoints, and signals are left alone).
    start: the position to start from (a resumed checkpoint's position, or 0).
    offset: added to positions to make checkpoint numbers.
    bar, bar_offset: progress line, and the steps done before this loop (earlier stages).
    stop_at: stop (checkpoint, then ``Interrupted``) on reaching this position.
    log: called with every record ``end_epoch`` returns (e.g. ``RunDir.log``).
    epoch_label: text for epoch e in messages (default 'epoch e+1/epochs').
    finished(epochs_done) -> bool: asked at every epoch boundary (also the one a resumed run starts
      at); True ends the run there, before ``epochs`` (an early stop such as DARTS-ES).

  Raises:
    Interrupted: SIGINT/SIGTERM or ``stop_at``, after the checkpoint.
  """
  G, spe = len(members), steps_per_epoch
  per_epoch = G * spe
  total = epochs * per_epoch
  label = epoch_label or (lambda e: f"epoch {e + 1}/{epochs}")

  def save(pos):
    if run is not None:
      run.save(offset + pos, list(states))

  stops = RunDir.stop_requests() if run is not None else contextlib.nullcontext(None)
  compiled: set = set()
  with stops as stop:
    pos = start
    while pos < total:
      e, rem = divmod(pos, per_epoch)
      if rem == 0 and e > 0 and at_boundary is not None:
        states[:] = at_boundary(e, list(states))
      if rem == 0 and finished is not None and finished(e):
        break
      g, i0 = divmod(rem, spe)
      member, state = members[g], states[g]
      alive_before = np.asarray(member.alive(state))
      if alive_before.any():
        ctx = member.begin_epoch(state, e)
        t0 = last = time.perf_counter()
        last_i = i0
        for i in range(i0, spe):
          first_call = (g if member.program is None else ("program", member.program)) not in compiled
          signalled = stop is not None and stop.requested
          if signalled or (stop_at is not None and pos == stop_at):
            states[g] = state
            save(pos)
            if bar is not None:
              bar.close()
            why = stop.signal_name if signalled else None
            where = f"{label(e)}, step {i}/{spe}" + (f", {member.name}" if G > 1 else "")
            saved = f"checkpointed in {run.path}; continue with resume=True (command line: --resume)" \
                if run is not None else "nothing was saved (no run directory)"
            raise Interrupted(f"stopped by {why or 'request'} at {where}; {saved}", why, pos)
          if first_call and bar is not None:
            bar.message(f"compiling {member.name if G > 1 else 'the step'} (the first step of a new program; "
                        "a minute or more on a CPU, seconds from the compilation cache)")
            t_c = time.perf_counter()
          state = member.step(state, e, i, ctx)
          if first_call:
            compiled.add(g if member.program is None else ("program", member.program))
            if bar is not None:
              dt = time.perf_counter() - t_c
              bar.exclude(dt)  # the ETA counts steps after compilation only
              bar.message(f"compiled in {dt:.1f} s")
          pos += 1
          if bar is not None:
            now = time.perf_counter()
            if now - last > 1.0 or i == spe - 1:
              # ``progress`` may gather over processes (every process must make the same calls):
              # in a multi-process job only at the epoch's last step, not on each process's clock.
              gather = member.progress is not None and (i == spe - 1 or jax.process_count() == 1)
              fields = member.progress(state) if gather else {}
              bar.update(bar_offset + pos, images=(i + 1 - last_i) * member.images_per_step,
                         epoch=label(e).split(" ", 1)[-1], step=f"{i + 1}/{spe}", **fields)
              last, last_i = now, i + 1
        states[g] = state
        records = member.end_epoch(state, e)
        for rec in records:
          if log is not None:
            log(rec)
        alive = np.asarray(member.alive(state))
        if bar is not None:
          dead = np.flatnonzero(alive_before & ~alive)
          if dead.size:
            left = sum(int(np.asarray(m.alive(st)).sum()) for m, st in zip(members, states))
            u = member.unit
            bar.message(f"{member.name}: {dead.size} {u}(s) hit a non-finite loss, gradient or weight in "
                        f"{label(e)} and stop with their last finite state; "
                        + (f"{left} {u}(s) go on" if left else f"no {u} is left"), always=True)
          bar.message(f"{label(e)}{' ' + member.name if G > 1 else ''} ({time.perf_counter() - t0:.1f} s): "
                      + _summary(records))
      pos = e * per_epoch + (g + 1) * spe  # (a member whose seeds all died is skipped)
      if pos % per_epoch == 0:
        save(pos)
  return states


def _summary(records: list[dict]) -> str:
  """A short line from an epoch's records: per seed the main numbers."""
  parts = []
  for r in records:
    if r.get("status", "ok") != "ok":
      parts.append(f"s{r.get('seed')}: stopped")
      continue
    vals = [f"{k} {r[k]:.3g}" for k in ("train_loss", "train_acc", "eval_acc", "test_acc")
            if isinstance(r.get(k), (int, float))]
    parts.append(f"s{r.get('seed')}: " + " ".join(vals))
  return "; ".join(parts)
