"""Compile and step time of each search space's retraining step and of the ENAS / NAO search steps.

    python -m benchmarks.space_steps                    # both parts, paper sizes, one seed
    python -m benchmarks.space_steps --part search --size cpu

* ``retrain``: the step ``jnas.train.train_genotypes`` runs, one seed, by each space's own protocol at
  its paper size: DARTS_V2 by ``darts`` (20 cells, C 36, batch 96) beside a random ENAS cell (NB's
  sampler, key 0) by ``enas`` (17 cells, C 36, batch 144), a random NAO cell by ``nao`` (20 cells,
  C 36, batch 128) and a random NSGA-Net cell by ``nsganet`` (20 cells, C 34 + 4 per cell, SE,
  batch 96).
* ``search``: one jitted search step (``SearchMethod.step``, one seed) of ENAS (8 cells, F 20, batch
  160, with its controller update, which runs in the last 30 steps of an epoch: timed apart) and of
  NAO-WS (11 cells, F 20, batch 64, a pool of 600 arcs).

``--size cpu`` uses the cpu presets instead. Prints a table and writes
``benchmarks/results/space_steps.json`` (compile time apart from the median step time, and the
other processes' CPU load during the run).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jnas
from benchmarks.train_step import _data, peak_rss_gb, time_train_step
from jnas import cellspace, checkpoint, genotypes
from benchmarks.model_step import other_cpu_load
from jnas.protocols import get_protocol


def part_retrain(size: str, reps: int) -> list[dict]:
  rows = []
  for space, proto in (("darts", "darts"), ("enas", "enas"), ("nao", "nao"), ("nsganet", "nsganet")):
    p = get_protocol(proto, preset="paper" if size == "paper" else "cpu")
    g = genotypes.DARTS_V2 if space == "darts" else cellspace.sample(jax.random.key(0), space, "nb")
    row = time_train_step(g, p, 1, reps, data=_data(p.batch_size * 4))
    row.update(space=space, protocol=p.name, config=f"{p.layers} cells, C {p.C}, batch {p.batch_size}",
               genotype=str(g))
    print(f"{space}: compile {row['compile_s']} s, step {row['step_median_s']} s", flush=True)
    rows.append(row)
  return rows


def _time_search(name: str, overrides: dict, reps: int, controller: bool) -> dict:
  from jnas.search import METHODS, config_for
  spec = METHODS[name]
  c = config_for(spec, "paper", **overrides)
  spe = 100
  method = spec(c, spe).stage(0, None).method
  rng = np.random.default_rng(0)
  B = c.batch_size
  batch = lambda: (jnp.asarray(rng.standard_normal((B, 32, 32, 3)), jnp.float32),
                   jnp.asarray(rng.integers(0, 10, (B,)), jnp.int32))
  state = jax.jit(method.init)(jax.random.key(0))
  if controller:  # a step inside the controller's window (the last ctl_train_steps of an epoch)
    state = state._replace(step=jnp.asarray(spe - 1, jnp.int32))
  step = jax.jit(method.step)
  tr, va = batch(), batch()
  load = other_cpu_load()
  t0 = time.perf_counter()
  compiled = step.lower(state, tr, va).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(reps + 1):
    t0 = time.perf_counter()
    new, m = compiled(state, tr, va)
    jax.block_until_ready(m["train_loss"])
    if i:
      times.append(time.perf_counter() - t0)
  return {"method": name, "controller_step": controller, "compile_s": round(compile_s, 2),
          "step_median_s": round(float(np.median(times)), 4), "batch_size": B, "C": c.C, "layers": c.layers,
          "other_cpu_load_cores": round(load, 2), "peak_rss_gb": round(peak_rss_gb(), 2)}


def part_search(size: str, reps: int) -> list[dict]:
  cpu = size != "paper"
  rows = []
  for name, ctl in (("enas", False), ("enas", True), ("nao", False)):
    over = {} if not cpu else {"C": 8, "layers": 5, "batch_size": 32}
    if name == "nao" and cpu:
      over["seed_archs"] = 50
    row = _time_search(name, over, reps, ctl)
    print(f"{name}{' (controller step)' if ctl else ''}: compile {row['compile_s']} s, step {row['step_median_s']} s",
          flush=True)
    rows.append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--part", choices=("retrain", "search", "all"), default="all")
  parser.add_argument("--size", choices=("paper", "cpu"), default="paper")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "space_steps.json"))
  args = parser.parse_args()
  result = {"backend": jax.default_backend(), "size": args.size, "jax": jax.__version__, "jnas": jnas.__version__}
  if args.part in ("retrain", "all"):
    result["retrain"] = part_retrain(args.size, args.reps)
    print("\n| space | protocol | network | compile s | step s (median) | load |\n|---|---|---|---:|---:|---:|")
    for r in result["retrain"]:
      print(f"| {r['space']} | {r['protocol']} | {r['config']} | {r['compile_s']} | {r['step_median_s']} | "
            f"{r['other_cpu_load_cores']} |")
  if args.part in ("search", "all"):
    result["search"] = part_search(args.size, args.reps)
    print("\n| search step | network | compile s | step s (median) | load |\n|---|---|---:|---:|---:|")
    for r in result["search"]:
      print(f"| {r['method']}{' + controller update' if r['controller_step'] else ''} | {r['layers']} cells, "
            f"F {r['C']}, batch {r['batch_size']} | {r['compile_s']} | {r['step_median_s']} | "
            f"{r['other_cpu_load_cores']} |")
  checkpoint.atomic_write_json(args.out, result)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
