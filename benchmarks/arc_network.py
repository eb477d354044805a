"""Training K genotypes: one program each (``jnas.Network``) against one shared program (``ArcNetwork``).

    python -m benchmarks.arc_network                   # NSGA-Net candidates, its cpu preset, K = 3
    python -m benchmarks.arc_network --size search --k 2

K random NSGA-Net candidates (5 blocks, uniform over the encoding, keys 0..K-1; as DARTS genotypes of 5 nodes and 9 ops, the
network NSGA-Net trains its candidates in), one seed, by the candidate protocol of
``jnas.search.nsganet`` at the cpu preset (C 8, 3 cells, batch 32) or at its search size
(``--size search``: C 16, 8 cells, batch 128). For each way: the compile time of every program the
K genotypes need, and the median step time per genotype. Programs are compiled with
``lower().compile()`` (so the numbers are compile and step apart); the two ways alternate per
genotype so that a drift of the machine's load hits both. Prints a table and writes
``benchmarks/results/arc_network.json``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jnas
from benchmarks.model_step import other_cpu_load
from benchmarks.train_step import _data
from jnas import cellspace, checkpoint
from jnas import train as T
from jnas.search import nsganet


def _time(prog, state, n, reps, batch):
  keys = jax.vmap(jax.random.key)(jnp.arange(1, dtype=jnp.uint32))
  images, labels = _data(n)
  perms = prog.permutations(keys, 0, n)
  norm = jnp.asarray(jnas.data.CIFAR10_MEAN), jnp.asarray(jnas.data.CIFAR10_STD)
  t0 = time.perf_counter()
  state = prog.step(state, images, labels, perms, 0, keys, 1, 0.0, *norm)  # (compile + first step)
  jax.block_until_ready(state.loss_sum)
  first = time.perf_counter() - t0
  times = []
  for i in range(reps):
    t0 = time.perf_counter()
    state = prog.step(state, images, labels, perms, (i + 1) % (n // batch), keys, 1, 0.0, *norm)
    jax.block_until_ready(state.loss_sum)
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--size", choices=("cpu", "search"), default="cpu")
  ap.add_argument("--k", type=int, default=3)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "arc_network.json"))
  args = ap.parse_args(argv)
  cfg = nsganet.NSGANetConfig(**(nsganet.SPEC.cpu if args.size == "cpu" else {}))
  proto = nsganet.candidate_protocol(cfg)
  n = proto.batch_size * 4
  spe = n // proto.batch_size
  gs = [cellspace.sample(jax.random.key(i), "nsganet", "uniform", n_nodes=5).to_darts() for i in range(args.k)]
  keys = jax.vmap(jax.random.key)(jnp.arange(1, dtype=jnp.uint32))
  load0 = other_cpu_load()
  shared = T.shared_programs(cellspace.NSGA_OPS, 5, proto, 10, spe)
  rows = []
  for i, g in enumerate(gs):
    own = T.programs((g,), proto, 10, spe)
    first_own, step_own = _time(own, own.init(keys), n, args.reps, proto.batch_size)
    bound = T._bind_arc(shared, shared.net.encode(g))
    first_sh, step_sh = _time(bound, bound.init(keys), n, args.reps, proto.batch_size)
    rows.append({"genotype": str(g), "own_first_step_s": round(first_own, 2), "own_step_s": round(step_own, 4),
                 "shared_first_step_s": round(first_sh, 2), "shared_step_s": round(step_sh, 4)})
    print(f"genotype {i}: own program first step (compile) {first_own:.1f} s, step {step_own * 1e3:.0f} ms | "
          f"shared program first step {first_sh:.1f} s, step {step_sh * 1e3:.0f} ms", flush=True)
  own_total = sum(r["own_first_step_s"] for r in rows)
  sh_total = sum(r["shared_first_step_s"] for r in rows)
  print(f"\n| way | compile + first steps, {args.k} genotypes (s) | median step (ms) |\n|---|---|---|\n"
        f"| one program per genotype | {own_total:.1f} | {np.median([r['own_step_s'] for r in rows]) * 1e3:.0f} |\n"
        f"| one shared program | {sh_total:.1f} | {np.median([r['shared_step_s'] for r in rows]) * 1e3:.0f} |")
  out = {"size": args.size, "k": args.k, "protocol": proto.to_dict(), "rows": rows, "own_total_s": round(own_total, 1),
         "shared_total_s": round(sh_total, 1), "other_cpu_load_cores": round(load0, 2), "jax": jax.__version__,
         "backend": jax.default_backend()}
  checkpoint.atomic_write_json(args.out, out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
