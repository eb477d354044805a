"""Compile time, step time and peak memory of a whole search step of every registered method.

    python -m benchmarks.search_step                                  # every method, paper size
    python -m benchmarks.search_step --methods darts,pcdarts,gdas --seeds 1,2
    python -m benchmarks.search_step --methods darts --orders first,second-fd
    python -m benchmarks.search_step --methods gdas --seeds 2 --batching loop
    python -m benchmarks.search_step --methods darts,sp-darts --spaces darts,lhd   # the LHD cell beside DARTS's

Paper size: SearchNetwork(C=16, 8 cells) for every method (so rows compare), each method's own
batch size (DARTS 64, PC-DARTS 256, GDAS 256, P-DARTS 96, ...) of 32x32 images for the weights
and for the architecture. One step = the method's ``step`` with the data gather and augmentation
inside the compiled program, as ``jnas.search.run`` runs it; warm-up epochs are skipped (the
architecture update runs). Multi-stage methods are timed in their first stage at 8 cells;
``--last-stage`` adds a row for their last stage (P-DARTS: 3 ops per edge; DrNAS: K = 4 on 4 ops),
reached by the method's own transition from an initial state.

Each row runs in its own process, one after the other (``--one`` is that child), so peak memory
is the row's own: ``temp_gb`` is XLA's scratch memory of the compiled step (CPU), ``peak_rss_gb``
the process's peak resident memory, ``peak_device_gb`` the accelerator's. Compile time (trace +
lower + XLA) is reported apart from step time (median of ``--reps`` steps after one warm-up);
``ms_per_image`` divides the step by the images it trains the weights on (the batch, per seed).

Prints a table and writes ``benchmarks/results/search_step.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time

SIZES = {"paper": dict(C=16, layers=8), "small": dict(C=8, layers=5)}


def one(method: str, order: str | None, seeds: int, batching: str, size: str, reps: int, impl: str,
        last_stage: bool, batch: int | None = None, space: str = "darts") -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jnas  # noqa: F401  (sets the XLA:CPU flag before JAX starts)
  from benchmarks.model_step import other_cpu_load, peak_device_gb
  from jnas.search import METHODS, config_for
  from jnas.search.run import make_epoch_fns

  spec = METHODS[method]
  kw = dict(SIZES[size], conv_impl=impl, warmup_epochs=0)
  if batch:
    kw["batch_size"] = batch
  if order:
    kw["order"] = order
  if space != "darts":
    kw["space"] = space
    if method == "drnas":
      kw.update(progressive=False, ks=(1, 1))
  if method == "drnas" and space == "darts":  # C must split into K = 6 and K = 4 groups: 24 (12 at the small size)
    kw["C"] = 24 if size == "paper" else 12
  fields = {f.name for f in dataclasses.fields(spec.config)}
  config = config_for(spec, "paper", **{k: v for k, v in kw.items() if k in fields})
  if method == "pdarts":
    config = dataclasses.replace(config, add_layers=(0, 0, 0))  # every stage at the row's size
  if method == "stacnas":
    config = dataclasses.replace(config, layers2=config.layers)  # (its stage 2 has 20 cells)
  B = config.batch_size
  n = 4 * B
  spe = n // B
  search = spec(config, spe)
  stage, context = 0, search.initial_context
  if last_stage and search.num_stages > 1:
    m0 = search.stage(0, context).method
    state = jax.device_get(m0.init(jax.random.key(0)))
    for s in range(search.num_stages - 1):
      context, carried = search.transition(s, state, context, jax.random.key(1))
      stage = s + 1
      m_s = search.stage(stage, context).method
      state = jax.device_get(carried if carried is not None else m_s.init(jax.random.key(0)))
  method_ = search.stage(stage, context).method
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32))
  perms_fn, step_fn, _ = make_epoch_fns(method_, B, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                                        seed_batching=batching)
  state = jax.jit(jax.vmap(method_.init))(jnp.stack([jax.random.key(s) for s in range(seeds)]))
  batch = (jax.ShapeDtypeStruct((B, 32, 32, 3), jnp.float32), jax.ShapeDtypeStruct((B,), jnp.int32))
  _, metrics = jax.eval_shape(method_.step, jax.tree.map(lambda a: a[0], state), batch, batch)
  sums = {k: jnp.zeros((seeds,), jnp.float32) for k in list(metrics) + ["steps"]}
  pw, pa = perms_fn(state.key, 0, n, n)
  load = other_cpu_load()
  args = (images, labels, images, labels, pw, pa)
  t0 = time.perf_counter()
  one_seed = seeds == 1 or step_fn.mode == "loop"
  if one_seed:  # the single-seed program (one seed, or a loop over seeds)
    take = lambda tree, s: jax.tree.map(lambda a: a[s], tree)
    compiled = step_fn.single.lower(take(state, 0), take(sums, 0), *args[:4], pw[0], pa[0], jnp.int32(0)).compile()

    def call(state, sums, wi, wl, ai, al, pw, pa, i):
      outs = [compiled(take(state, s), take(sums, s), wi, wl, ai, al, pw[s], pa[s], i) for s in range(seeds)]
      return jax.tree.map(lambda *a: jnp.stack(a), *outs)
  else:
    compiled = step_fn.batched.lower(state, sums, *args, jnp.int32(0)).compile()
    call = compiled
  mem = compiled.memory_analysis()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(reps + 1):
    t0 = time.perf_counter()
    state, sums = call(state, sums, *args, jnp.int32(i % spe))
    jax.block_until_ready(sums["train_loss"])
    if i:
      times.append(time.perf_counter() - t0)
  loss = np.asarray(sums["train_loss"])
  if not np.all(np.isfinite(loss)):
    raise FloatingPointError(f"{method}: loss {loss}")
  step = float(np.median(times))
  label = method + (f" ({config.order})" if method == "darts" else "") + (f" stage {stage + 1}" if stage else "") + \
      (f" C={config.C}" if config.C != SIZES[size]["C"] else "") + (f" [{space} space]" if space != "darts" else "")
  return {"method": method, "label": label, "space": space, "order": getattr(config, "order", None), "stage": stage + 1,
          "size": size, "C": config.C, "layers": config.layers, "seeds": seeds,
          "batching": "single" if seeds == 1 else step_fn.mode, "impl": impl,
          "batch": B, "compile_s": round(compile_s, 1), "step_median_s": round(step, 4),
          "step_min_s": round(min(times), 4), "ms_per_image": round(1000 * step / (B * seeds), 3),
          "seed_steps_per_s": round(seeds / step, 4), "reps": reps,
          "temp_gb": round(getattr(mem, "temp_size_in_bytes", 0) / 2**30, 2) if mem else None,
          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
          "peak_device_gb": peak_device_gb(), "other_cpu_load_cores": round(load, 2)}


def main():
  from jnas.search import METHODS  # (only the names; the rows import JAX in their own processes)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--orders", default="first", help="DARTS's orders, e.g. first,second-fd")
  p.add_argument("--seeds", default="1", help="comma-separated seed counts, e.g. 1,2,4")
  p.add_argument("--batching", choices=("auto", "vmap", "loop"), default="auto",
                 help="seeds: one vmapped program or a loop over one single-seed program (one seed: single)")
  p.add_argument("--size", choices=sorted(SIZES), default="paper")
  p.add_argument("--impl", choices=("auto", "shift", "xla"), default="auto")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--batch", type=int, default=None, help="batch size of every row (default: each method's own)")
  p.add_argument("--last-stage", action="store_true", help="also time the last stage of multi-stage methods")
  p.add_argument("--spaces", default="darts", help="cell spaces, e.g. darts,lhd (SearchConfig.space)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "search_step.json"))
  p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: one row as JSON on stdout
  args = p.parse_args()
  if args.one:
    row = one(**json.loads(args.one))
    print("ROW " + json.dumps(row), flush=True)
    return
  import jnas.checkpoint as ck
  rows, failed = [], []
  jobs = []
  for m in args.methods.split(","):
    # (DARTS gets a row per order; every other method runs the first of them: R-DARTS's default
    # is second order, which needs about 56 GB at paper size on XLA:CPU)
    orders = args.orders.split(",") if m == "darts" else [args.orders.split(",")[0]]
    for order in orders:
      for s in (int(x) for x in args.seeds.split(",")):
        stages = [False, True] if (args.last_stage and m in ("pdarts", "drnas", "stacnas")) else [False]
        for last in stages:
          for space in args.spaces.split(","):
            jobs.append(dict(method=m, order=order, seeds=s, batching=args.batching, size=args.size, reps=args.reps,
                             impl=args.impl, last_stage=last, batch=args.batch, space=space))
  for job in jobs:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.search_step", "--one", json.dumps(job)],
                          capture_output=True, text=True)
    row = next((json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")), None)
    if row is None:
      failed.append({**job, "error": (proc.stderr or proc.stdout)[-2000:], "wall_s": time.perf_counter() - t0})
      print(f"{job['method']}: FAILED\n{failed[-1]['error'][-600:]}", flush=True)
    else:
      rows.append(row)
      print(f"{row['label']} S={row['seeds']}: compile {row['compile_s']} s, step {row['step_median_s']} s, "
            f"{row['ms_per_image']} ms/image", flush=True)
    # after every row: a long benchmark that is stopped keeps what it measured
    import jax
    ck.atomic_write_json(args.out, {
        "benchmark": "search_step", "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
        "jax": jax.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows, "failed": failed})
  base = next((r for r in rows if r["method"] == "darts" and r["order"] == "first" and r["seeds"] == 1
               and r.get("space", "darts") == "darts"), None)
  print(f"\n| method | batch | seeds | compile s | step s | ms/image | vs DARTS-first per image | XLA temp GB | "
        f"peak RSS GB | load |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    rel = f"{r['ms_per_image'] / base['ms_per_image']:.2f}" if base else "-"
    print(f"| {r['label']} | {r['batch']} | {r['seeds']} ({r['batching']}) | {r['compile_s']} | {r['step_median_s']} | "
          f"{r['ms_per_image']} | {rel} | {r['temp_gb'] if r['temp_gb'] is not None else '-'} | {r['peak_rss_gb']} | "
          f"{r['other_cpu_load_cores']} |")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
