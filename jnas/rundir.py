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
import sys
import threading
from typing import Any

import jax
import numpy as np

from jnas import checkpoint

__all__ = ["RunDir", "RunExistsError", "NoRunError", "CheckpointDamagedError", "StopRequests", "default_out",
           "holds_run", "has_progress", "check_writable", "remove_run", "note_written", "prepare"]


class RunExistsError(FileExistsError):
  """The run directory holds another run and neither resume nor overwrite was asked for."""


class NoRunError(FileNotFoundError):
  """``resume`` was asked for, but the directory holds no run."""


class CheckpointDamagedError(RuntimeError):
  """Every checkpoint of a run is damaged (unreadable), so it cannot be resumed."""


MANIFEST = ".jnas-run.json"  # the top-level names a run wrote (what --overwrite removes)
_ALWAYS = ("config.json", "metrics.jsonl", "checkpoints", MANIFEST)


def default_out(kind: str, name: str) -> str:
  """``runs/<kind>/<name>`` relative to the working directory."""
  return os.path.join("runs", kind, name)


def _canonical(obj: Any) -> Any:
  return json.loads(json.dumps(obj, default=checkpoint._to_json, sort_keys=True))


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


def holds_run(path: str | os.PathLike) -> bool:
  """Whether ``path`` holds a run (a ``config.json`` written by a ``RunDir``)."""
  return os.path.exists(os.path.join(os.fspath(path), "config.json"))


def has_progress(path: str | os.PathLike) -> bool:
  """Whether the run at ``path`` got anywhere: a checkpoint or a metrics record, in it or in a run
  nested in it (a study's units). A run that failed or was killed before that (bad input found
  late, a crash while compiling) leaves nothing worth keeping, and a new run may take its place
  without ``overwrite``."""
  for root, dirs, files in os.walk(os.fspath(path)):
    if os.path.basename(root) == "checkpoints":
      if any(n.isdigit() for n in dirs):
        return True
      dirs[:] = []
      continue
    if "metrics.jsonl" in files and os.path.getsize(os.path.join(root, "metrics.jsonl")) > 0:
      return True
  return False


