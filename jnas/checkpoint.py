"""Run-directory files and resumable training state.

Result files (``config.json``, ``results.json``, ``genotype.json``, arrays in ``.npz``) are written
atomically: to a temporary file in the same directory, fsync'ed, then ``os.replace``'d over the
target, so a reader or a killed run never sees a partial file. ``metrics.jsonl`` grows by one
line per record; a run killed in the middle of a line leaves at most the last line broken, and
``read_jsonl`` / ``append_jsonl`` drop it.

The whole training state (params, batch stats, alphas, optax states, step, PRNG key) is saved
with orbax-checkpoint (``CheckpointManager`` + ``StandardSave``), synchronously. Orbax writes each
step to ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` when complete, so an
interrupted save never shows up as a step and the previous one stays restorable. Typed PRNG keys
(``jax.random.key``) are stored as their raw ``key_data`` (plain uint32 arrays, readable without
jax) and re-wrapped on restore with the implementation of the target's key.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_npz",
    "append_jsonl",
    "read_jsonl",
    "save_state",
    "latest_step",
    "restore_state",
    "verify_step",
    "CheckpointError",
]


# --- result files -----------------------------------------------------------------------------

def _fsync_dir(directory: str) -> None:
  # Makes the rename itself durable; not supported on every platform (e.g. Windows).
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _atomic_write(path: str | os.PathLike, write_fn, binary: bool) -> None:
  """Calls write_fn(file) on a temporary file next to ``path``, then renames it to ``path``."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
  # os.open with mode 0o666 gives the file the usual umask permissions (mkstemp would give 0o600).
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  _fsync_dir(directory)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically: the file is either old or complete."""
  _atomic_write(path, lambda f: f.write(text), binary=False)


def _to_json(x: Any) -> Any:
  """``json`` fallback for NumPy / JAX scalars and arrays (as Python numbers and lists)."""
  if isinstance(x, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f"object of type {type(x).__name__} is not JSON serializable")


def atomic_write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> None:
  """Writes ``obj`` as JSON (indent 2) atomically; NumPy/JAX scalars and arrays are converted."""
  text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=_to_json) + "\n"
  atomic_write_text(path, text)


def atomic_write_npz(path: str | os.PathLike, **arrays) -> None:
  """``np.savez`` to ``path`` atomically (the name is used as given; no ``.npz`` is appended)."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  _atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def _split_tail(data: bytes) -> tuple[bytes, bytes]:
  """(complete lines, text after the last newline)."""
  cut = data.rfind(b"\n") + 1
  return data[:cut], data[cut:]


def _parses(line: bytes) -> bool:
  try:
    json.loads(line)
  except ValueError:
    return False
  return True


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
  """Appends ``record`` (a JSON-serialisable dict) as one line, flushed and fsync'ed.

  If the file ends in a partial line (a run killed mid-write), that line is removed first, so
  the file holds only complete records. A complete record that only lacks its newline is kept.
  """
  line = json.dumps(record, default=_to_json).encode() + b"\n"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "ab+") as f:
    end = f.seek(0, os.SEEK_END)
    if end:
      f.seek(end - 1)
      if f.read(1) != b"\n":
        f.seek(0)
        head, tail = _split_tail(f.read())
        if _parses(tail):
          line = b"\n" + line
        else:
          f.truncate(len(head))
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list:
  """Records of a JSON-lines file; a truncated last line (a killed run) is ignored.

  Raises:
    ValueError: if a line other than the last one is not valid JSON.
  """
  with open(path, "rb") as f:
    lines = f.read().splitlines()
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{os.fspath(path)}: line {i + 1} is not valid JSON: {e}") from None
  return records


# --- training state (orbax) -------------------------------------------------------------------

