"""Cost of one Hessian-monitor evaluation (``--monitor hessian``) against one search step.

    python -m benchmarks.hessian_cost [--iters 2,4] [--size paper|small] [--method darts]

One seed, DARTS first order by default, at paper size (SearchNetwork C=16, 8 cells, batch 64, 32-px
images). Times the method's step and ``jnas.search.hessian.arch_hessian_eigenvalue`` with k Lanczos
steps for each k in ``--iters`` (compile apart from run time; median of ``--reps``); the cost per
Lanczos step is the slope between the two k, so the monitor's default (k = 20) costs about
``fixed + 20 x per_step``. Writes ``benchmarks/results/hessian_cost.json``.
"""

from __future__ import annotations

import argparse
import os
import time

import jnas  # noqa: F401 (sets the XLA:CPU flag before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from jnas import checkpoint
from jnas.compile_options import step_jit
from jnas.search import METHODS, config_for
from jnas.search.hessian import arch_hessian_eigenvalue

SIZES = {"paper": dict(C=16, layers=8), "small": dict(C=8, layers=5)}


def _time(fn, args, reps):
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return round(compile_s, 2), round(float(np.median(times)), 3)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--method", default="darts")
  p.add_argument("--size", choices=sorted(SIZES), default="paper")
  p.add_argument("--iters", default="2,4")
  p.add_argument("--reps", type=int, default=2)
  p.add_argument("--hvp", choices=("fd", "exact"), default="fd")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "hessian_cost.json"))
  args = p.parse_args()
  spec = METHODS[args.method]
  config = config_for(spec, "paper", order="first", **SIZES[args.size]) if args.method == "darts" else \
      config_for(spec, "paper", **SIZES[args.size])
  method = spec(config, 10).stage(0, None).method
  B = config.batch_size
  state = method.init(jax.random.key(0))
  k1, k2 = jax.random.split(jax.random.key(1))
  batch = (jax.random.normal(k1, (B, 32, 32, 3)), jax.random.randint(k2, (B,), 0, 10))
  rows = {"method": args.method, "size": args.size, "batch": B, "hvp": args.hvp, "device": jax.devices()[0].device_kind}
  rows["step_compile_s"], rows["step_s"] = _time(step_jit(method.step), (state, batch, batch), args.reps)
  print(f"step: compile {rows['step_compile_s']} s, run {rows['step_s']} s", flush=True)
  ks = [int(k) for k in args.iters.split(",")]
  for k in ks:
    fn = step_jit(lambda st, b, k=k: arch_hessian_eigenvalue(method, st, b, iters=k, hvp=args.hvp))
    c, r = _time(fn, (state, batch), args.reps)
    rows[f"hessian_{k}_compile_s"], rows[f"hessian_{k}_s"] = c, r
    print(f"hessian, {k} Lanczos steps: compile {c} s, run {r} s ({r / rows['step_s']:.1f} steps)", flush=True)
  if len(ks) >= 2:
    a, b = ks[0], ks[-1]
    per = (rows[f"hessian_{b}_s"] - rows[f"hessian_{a}_s"]) / (b - a)
    fixed = rows[f"hessian_{a}_s"] - a * per
    rows["per_lanczos_step_s"], rows["fixed_s"] = round(per, 3), round(fixed, 3)
    rows["estimate_20_steps_s"] = round(fixed + 20 * per, 2)
    print(f"per Lanczos step {per:.3f} s ({per / rows['step_s']:.2f} search steps); k = 20: about "
          f"{rows['estimate_20_steps_s']} s = {rows['estimate_20_steps_s'] / rows['step_s']:.1f} search steps", flush=True)
  checkpoint.atomic_write_json(args.out, {"benchmark": "hessian_cost", "date": time.strftime("%Y-%m-%d %H:%M"),
                                          "jax": jax.__version__, **rows})
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
