"""Compile time and step time of a whole DARTS search step (alpha update + weight update).

    python -m benchmarks.search_step                          # paper size, first/second/second-fd
    python -m benchmarks.search_step --orders first --seeds 1,2 --size small

Paper size: SearchNetwork(C=16, 8 cells, 8 ops), batch 64 of 32x32 images for the weights and
for the alphas (DARTS settings). One step = ``DartsSearch.step`` with the data gather and
augmentation inside the compiled program, as ``jnas.search.run`` runs it. Reference, PyTorch
quark0/darts on this 2-core machine: weight step 10.4 s + first-order arch step 12.0 s = 22.4 s.

``--seeds 1,2,4`` measures S seeds in one vmapped program (seeds per second), and
``--batching loop`` the same seeds as a loop over one single-seed program.
``--size small`` (C=8, 5 cells, batch 32) is for a quick look.

Prints a table and writes ``benchmarks/results/search_step.json`` (``--out``). Compile time is
reported apart from step time (median of ``--reps`` steps after one warm-up); the other
processes' CPU load is recorded (shared 2-core machines lie under load).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import jnas  # noqa: F401  (sets the XLA:CPU flag before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.model_step import other_cpu_load, peak_device_gb
from jnas import checkpoint
from jnas.search.darts import DartsSearch, SearchConfig
from jnas.search.run import make_epoch_fns

PYTORCH_FIRST_ORDER_STEP_S = 10.4 + 12.0
SIZES = {"paper": dict(C=16, layers=8, batch_size=64), "small": dict(C=8, layers=5, batch_size=32)}


def run(order: str, seeds: int, batching: str, size: str, reps: int, impl: str) -> dict:
  cfg = SearchConfig(order=order, conv_impl=impl, epochs=50, **SIZES[size])
  B = cfg.batch_size
  n = 4 * B
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32))
  search = DartsSearch(cfg, steps_per_epoch=n // B)
  perms_fn, step_fn, _ = make_epoch_fns(search, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                                        seed_batching=batching)
  state = jax.jit(jax.vmap(search.init))(jnp.stack([jax.random.key(s) for s in range(seeds)]))
  pw, pa = perms_fn(state.key, 0, n, n)
  load = other_cpu_load()
  args = (images, labels, images, labels, pw, pa)
  t0 = time.perf_counter()
  if batching == "vmap":
    compiled = step_fn.lower(state, *args, jnp.int32(0)).compile()
    call = compiled
  else:
    call = step_fn  # compiles on the first call (one single-seed program)
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(reps + 1):
    t0 = time.perf_counter()
    state, m = call(state, *args, jnp.int32(i % (n // B)))
    jax.block_until_ready(m["train_loss"])
    dt = time.perf_counter() - t0
    if batching == "loop" and i == 0:
      compile_s += dt  # the loop form compiles inside its first call
    if i:
      times.append(dt)
  loss = np.asarray(m["train_loss"])
  if not np.all(np.isfinite(loss)):
    raise FloatingPointError(f"{order}: loss {loss}")
  step = float(np.median(times))
  mem = compiled.memory_analysis() if batching == "vmap" else None
  return {"order": order, "size": size, "seeds": seeds, "batching": batching, "impl": impl, "batch": B,
          "compile_s": round(compile_s, 1), "step_median_s": round(step, 4), "step_min_s": round(min(times), 4),
          "seed_steps_per_s": round(seeds / step, 4), "reps": reps,
          "temp_gb": round(getattr(mem, "temp_size_in_bytes", 0) / 2**30, 2) if mem else None,
          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
          # On an accelerator: the process's peak device memory so far (all rows run before this one).
          "peak_device_gb": peak_device_gb(),
          "other_cpu_load_cores": round(load, 2),
          "pytorch_first_order_reference_s": PYTORCH_FIRST_ORDER_STEP_S if size == "paper" else None}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--orders", default="first,second,second-fd")
  p.add_argument("--seeds", default="1", help="comma-separated seed counts, e.g. 1,2,4")
  p.add_argument("--batching", choices=("vmap", "loop"), default="vmap")
  p.add_argument("--size", choices=sorted(SIZES), default="paper")
  p.add_argument("--impl", choices=("auto", "shift", "xla"), default="auto")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "search_step.json"))
  args = p.parse_args()
  rows = []
  header = (f"{'order':9} {'size':5} {'S':>2} {'batching':8} {'compile s':>9} {'step s':>7} {'seed-steps/s':>12} "
            f"{'temp GB':>7} {'load':>5}")
  for order in args.orders.split(","):
    for s in (int(x) for x in args.seeds.split(",")):
      r = run(order, s, args.batching, args.size, args.reps, args.impl)
      rows.append(r)
      print(f"{order} S={s}: compile {r['compile_s']} s, step {r['step_median_s']} s", flush=True)
      # Write after every row: a long benchmark that is stopped keeps what it measured.
      checkpoint.atomic_write_json(args.out, {
          "benchmark": "search_step", "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
          "jax": jax.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "pytorch_reference": "quark0/darts here: weight step 10.4 s + first-order arch step 12.0 s", "rows": rows})
  print(header)
  for r in rows:
    print(f"{r['order']:9} {r['size']:5} {r['seeds']:>2} {r['batching']:8} {r['compile_s']:>9} {r['step_median_s']:>7} "
          f"{r['seed_steps_per_s']:>12} {r['temp_gb'] if r['temp_gb'] is not None else '-':>7} "
          f"{r['other_cpu_load_cores']:>5}")
  if any(r["pytorch_first_order_reference_s"] for r in rows):
    print(f"PyTorch quark0/darts here (first order, weight + arch step): {PYTORCH_FIRST_ORDER_STEP_S} s")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
