"""Throughput of random search's ranking: architectures scored per minute with shared weights.

    python -m benchmarks.rsws_rank                       # paper size (C=24, 8 cells), 10 batches of 64
    python -m benchmarks.rsws_rank --size small --chunks 10,50

Each candidate architecture is scored in eval mode on ``--batches`` validation batches (the
screening pass of ``jnas.search.rsws.rank``), ``--chunk`` candidates per compiled, vmapped call.
Compile time is reported apart; the rate is over ``--archs`` candidates after a warm-up chunk.
Writes ``benchmarks/results/rsws_rank.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jnas  # noqa: F401  (sets the XLA:CPU flag before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from jnas import checkpoint
from jnas.search import METHODS, config_for, rsws

SIZES = {"paper": dict(C=24, layers=8), "small": dict(C=8, layers=5)}


def run(size: str, chunk: int, archs: int, batches: int, batch: int, single_path: bool) -> dict:
  cfg = config_for(METHODS["rsws"], "paper", **SIZES[size], batch_size=batch, rank_chunk=chunk)
  method = METHODS["rsws"](cfg, 10).stage(0, None).method
  state = method.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batches * batch, 32, 32, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, (batches * batch,), dtype=np.int32))
  score = rsws._scorer(method, batch, jnp.asarray((0.49, 0.48, 0.45)), jnp.asarray((0.25, 0.24, 0.26)), single_path)
  keys = jax.random.split(jax.random.key(1), archs + chunk)
  cand = jax.vmap(lambda k: rsws.sample(k, cfg))(keys)
  take = lambda lo: jax.tree.map(lambda a: a[lo:lo + chunk], cand)
  starts = jnp.zeros((chunk,), jnp.int32)
  t0 = time.perf_counter()
  jax.block_until_ready(score(state, take(0), images, labels, starts, batches))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for lo in range(chunk, archs + chunk, chunk):
    out = score(state, take(lo), images, labels, starts, batches)
  jax.block_until_ready(out)
  dt = time.perf_counter() - t0
  n = (archs // chunk) * chunk
  return {"size": size, "scoring": "single path, lax.map" if single_path else "full net, vmap", "C": cfg.C, "layers": cfg.layers, "chunk": chunk, "archs": n, "batches": batches,
          "batch": batch, "compile_and_first_chunk_s": round(compile_s, 1), "seconds": round(dt, 2),
          "archs_per_minute": round(60 * n / dt, 1), "images_per_s": round(n * batches * batch / dt, 1)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=sorted(SIZES), default="paper")
  p.add_argument("--chunks", default="10")
  p.add_argument("--archs", type=int, default=40)
  p.add_argument("--batches", type=int, default=10)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--scoring", default="single,vmap", help="single (single-path twin, one after another) and/or "
                 "vmap (the full net, vmapped)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "rsws_rank.json"))
  args = p.parse_args()
  rows = []
  jobs = [(scoring, int(c)) for scoring in args.scoring.split(",") for c in args.chunks.split(",")]
  for scoring, chunk in jobs:
    rows.append(run(args.size, chunk, args.archs, args.batches, args.batch, scoring == "single"))
    print(rows[-1], flush=True)
    checkpoint.atomic_write_json(args.out, {"benchmark": "rsws_rank", "device": jax.devices()[0].device_kind,
                                            "jax": jax.__version__, "machine": platform.machine(),
                                            "cpus": os.cpu_count(), "rows": rows})
  print("| size | scoring | chunk | archs | batches x batch | compile s | archs / min | images / s |")
  print("|---|---|---:|---:|---|---:|---:|---:|")
  for r in rows:
    print(f"| {r['size']} (C={r['C']}, {r['layers']} cells) | {r['scoring']} | {r['chunk']} | {r['archs']} | {r['batches']} x {r['batch']} "
          f"| {r['compile_and_first_chunk_s']} | {r['archs_per_minute']} | {r['images_per_s']} |")


if __name__ == "__main__":
  main()
