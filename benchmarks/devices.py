"""Search steps over devices: one device against two (seeds split, or the batch split).

    python -m benchmarks.devices [--fake 2] [--seeds 4] [--size small] [--reps 3]

Each row runs in its own process; on a CPU the devices are fake host devices
(``--xla_force_host_platform_device_count``), which share the same cores: the row shows what
the sharded program costs, not a speed-up. On a machine with several GPUs, ``--fake 0`` uses the
real ones. Prints a table (compile apart from step time) and writes
``benchmarks/results/devices.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SIZES = {"small": dict(C=8, layers=5, batch_size=32), "paper": dict(C=16, layers=8, batch_size=64)}


def one(devices: int, mode: str, seeds: int, size: str, reps: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jnas import data as D
  from jnas import parallel
  from jnas.search import METHODS, run

  kw = SIZES[size]
  cfg = METHODS["darts"].config(order="first", warmup_epochs=0, **kw)
  B = kw["batch_size"]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (4 * B, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 4 * B).astype(np.int32)
  layout = parallel.Layout(devices, mode)
  progs = run._programs(METHODS["darts"], cfg, 4, 0, "null", D.CIFAR10_MEAN, D.CIFAR10_STD, "vmap", (32, 32, 3),
                        layout if layout.sharded else None)
  place = layout.place_seeded if mode == "seeds" else layout.place_replicated
  state = place(progs.init(jnp.stack([jax.random.key(s) for s in range(seeds)])))
  sums = place(jax.tree.map(lambda z: jnp.broadcast_to(z, (seeds,)), progs.sums))
  data = layout.place_replicated(tuple(jnp.asarray(x) for x in (images, labels, images, labels)))
  pw, pa = progs.perms(state.key, 0, 4 * B, 4 * B)
  t0 = time.perf_counter()
  state, sums = progs.step(state, sums, *data, pw, pa, jnp.int32(0))
  jax.block_until_ready(sums)
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(reps):
    t = time.perf_counter()
    state, sums = progs.step(state, sums, *data, pw, pa, jnp.int32((i + 1) % 4))
    jax.block_until_ready(sums)
    times.append(time.perf_counter() - t)
  return {"devices": devices, "mode": mode, "seeds": seeds, "size": size, **kw, "compile_s": round(compile_s, 1),
          "step_median_s": round(float(np.median(times)), 3), "step_min_s": round(min(times), 3),
          "device_kind": jax.devices()[0].device_kind, "visible": jax.device_count()}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--fake", type=int, default=2, help="fake host devices on a CPU (0: the real devices)")
  p.add_argument("--seeds", type=int, default=4)
  p.add_argument("--size", choices=sorted(SIZES), default="small")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--rounds", type=int, default=2, help="alternate the rows this many times (drifting machines)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "devices.json"))
  p.add_argument("--one", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.one:
    print("ROW " + json.dumps(one(**json.loads(args.one))), flush=True)
    return
  n = args.fake or None
  jobs = [dict(devices=1, mode="seeds"), dict(devices=n or 2, mode="seeds"), dict(devices=n or 2, mode="data")]
  env = dict(os.environ)
  if args.fake:
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.fake}"
    env["JAX_PLATFORMS"] = "cpu"
  rows = []
  for r in range(args.rounds):
    for job in jobs:
      job = dict(job, seeds=args.seeds, size=args.size, reps=args.reps)
      proc = subprocess.run([sys.executable, "-m", "benchmarks.devices", "--one", json.dumps(job)], env=env,
                            capture_output=True, text=True)
      row = next((json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")), None)
      if row is None:
        print(f"{job}: FAILED\n{proc.stderr[-1500:]}", file=sys.stderr)
        continue
      row["round"] = r
      rows.append(row)
      print(f"round {r}: {row['devices']} device(s), {row['mode']}: compile {row['compile_s']} s, "
            f"step {row['step_median_s']} s", flush=True)
  print("\n| devices | mode | seeds | compile s | step s (median per round) |\n|---:|---|---:|---:|---|")
  for job in jobs:
    mine = [r for r in rows if r["devices"] == job["devices"] and r["mode"] == job["mode"]]
    if mine:
      print(f"| {job['devices']} | {job['mode']} | {args.seeds} | {mine[0]['compile_s']} | "
            f"{', '.join(str(r['step_median_s']) for r in mine)} |")
  from jnas import checkpoint
  checkpoint.atomic_write_json(args.out, {"benchmark": "devices", "fake": args.fake,
                                          "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows})
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
