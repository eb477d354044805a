"""A run directory: the one place a search, a retraining or a study writes to and resumes from.

Layout (design.md)::

  <out>/config.json        the run's settings (written once; a resume must match them)
  <out>/metrics.jsonl      one JSON line per epoch per seed (appended; a torn last line is ignored)
  <out>/checkpoints/<n>/   orbax checkpoints of the whole state, n = completed epochs
  <out>/*.json, *.npz      results, written atomically (never a half-written file)

Stopping: inside ``with run.stop_requests() as stop:`` the first SIGINT or SIGTERM only sets
``stop.requested``; the loop checks it at a step boundary, checkpoints and returns. A second
SIGINT interrupts at once (KeyboardInterrupt), as Ctrl-C usually does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from typing import Any

import numpy as np

from jnas import checkpoint

__all__ = ["RunDir", "RunExistsError", "StopRequests", "default_out"]


class RunExistsError(FileExistsError):
  """The run directory holds another run and neither resume nor overwrite was asked for."""


def default_out(kind: str, name: str) -> str:
  """``runs/<kind>/<name>`` relative to the working directory."""
  return os.path.join("runs", kind, name)


def _canonical(obj: Any) -> Any:
  return json.loads(json.dumps(obj, default=checkpoint._to_json, sort_keys=True))


class StopRequests:
  """Set by SIGINT/SIGTERM; polled by training loops."""

  def __init__(self):
    self.requested = False
    self.signal_name: str | None = None


class RunDir:
  """A run directory at ``path``.

  Args:
    path: the directory (created if missing).
    config: the run's settings (JSON-able). On a fresh directory it is written to config.json;
      with ``resume=True`` it must equal the stored one except for the keys in ``resume_may_change``.
    resume: continue the run stored at ``path`` (a missing directory starts fresh).
    overwrite: allow a fresh run in a directory that holds another run (the directory is
      emptied first).
    resume_may_change: config keys a resume may change (e.g. the number of epochs, or ``quiet``).

  Raises:
    RunExistsError: ``path`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    ValueError: resuming with a config that differs from the stored one.
  """

  def __init__(self, path: str | os.PathLike, config: dict, *, resume: bool = False, overwrite: bool = False,
               resume_may_change: tuple[str, ...] = ()):
    self.path = os.fspath(path)
    self.config = _canonical(config)
    cfg_path = os.path.join(self.path, "config.json")
    exists = os.path.exists(cfg_path)
    if exists and resume:
      with open(cfg_path) as f:
        stored = json.load(f)
      diff = sorted(k for k in set(stored) | set(self.config)
                    if k not in resume_may_change and stored.get(k) != self.config.get(k))
      if diff:
        details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {self.config.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume {self.path}: its config differs ({details})")
      if stored != self.config:
        checkpoint.atomic_write_json(cfg_path, self.config, sort_keys=True)
      self.resumed = True
    else:
      if exists and not overwrite:
        raise RunExistsError(f"{self.path} already holds a run; pass --resume to continue it, "
                             f"--overwrite to replace it, or choose another --out")
      if exists:
        # The directory holds a run (it has a config.json): clear all of it, so no result file
        # of the old run can pass for the new one's.
        shutil.rmtree(self.path)
      os.makedirs(self.path, exist_ok=True)
      checkpoint.atomic_write_json(cfg_path, self.config, sort_keys=True)
      self.resumed = False

  # ---------------------------------------------------------------------------------- files
  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.path, "checkpoints")

  def log(self, record: dict) -> None:
    """Appends one record to metrics.jsonl (NumPy scalars and arrays become JSON numbers/lists)."""
    checkpoint.append_jsonl(self.file("metrics.jsonl"), _canonical(record))

  def records(self) -> list[dict]:
    p = self.file("metrics.jsonl")
    return checkpoint.read_jsonl(p) if os.path.exists(p) else []

  def truncate_records(self, keep) -> None:
    """Keeps only the metrics records for which ``keep(record)`` is true (after a resume, drop the
    lines of epochs the restored checkpoint does not contain)."""
    kept = [r for r in self.records() if keep(r)]
    checkpoint.atomic_write_text(self.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in kept))

  def write_json(self, name: str, obj: Any) -> str:
    path = self.file(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoint.atomic_write_json(path, obj)
    return path

  def write_npz(self, name: str, **arrays) -> str:
    path = self.file(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoint.atomic_write_npz(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return path

  # ---------------------------------------------------------------------------- checkpoints
  def save(self, epoch: int, state: Any, keep: int | None = 2) -> None:
    """Checkpoints ``state`` after ``epoch`` completed epochs (skipped if that one exists)."""
    if checkpoint.latest_step(self.checkpoint_dir) == epoch:
      return
    checkpoint.save_state(self.checkpoint_dir, epoch, state, keep=keep)

  def latest_epoch(self) -> int | None:
    return checkpoint.latest_step(self.checkpoint_dir)

  def restore_step(self, target: Any, step: int) -> Any:
    """The checkpoint ``step`` restored into the structure of ``target``."""
    return checkpoint.restore_state(self.checkpoint_dir, target, step)

  def restore(self, target: Any) -> tuple[Any, int]:
    """``(state, completed_epochs)`` from the newest checkpoint, or ``(target, 0)`` if none."""
    epoch = self.latest_epoch()
    if epoch is None:
      return target, 0
    return checkpoint.restore_state(self.checkpoint_dir, target, epoch), epoch

  # -------------------------------------------------------------------------------- signals
  @staticmethod
  @contextlib.contextmanager
  def stop_requests():
    """Turns the first SIGINT/SIGTERM into ``stop.requested = True`` (main thread only)."""
    stop = StopRequests()
    if threading.current_thread() is not threading.main_thread():
      yield stop
      return

    def handler(signum, frame):
      if stop.requested and signum == signal.SIGINT:
        raise KeyboardInterrupt
      stop.requested = True
      stop.signal_name = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield stop
    finally:
      for s, h in old.items():
        signal.signal(s, h)
