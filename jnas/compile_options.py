"""XLA compiler options for jnas's jitted programs, and ``jit`` wrappers that apply them.

Two sets, both for XLA:CPU (on accelerators the options are left at XLA's defaults):

* ``STEP_CPU``: programs that run every step (search and training steps, evaluation). LLVM at
  optimisation level 1 instead of XLA's default 3. The heavy kernels are library calls (YNNPACK,
  Eigen) or XLA's own vectorising emitters, so LLVM's extra work buys nothing here: on the 2-core VM
  (README "Speed"), interleaved runs of the supernet weight step (C=16, 8 cells, batch 64) compiled
  in 36-42 s against 45-51 s (XLA part only), with steps of 7.1-8.4 s against 7.5-8.6 s and the
  same loss bit for bit; the DARTS_V2 step (C=36, 20 cells, batch 96) compiled in 22-25 s against
  24-27 s and stepped in 6.8-7.3 s against 7.7-7.8 s.
* ``LEAN``: programs that run once (initialisation, data permutations), where run time does not
  matter: level 0 and LLVM's expensive passes off. Each parameter's random draw is its own threefry
  kernel: the vmapped init of a 3-cell network compiled in 34 s at the default level and in 3 s at
  level 0 (a 5-cell supernet's init 2-3x faster, same values). Not for steps: the supernet step
  took 46 s at level 0 instead of 7.5 s.
"""

from __future__ import annotations

import jax

STEP_CPU = {"xla_backend_optimization_level": 1}
LEAN = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def step_options(backend: str | None = None) -> dict:
  """``STEP_CPU`` on the CPU backend, no options elsewhere (``backend`` defaults to JAX's default)
  or while ``jax_disable_most_optimizations`` is on (it asks for level 0, which these would undo)."""
  if jax.config.read("jax_disable_most_optimizations"):
    return {}
  return dict(STEP_CPU) if (backend or jax.default_backend()) == "cpu" else {}


def step_jit(fn, **jit_kwargs):
  """``jax.jit(fn, **jit_kwargs)`` compiled with ``step_options()``: for per-step programs."""
  return jax.jit(fn, compiler_options=step_options() or None, **jit_kwargs)


def lean_jit(fn, **jit_kwargs):
  """``jax.jit(fn, **jit_kwargs)`` compiled with ``LEAN``: for programs that run once."""
  return jax.jit(fn, compiler_options=dict(LEAN), **jit_kwargs)
