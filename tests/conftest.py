"""Test configuration: strict rank promotion (a leading seed/edge axis must never broadcast
silently), most XLA optimisations off for every test (``full_compile`` turns them on for a module),
huge-page malloc for the pytest-xdist workers (they
start after this file is loaded and inherit its environment; see jnas/cpu_env.py), and one
persistent compilation cache for the whole session.

The cache: a test may compile a program that another test, worker or subprocess (the command-line
runs) has compiled already: the same HLO from a new closure. JAX keys its persistent cache on the
HLO and the compile options, so such a program is compiled once per session. The directory is new
for each session (and removed at its end): nothing carries over between runs, so a test never
passes on a cached result of older code.
``JNAS_TEST_COMPILATION_CACHE=off`` turns it off; a directory there is used and kept.
"""

import os
import shutil
import tempfile

import jax
import pytest

from jnas import cpu_env

if cpu_env.hugepages_available():
  os.environ.update(cpu_env.tuned_environ())

_CACHE_ENV = "JNAS_TEST_COMPILATION_CACHE"
_OWN_CACHE = None
if _CACHE_ENV not in os.environ:  # the controller (or a plain run): make the session's cache
  _OWN_CACHE = tempfile.mkdtemp(prefix="jnas-test-xla-cache-")
  os.environ[_CACHE_ENV] = _OWN_CACHE
if os.environ[_CACHE_ENV] != "off":
  # Environment variables, so that the xdist workers and the tests' subprocesses use it too.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_ENV]
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE is not None and not hasattr(session.config, "workerinput"):
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)

jax.config.update("jax_numpy_rank_promotion", "raise")

# Compilation dominates the suite and the tests' networks are tiny: most XLA optimisations off
# (flax's examples test the same way): programs compile several times faster and run somewhat
# slower, which steps of tiny networks do not feel. Also for the tests' subprocesses (an
# environment variable).
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
jax.config.update("jax_disable_most_optimizations", True)


def _optimizations(disabled: bool):
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", disabled)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module")
def fast_compile():
  """Most XLA optimisations off (the suite's default; for tests that rely on it)."""
  yield from _optimizations(True)


@pytest.fixture(scope="module")
def full_compile():
  """XLA's optimisations on, as a user's run compiles (for tests of the compile options)."""
  yield from _optimizations(False)