def _is_key(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl(key) -> Any:
  """Implementation (e.g. 'threefry2x32') of a key array or of an abstract key (eval_shape)."""
  if isinstance(key, jax.Array):
    return jax.random.key_impl(key)
  found = []
  jax.eval_shape(lambda k: found.append(jax.random.key_impl(k)), key)
  return found[0]


def _manager(ckpt_dir: str | os.PathLike, keep: int | None = None, create: bool = True):
  # (orbax's read_only=True works too but logs two warnings per call; a manager that is not
  # asked to save writes nothing.)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=False, create=create)
  return ocp.CheckpointManager(os.path.abspath(os.fspath(ckpt_dir)), options=options)


def save_state(ckpt_dir: str | os.PathLike, step: int, state: Any, keep: int | None = 2) -> None:
  """Saves ``state`` as ``ckpt_dir/<step>`` and keeps the ``keep`` most recent steps.

  Synchronous: returns once the checkpoint is complete on disk.

  Args:
    ckpt_dir: checkpoint directory (created if missing), e.g. ``<run_dir>/checkpoints``.
    step: the step (or epoch) number; must exceed every step already in ``ckpt_dir``.
    state: a pytree of arrays: dicts, NamedTuples (optax states), scalars such as
      ``jnp.int32(step)``, and typed PRNG keys.
    keep: number of checkpoints kept (older ones are deleted); None keeps all.

  Raises:
    ValueError: if orbax refuses the step (it only saves steps newer than the latest one).
  """
  data = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)
  with _manager(ckpt_dir, keep) as mgr:
    saved = mgr.save(int(step), args=ocp.args.StandardSave(data))
    mgr.wait_until_finished()
    if not saved:
      raise ValueError(f"step {step} was not saved: orbax only saves steps after the latest one "
                       f"({mgr.latest_step()}) in {os.fspath(ckpt_dir)}")


def latest_step(ckpt_dir: str | os.PathLike) -> int | None:
  """The newest complete checkpoint step in ``ckpt_dir``, or None if there is none."""
  multi = jax.process_count() > 1
  if not multi and not os.path.isdir(ckpt_dir):
    return None
  # Several processes: every one makes the same orbax calls (a manager synchronises them), whatever
  # each sees on disk at this moment.
  with _manager(ckpt_dir, create=multi) as mgr:
    return mgr.latest_step()


def verify_step(ckpt_dir: str | os.PathLike, step: int) -> None:
  """Reads checkpoint ``step`` back in full (as saved, without a target) and raises
  ``CheckpointError`` naming it if any of it cannot be read (a truncated array file, damaged
  metadata)."""
  path = os.path.join(os.fspath(ckpt_dir), str(int(step)))
  try:
    with _manager(ckpt_dir, create=False) as mgr:
      data = mgr.restore(int(step), args=ocp.args.StandardRestore())
    jax.block_until_ready(data)
  except Exception as e:  # orbax/tensorstore raise many types; the first line says enough
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise CheckpointError(f"checkpoint {path} is damaged: {type(e).__name__}: {first[:300]}") from None


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be read."""


def restore_state(ckpt_dir: str | os.PathLike, target: Any, step: int | None = None) -> Any:
  """Restores a checkpoint saved by ``save_state`` into the structure of ``target``.

  Args:
    ckpt_dir: checkpoint directory.
    target: a pytree with the saved structure: the state itself, a freshly initialised one, or
      its ``jax.eval_shape``. Leaves give dtype and shape (and sharding, for arrays); typed-key
      leaves give the key implementation.
    step: the step to restore; None restores the latest.

  Returns:
    The restored state, equal to the saved one, with the target's tree structure and dtypes.

  Raises:
    FileNotFoundError: if ``ckpt_dir`` holds no checkpoint (or not ``step``).
  """
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoint directory {os.fspath(ckpt_dir)}")
  abstract = jax.tree.map(
      lambda x: jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x, target)
  with _manager(ckpt_dir, create=False) as mgr:
    step = mgr.latest_step() if step is None else step
    if step is None or step not in mgr.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {os.fspath(ckpt_dir)}; "
                              f"complete steps: {mgr.all_steps()}")
    data = mgr.restore(int(step), args=ocp.args.StandardRestore(abstract))
  # orbax returns arrays committed to a device; a fresh state (a jit output) is uncommitted, and
  # jit keys its cache on that, so a resumed run would recompile every step function. Rebuild
  # uncommitted arrays (one host copy per resume).
  data = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)) if isinstance(x, jax.Array) and x.is_fully_addressable
                      else x, data)
  return jax.tree.map(
      lambda t, x: jax.random.wrap_key_data(x, impl=_key_impl(t)) if _is_key(t) else x,
      target, data)
