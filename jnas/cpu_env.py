"""Process settings that make XLA:CPU fast here; imports nothing heavy (no JAX).

Two settings, both measured on a 2-core x86 VM (README "Speed"):

* ``XLA_CPU_FLAG``: XLA:CPU's concurrency-optimised scheduler off; the depthwise-convolution
  weight gradients ran 5-7x slower with it. ``import jnas`` appends it to ``XLA_FLAGS`` before JAX
  starts its backend (``JNAS_KEEP_XLA_FLAGS=1`` opts out).
* ``MALLOC_TUNABLE``: transparent huge pages for glibc ``malloc`` (glibc >= 2.35). XLA:CPU
  allocates every step's temporaries afresh (8 GB for the DARTS_V2 retraining step at batch 96),
  and glibc maps them with ``mmap`` and unmaps them after the step, so each step page-faulted 2.1
  million 4 KiB pages: 5.7 s of kernel time per 12 s step. With huge pages the step took 8.5 s.
  glibc reads the tunable only when a process starts, so it cannot be set from inside a running
  Python process: ``python -m experiments.X`` and ``python -m benchmarks.X`` re-execute themselves
  once with it (``reexec_with_hugepages``); in your own scripts, launch Python with
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (``JNAS_NO_HUGEPAGES=1`` opts out of the re-exec).
"""

from __future__ import annotations

import os
import sys

XLA_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"
_REEXEC_MARK = "JNAS_REEXECUTED"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def apply_xla_flags(environ=os.environ) -> None:
  """Append ``XLA_CPU_FLAG`` to ``XLA_FLAGS`` unless the user set it or opted out."""
  if environ.get("JNAS_KEEP_XLA_FLAGS") or "concurrency_optimized_scheduler" in environ.get("XLA_FLAGS", ""):
    return
  environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " " + XLA_CPU_FLAG).strip()


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, or None on another C library or OS."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def transparent_hugepages_mode(path: str = _THP_MODE) -> str | None:
  """The kernel's THP mode ('always', 'madvise' or 'never'), or None where unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def hugepage_malloc_active(environ=os.environ) -> bool:
  """Whether this process was started with huge-page ``malloc`` (or the kernel always uses THP)."""
  return "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", "") or transparent_hugepages_mode() == "always"


def hugepages_available(environ=os.environ) -> bool:
  """Whether starting with ``MALLOC_TUNABLE`` would change anything here."""
  return (sys.platform.startswith("linux") and (glibc_version() or (0, 0)) >= (2, 35)
          and transparent_hugepages_mode() == "madvise" and not hugepage_malloc_active(environ)
          and not environ.get("JNAS_NO_HUGEPAGES") and not environ.get(_REEXEC_MARK))


def tuned_environ(environ=os.environ) -> dict:
  """A copy of ``environ`` with ``MALLOC_TUNABLE`` added to ``GLIBC_TUNABLES``."""
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), MALLOC_TUNABLE) if t)
  env[_REEXEC_MARK] = "1"
  return env


def reexec_with_hugepages(skip: tuple[str, ...] = ()) -> None:
  """Re-execute this ``python -m package.module`` command with huge-page ``malloc``, once.

  Call it from a package ``__init__`` before anything heavy is imported. It does nothing unless
  the process was launched with ``-m`` (Python sets ``sys.argv[0]`` to ``'-m'`` while it imports
  the module's package), huge pages would help (``hugepages_available``), ``sys.orig_argv`` is
  known and the module is not in ``skip``. Never returns when it re-executes.
  """
  argv = list(getattr(sys, "orig_argv", None) or [])
  module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
  if sys.argv[:1] != ["-m"] or module is None or module in skip or not hugepages_available():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, tuned_environ())