def check_writable(path: str | os.PathLike) -> None:
  """Raises ``PermissionError`` naming ``path`` if a run could not be written there (tried by
  creating the folder and a file in it; what the check creates is removed again)."""
  path = os.path.abspath(os.fspath(path))
  top = path
  while not os.path.exists(top):
    parent = os.path.dirname(top)
    if parent == top:
      break
    top = parent
  if os.path.exists(top) and not os.path.isdir(top):
    raise NotADirectoryError(f"--out {path}: {top} is a file, not a folder")
  created = []
  try:
    d = path
    missing = []
    while not os.path.exists(d):
      missing.append(d)
      d = os.path.dirname(d)
    for d in reversed(missing):
      os.mkdir(d)
      created.append(d)
    probe = os.path.join(path, f".jnas-write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"--out {path}: cannot write there ({e.strerror or e})") from None
  finally:
    for d in reversed(created):
      try:
        os.rmdir(d)
      except OSError:
        pass


def remove_run(path: str | os.PathLike) -> list[str]:
  """Removes what a run wrote in ``path`` (its manifest's entries, config, metrics, checkpoints)
  and nothing else: files a user put in the folder stay. Returns the removed names."""
  path = os.fspath(path)
  names = set(_ALWAYS)
  manifest = os.path.join(path, MANIFEST)
  if os.path.exists(manifest):
    try:
      with open(manifest) as f:
        names |= set(json.load(f))
    except (OSError, ValueError):
      pass
  removed = []
  for name in sorted(names, key=lambda n: n == MANIFEST):  # the manifest last
    full = os.path.join(path, name)
    if os.path.isdir(full) and not os.path.islink(full):
      shutil.rmtree(full)
    elif os.path.lexists(full):
      os.remove(full)
    else:
      continue
    removed.append(name)
  return removed


def note_written(path: str | os.PathLike, name: str) -> None:
  """Records in the manifest of the run at ``path`` that the run wrote ``name`` (a file or folder
  in it), so that ``overwrite`` removes it; for files written without a ``RunDir``."""
  path = os.fspath(path)
  top = os.path.normpath(name).split(os.sep)[0]
  if top in _ALWAYS:
    return
  manifest = os.path.join(path, MANIFEST)
  names = set()
  if os.path.exists(manifest):
    try:
      with open(manifest) as f:
        names = set(json.load(f))
    except (OSError, ValueError):
      pass
  if top not in names:
    checkpoint.atomic_write_json(manifest, sorted(names | {top}))


def prepare(path: str | os.PathLike, *, resume: bool, overwrite: bool, writes: bool = True) -> None:
  """The checks of ``RunDir`` before anything is written: ``NoRunError`` for a resume without a
  run, ``RunExistsError`` for a run in the way (one that made progress), ``PermissionError`` for
  an unwritable folder; with ``overwrite`` (or a run without progress in the way) the old run's
  files are removed. A command calls this first, so that it writes nothing before it knows the
  run can go ahead."""
  path = os.fspath(path)
  exists = holds_run(path)
  if resume:
    if not exists:
      what = "does not exist" if not os.path.exists(path) else "holds no run (no config.json)"
      raise NoRunError(f"cannot resume {path}: it {what}; check --out, or drop --resume to start a new run")
    return
  if exists and not overwrite and has_progress(path):
    raise RunExistsError(f"{path} already holds a run; pass --resume to continue it, "
                         f"--overwrite to replace it, or choose another --out")
  if not writes:  # (another process of a multi-process job writes)
    return
  check_writable(path)
  if exists:
    remove_run(path)


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
    resume: continue the run stored at ``path``; ``NoRunError`` if it holds none.
    overwrite: allow a fresh run in a directory that holds another run. Only what that run wrote
      is removed (the names in its manifest ``.jnas-run.json``, config, metrics, checkpoints);
      other files in the folder stay.
    resume_may_change: config keys a resume may change (e.g. the number of epochs, or ``quiet``).

  A run that made no progress (no checkpoint, no metrics record: it failed or was killed before
  its first checkpoint) does not block a new run in the same directory: it is replaced without
  ``overwrite``.

  Raises:
    RunExistsError: ``path`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    NoRunError: ``resume`` and ``path`` holds no run.
    ValueError: resuming with a config that differs from the stored one.
    PermissionError: ``path`` cannot be written.
  """

  def __init__(self, path: str | os.PathLike, config: dict, *, resume: bool = False, overwrite: bool = False,
               resume_may_change: tuple[str, ...] = (), primary: bool | None = None):
    self.path = os.fspath(path)
    # In a multi-process job only process 0 writes files; checkpoints are written by all (orbax).
    self.primary = (jax.process_index() == 0) if primary is None else bool(primary)
    self.config = _canonical(config)
    self._names: set[str] = set()
    cfg_path = os.path.join(self.path, "config.json")
    exists = holds_run(self.path)
    if resume and exists:
      try:
        with open(cfg_path) as f:
          stored = json.load(f)
      except ValueError as e:
        raise ValueError(f"cannot resume {self.path}: its config.json is damaged ({e})") from None
      diff = sorted(k for k in set(stored) | set(self.config)
                    if k not in resume_may_change and stored.get(k) != self.config.get(k))
      if diff:
        details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {self.config.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume {self.path}: its config differs ({details})")
      if stored != self.config and self.primary:
        checkpoint.atomic_write_json(cfg_path, self.config, sort_keys=True)
      self.resumed = True
    else:
      prepare(self.path, resume=resume, overwrite=overwrite, writes=self.primary)
      if self.primary:
        os.makedirs(self.path, exist_ok=True)
        checkpoint.atomic_write_json(cfg_path, self.config, sort_keys=True)
      self.resumed = False
    self._read_manifest()  # (names noted before the run began, e.g. a study's sampled genotypes)

  def _read_manifest(self) -> None:
    try:
      with open(self.file_path(MANIFEST)) as f:
        self._names = set(json.load(f))
    except (OSError, ValueError):
      self._names = set()

  def _register(self, name: str) -> None:
    top = os.path.normpath(name).split(os.sep)[0]
    if top in self._names or top in _ALWAYS or not self.primary:
      return
    self._names.add(top)
    checkpoint.atomic_write_json(self.file_path(MANIFEST), sorted(self._names))

  # ---------------------------------------------------------------------------------- files
  def file(self, name: str) -> str:
    """The path of ``name`` in the run directory, recorded as written by this run (so that
    ``overwrite`` removes it, and only it)."""
    self._register(name)
    return os.path.join(self.path, name)

  def file_path(self, name: str) -> str:
    """The path of ``name`` in the run directory (nothing recorded: for reading)."""
    return os.path.join(self.path, name)

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.path, "checkpoints")

  def log(self, record: dict) -> None:
    """Appends one record to metrics.jsonl (NumPy scalars and arrays become JSON numbers/lists)."""
    if not self.primary:
      return
    checkpoint.append_jsonl(self.file("metrics.jsonl"), _canonical(record))

  def records(self) -> list[dict]:
    p = self.file_path("metrics.jsonl")
    return checkpoint.read_jsonl(p) if os.path.exists(p) else []

  def truncate_records(self, keep) -> None:
    """Keeps only the metrics records for which ``keep(record)`` is true (after a resume, drop the
    lines of epochs the restored checkpoint does not contain)."""
    kept = [r for r in self.records() if keep(r)]
    if not self.primary:
      return
    checkpoint.atomic_write_text(self.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in kept))

  def write_json(self, name: str, obj: Any) -> str:
    path = self.file(name)
    if not self.primary:
      return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoint.atomic_write_json(path, obj)
    return path

  def write_npz(self, name: str, **arrays) -> str:
    path = self.file(name)
    if not self.primary:
      return path
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
    """The newest complete checkpoint number (not checked for damage; see ``resume_point``)."""
    return checkpoint.latest_step(self.checkpoint_dir)

  def resume_point(self) -> int | None:
    """The newest checkpoint that reads back in full, or None if there is no checkpoint.

    A damaged newer checkpoint (a truncated array file, damaged metadata) is moved to
    ``damaged-checkpoints/<n>`` (kept for inspection; a later save may then reuse its number)
    with a warning naming it, and the previous one is used.

    Raises:
      CheckpointDamagedError: there are checkpoints, and none of them reads back.
    """
    damaged = []
    while True:
      step = checkpoint.latest_step(self.checkpoint_dir)
      if step is None:
        break
      if jax.process_count() > 1:  # (restoring without a target needs shardings there: not checked)
        break
      try:
        checkpoint.verify_step(self.checkpoint_dir, step)
        break
      except checkpoint.CheckpointError as e:
        damaged.append(str(e))
        aside = self.file(os.path.join("damaged-checkpoints", str(step)))
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        if os.path.exists(aside):
          shutil.rmtree(aside)
        os.replace(os.path.join(self.checkpoint_dir, str(step)), aside)
        earlier = checkpoint.latest_step(self.checkpoint_dir)
        _warn(f"{e}; moved it to {aside}" + (f"; resuming from the previous checkpoint, {earlier}"
                                              if earlier is not None else ""))
    if step is None and damaged:
      raise CheckpointDamagedError(
          f"cannot resume {self.path}: no intact checkpoint is left ({'; '.join(damaged)}). Start the run "
          f"again with --overwrite (the damaged checkpoints are in {self.file_path('damaged-checkpoints')})")
    return step

  def restore_step(self, target: Any, step: int) -> Any:
    """The checkpoint ``step`` restored into the structure of ``target``."""
    return checkpoint.restore_state(self.checkpoint_dir, target, step)

  def restore(self, target: Any) -> tuple[Any, int]:
    """``(state, completed_epochs)`` from the newest intact checkpoint, or ``(target, 0)`` if none."""
    epoch = self.resume_point()
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
