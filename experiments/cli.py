"""The command-line layer every ``python -m experiments.*`` command shares.

The same flag means the same thing on every command:

  --seeds 0..7 | 0,3,5     seeds (ranges are inclusive)
  --epochs N               epochs (of each search stage; of retraining)
  --layers N, --channels C, --batch-size B
                           cells, initial channels, batch size of the network being trained
  --dataset NAME, --data-dir DIR
                           the data (cifar10 needs DIR with cifar-10-batches-py, or tfds)
  --out DIR, --resume, --overwrite, --quiet
  --set KEY=VALUE          any other setting (repeatable); an unknown KEY is an error naming the
                           known ones; VALUE is typed by the setting's default (JSON for lists)

``--epochs``, ``--layers``, ``--channels`` and ``--batch-size`` are shorthands for ``--set
epochs=``, ``--set layers=``, ``--set C=`` and ``--set batch_size=``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Mapping

__all__ = ["parse_seeds", "add_run_args", "overrides", "typed_overrides", "load_dataset", "exit_interrupted",
           "setup_compile_cache", "DATA_HELP", "entry", "prepare_out", "quiet_library_logs", "USER_ERRORS",
           "add_device_args", "setup_devices"]

# Errors that mean "the input is wrong", not "jnas has a bug": a command prints them as one line
# (``--debug`` or JNAS_DEBUG=1 shows the traceback). Anything else keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError,
               IsADirectoryError, ConnectionError)


def _debug(argv) -> bool:
  return "--debug" in (sys.argv[1:] if argv is None else list(argv)) or os.environ.get("JNAS_DEBUG", "") not in ("", "0")


def entry(command: str, main, argv=None):
  """Runs ``main(argv)`` as the command ``command``: a user error (``USER_ERRORS``, jnas's run
  errors) is one ``command: error: ...`` line on stderr and exit status 2; a stopped run exits 130
  (SIGINT) or 143 (SIGTERM) after saying how to resume; ``--debug`` or ``JNAS_DEBUG=1`` lets the
  exception through with its traceback (for bug reports)."""
  from jnas.loop import Interrupted
  from jnas.rundir import CheckpointDamagedError
  debug = _debug(argv)
  quiet_library_logs()
  try:
    return main(argv)
  except Interrupted as e:
    if debug:
      raise
    exit_interrupted(e, command)
  except (*USER_ERRORS, CheckpointDamagedError) as e:
    if debug:
      raise
    text = str(e) or type(e).__name__
    print(f"{command}: error: {text}", file=sys.stderr)
    print(f"{command}: (--debug or JNAS_DEBUG=1 shows the traceback)", file=sys.stderr)
    raise SystemExit(2) from None


def quiet_library_logs() -> None:
  """Keeps absl/orbax/JAX log lines and Python warnings of the libraries off the console (a
  command prints its own messages); ``JNAS_DEBUG=1`` leaves them on."""
  if os.environ.get("JNAS_DEBUG", "") not in ("", "0"):
    return
  import logging
  import warnings
  for name in ("absl", "orbax", "jax", "jax._src", "tensorflow", "etils"):
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass
  for module in ("orbax", "jax", "flax", "optax", "tensorflow", "absl", "etils"):
    warnings.filterwarnings("ignore", module=module)


def prepare_out(out: str, *, resume: bool, overwrite: bool) -> None:
  """Every check of ``--out`` before a command writes anything (see ``jnas.rundir.prepare``)."""
  if resume and overwrite:
    raise ValueError("--resume and --overwrite exclude each other")
  from jnas import parallel, rundir
  rundir.prepare(out, resume=resume, overwrite=overwrite, writes=parallel.is_primary())

DATA_HELP = {
    "cifar10": "download the CIFAR-10 python version from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, "
               "extract it and pass --data-dir DIR (the folder holding cifar-10-batches-py); or "
               "`pip install 'jnas[tfds]'` and omit --data-dir to let tensorflow-datasets fetch 'cifar10'",
    "cifar100": "download the CIFAR-100 python version from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, "
                "extract it and pass --data-dir DIR (the folder holding cifar-100-python); or "
                "`pip install 'jnas[tfds]'` and omit --data-dir to let tensorflow-datasets fetch 'cifar100'",
    "svhn": "download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ and pass "
            "--data-dir DIR (the folder holding them); or `pip install 'jnas[tfds]'` and omit --data-dir to let "
            "tensorflow-datasets fetch 'svhn_cropped'",
}


def parse_seeds(text: str) -> list[int]:
  """'0,1,5' or '0..7' (inclusive) or a mix: '0..3,8'."""
  seeds = []
  for part in str(text).split(","):
    part = part.strip()
    if not part:
      continue
    try:
      if ".." in part:
        lo, hi = (int(p) for p in part.split(".."))
        if hi < lo:
          raise ValueError
        seeds.extend(range(lo, hi + 1))
      else:
        seeds.append(int(part))
    except ValueError:
      raise argparse.ArgumentTypeError(f"bad seed list {text!r}: use e.g. '0,1,2' or '0..7'") from None
  if len(set(seeds)) != len(seeds) or not seeds:
    raise argparse.ArgumentTypeError(f"seed list {text!r} is empty or repeats a seed")
  if min(seeds) < 0:
    raise argparse.ArgumentTypeError(f"seed list {text!r}: seeds must be >= 0")
  return seeds


SHORTHANDS = {"epochs": "epochs", "layers": "layers", "channels": "C", "batch_size": "batch_size"}


def add_run_args(p: argparse.ArgumentParser, *, seeds_default: str | None = None, dataset_default: str = "cifar10",
                 set_help: str = "any other setting (repeatable)") -> None:
  """The shared flags (see the module docstring)."""
  p.add_argument("--seeds", type=parse_seeds, default=parse_seeds(seeds_default) if seeds_default else None,
                 help="seeds, e.g. 0,1,2 or 0..7" + (f" (default {seeds_default})" if seeds_default else ""))
  p.add_argument("--epochs", type=int, default=None, help="epochs (= --set epochs=N)")
  p.add_argument("--layers", type=int, default=None, help="cells of the network (= --set layers=N)")
  p.add_argument("--channels", type=int, default=None, help="initial channels C (= --set C=N)")
  p.add_argument("--batch-size", type=int, default=None, help="batch size (= --set batch_size=N)")
  p.add_argument("--dataset", default=dataset_default, help="cifar10 | cifar100 | svhn | digits (offline, scikit-learn) | "
                 "sport8 | mit67 | flowers102 | path/to/data.npz")
  p.add_argument("--data-dir", default=None, help="folder with the dataset (cifar10: the one holding "
                 "cifar-10-batches-py); without it, tensorflow-datasets is asked")
  p.add_argument("--out", default=None, help="run directory")
  p.add_argument("--resume", action="store_true", help="continue the run in --out")
  p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
  p.add_argument("--quiet", action="store_true", help="no progress line (for logs)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
  p.add_argument("--debug", action="store_true", help="show Python tracebacks (also JNAS_DEBUG=1)")
  add_device_args(p)
  p.add_argument("--compile-cache", default=os.path.join(os.path.expanduser("~"), ".cache", "jnas", "xla"),
                 help="persistent XLA compilation cache ('' to disable): a rerun or resume skips compilation")


def add_device_args(p: argparse.ArgumentParser) -> None:
  """--devices, --parallel and the multi-process flags (see ``setup_devices``)."""
  p.add_argument("--devices", type=int, default=None,
                 help="devices to use (default: all visible that the seed count, or with --parallel data the batch "
                      "size, divides by)")
  p.add_argument("--parallel", choices=("seeds", "data"), default="seeds",
                 help="seeds: each device steps its share of the seeds; data: every batch is split over the devices")
  p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                 help="several processes (hosts): the address of process 0's coordinator (jax.distributed)")
  p.add_argument("--num-processes", type=int, default=None, help="with --coordinator: how many processes")
  p.add_argument("--process-id", type=int, default=None, help="with --coordinator: this process's index")


def setup_devices(args) -> None:
  """Starts JAX's distributed runtime when asked to: ``--coordinator HOST:PORT --num-processes N
  --process-id I``, or ``JNAS_DISTRIBUTED=1`` to let ``jax.distributed.initialize`` read a cluster
  environment it knows (SLURM, Open MPI, ...). Checks the flags first, so that a bad one is a
  one-line error, and bounds the wait for the coordinator."""
  coord, n, pid = getattr(args, "coordinator", None), getattr(args, "num_processes", None), getattr(args, "process_id", None)
  auto = os.environ.get("JNAS_DISTRIBUTED", "") not in ("", "0")
  if coord is None and n is None and pid is None and not auto:
    return
  import jax
  try:  # collectives between processes on CPUs (GPUs use NCCL whatever this says)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception:
    pass
  if coord is not None or n is not None or pid is not None:
    if coord is None or n is None or pid is None:
      raise ValueError("several processes need all of --coordinator HOST:PORT, --num-processes N and --process-id I")
    host, sep, port = coord.rpartition(":")
    if not sep or not host or not port.isdigit():
      raise ValueError(f"--coordinator {coord}: expected HOST:PORT, e.g. node0:12355")
    if n < 1 or not 0 <= pid < n:
      raise ValueError(f"--process-id {pid} is out of range for --num-processes {n} (use 0..{n - 1})")
    timeout = int(os.environ.get("JNAS_COORDINATOR_TIMEOUT", "120"))
    if pid != 0:  # (the runtime aborts the process when the coordinator never answers: look first)
      _wait_for_coordinator(host, int(port), timeout, pid, n)
    try:
      jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid,
                                 initialization_timeout=timeout)
    except Exception as e:  # the runtime's errors come from deep inside it: say which flags they concern
      raise ConnectionError(f"--coordinator {coord}: the distributed runtime did not start (process {pid} of {n}): "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
  else:
    jax.distributed.initialize()


def _wait_for_coordinator(host: str, port: int, timeout: float, pid: int, n: int) -> None:
  import socket
  import time
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host, port), timeout=2.0):
        return
    except socket.gaierror as e:
      raise ConnectionError(f"--coordinator {host}:{port}: unknown host ({e})") from None
    except OSError:
      if time.monotonic() >= deadline:
        raise ConnectionError(f"--coordinator {host}:{port}: no answer within {timeout:g} s (process {pid} of {n}); "
                              "is process 0 running and the port reachable?") from None
      time.sleep(0.5)


def overrides(args) -> list[str]:
  """``--set`` items with the shorthand flags prepended (a later ``--set`` wins)."""
  items = [f"{key}={getattr(args, flag)}" for flag, key in SHORTHANDS.items() if getattr(args, flag, None) is not None]
  return items + list(args.set or [])


def _typed(key: str, text: str, default: Any):
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"--set {key}: expected true/false, got {text!r}")
    return text.lower() in ("true", "1")
  if text.lower() in ("none", "null") and default is None:
    return None
  try:
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float) or (default is None and _is_number(text)):
      return float(text)
    if isinstance(default, (tuple, list)):
      value = json.loads(text) if text.strip().startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
      return tuple(value)
  except ValueError:
    raise ValueError(f"--set {key}: expected a value like {default!r}, got {text!r}") from None
  if text.lower() in ("none", "null"):
    return None
  return text


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def typed_overrides(items, fields: Mapping[str, Any], what: str) -> dict:
  """``['C=8', 'order=first']`` -> typed values by the defaults in ``fields``; unknown keys raise
  ``ValueError`` naming ``what`` and the known keys."""
  out = {}
  for item in items:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep:
      raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    if key not in fields:
      raise ValueError(f"--set: {what} has no setting {key!r}; known: {', '.join(sorted(fields))}")
    out[key] = _typed(key, text.strip(), fields[key])
  return out


def load_dataset(name: str, data_dir: str | None, *, digits_size: int = 32):
  """The dataset; ``FileNotFoundError`` / ``ValueError`` saying what to do when it is missing or
  unknown (``entry`` prints it as one line)."""
  import jnas.data as D
  if name == "digits":
    return D.load_digits(size=digits_size, channels=3)
  hint = DATA_HELP.get(name, "")
  if data_dir is not None:
    if not os.path.exists(data_dir):
      raise FileNotFoundError(f"--data-dir {data_dir}: no such folder. " + hint)
    if os.path.isdir(data_dir) and not os.listdir(data_dir):
      raise FileNotFoundError(f"--data-dir {data_dir}: the folder is empty. " + hint)
  try:
    return D.load_dataset(name, data_dir)
  except (FileNotFoundError, ImportError, RuntimeError, OSError) as e:
    raise FileNotFoundError(f"--dataset {name}: cannot load it: {e}" +
                            (f"\nTo get it: {hint}" if hint and hint not in str(e) else "")) from None
  except (ValueError, KeyError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise ValueError(f"--dataset {name}: {msg}") from None


def exit_interrupted(e, command: str) -> None:
  """Print a stopped run's message and exit with its code (130 SIGINT, 143 SIGTERM)."""
  print(f"{command}: {e}", file=sys.stderr)
  raise SystemExit(e.exit_code)


def setup_compile_cache(path: str) -> None:
  if path:
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
