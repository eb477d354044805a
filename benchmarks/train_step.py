"""Retraining throughput: the paper-size training step, seeds per program, and how to train many genotypes.

    python -m benchmarks.train_step                     # paper, seeds, genotypes (about 15 minutes on 2 cores)
    python -m benchmarks.train_step --part paper        # one part: paper | seeds | genotypes | packed
    python -m benchmarks.train_step --part packed --size study --ks 1,2,4,8

* ``paper``: compile and median step time of the step ``jnas.train.train_genotypes`` runs for
  Network(DARTS_V2, C=36, 20 cells, batch 96, auxiliary head 0.4, drop path 0.2, cutout 16), one
  seed: batch gather + augmentation + forward + backward + SGD + NaN guard. PyTorch quark0/darts on
  this machine: 9.0 s per step (benchmarks/model_step.py).
* ``seeds``: the same step on a small config, vmapped over S = 1, 2, 4 seeds: images/s per S.
* ``genotypes``: genotypes x seeds per hour for N = 1, 4, 8 genotypes (DARTS_V2 + random ones),
  S = 2 seeds, a small config, a workload of ``--steps`` steps per (genotype, seed). Three forms:
  - *sequence* (what train_genotypes does): one process, one program per genotype, each vmapped over
    the seeds; cost = sum over genotypes of (compile + steps x step time);
  - *separate*: one process (job) per genotype: the same plus process start-up and data loading per
    genotype (measured once as ``startup_s``);
  - *one-hot*: one shared layout for all genotypes: the DARTS supernet with one-hot alphas (an edge the
    genotype does not use selects ``none``), vmapped over genotypes x seeds; it compiles once but
    runs all 8 ops on all 14 edges. It stands in (a lower bound on compile, close on step time)
    for a masked discrete network, which would also carry the affine BN, drop path and aux head.
  Figures for N genotypes are built from the measured compile and step time of each genotype
  (sequence, separate) or measured directly at N x S (one-hot).
* ``packed`` (``--size study|paper``): K = 1, 2, 4, 8 random genotypes, one seed: the step program of
  a ``jnas.packed.PackedNetwork`` of the K genotypes against K single-genotype programs run in turn
  in this process (compile time: packed against the sum of the K compiles; throughput: genotype-images
  per second, K x batch / packed step against K x batch / the sum of the K steps) and the process's
  peak memory after each. Sizes: 'study' = the cpu preset of the DARTS protocol (C=16, 8 cells, batch
  96, aux 0.4, drop path 0.2, cutout 16), 'paper' = the DARTS protocol (C=36, 20 cells, batch 96).

Prints a table and writes ``benchmarks/results/train_step.json``; records the other processes' CPU load
(timings on a shared 2-core machine lie under load).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import jnas  # sets the XLA:CPU flag before JAX starts
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.model_step import other_cpu_load
from jnas import checkpoint, genotypes, space
from jnas.compile_options import step_jit
from jnas.protocols import get_protocol
from jnas.supernet import SearchNetwork
from jnas.train import cross_entropy, programs

PYTORCH_STEP_S = 9.0
SMALL = dict(C=8, layers=5, batch_size=32)  # the config of the seeds / genotypes parts


def _data(n: int, size: int = 32):
  rng = np.random.default_rng(0)
  return jax.device_put((rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                         rng.integers(0, 10, (n,), dtype=np.int32)))


def time_train_step(genotype, protocol, seeds: int, reps: int, data=None) -> dict:
  """Compile time and median step time of train_genotypes' step for ``seeds`` vmapped seeds."""
  n = protocol.batch_size * 4
  images, labels = data if data is not None else _data(n)
  prog = programs(genotype, protocol, 10, n // protocol.batch_size)
  keys = jax.vmap(jax.random.key)(jnp.arange(seeds, dtype=jnp.uint32))
  state = prog.init(keys)
  perms = prog.permutations(keys, 0, n)
  norm = jnp.asarray(jnas.data.CIFAR10_MEAN), jnp.asarray(jnas.data.CIFAR10_STD)
  args = (images, labels, perms, 0, keys, 1, 0.1, *norm)
  load = other_cpu_load()
  t0 = time.perf_counter()
  compiled = prog.step.lower(state, *args).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(reps + 1):
    t0 = time.perf_counter()
    state = compiled(state, images, labels, perms, i % (n // protocol.batch_size), keys, 1, 0.1, *norm)
    jax.block_until_ready(state.loss_sum)
    if i:
      times.append(time.perf_counter() - t0)
  if not np.asarray(state.alive).all():
    raise FloatingPointError("a seed died in the benchmark")
  step = float(np.median(times))
  K = len(genotype) if isinstance(genotype, tuple) else 1
  return {"compile_s": round(compile_s, 2), "step_median_s": round(step, 4), "step_min_s": round(min(times), 4),
          "reps": reps, "seeds": seeds, "genotypes": K,
          "images_per_s": round(K * seeds * protocol.batch_size / step, 1),
          "other_cpu_load_cores": round(load, 2), "peak_rss_gb": round(peak_rss_gb(), 2)}


def peak_rss_gb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def part_paper(reps: int) -> dict:
  p = get_protocol("darts")  # C 36, 20 cells, batch 96, aux 0.4, drop path 0.2, cutout 16
  row = time_train_step(genotypes.DARTS_V2, p, 1, reps, data=_data(96 * 4))
  row.update(config="DARTS_V2, C=36, 20 cells, batch 96, aux 0.4, drop path 0.2, cutout 16, 1 seed",
             pytorch_reference_s=PYTORCH_STEP_S)
  print(f"paper step: compile {row['compile_s']} s, step {row['step_median_s']} s (PyTorch {PYTORCH_STEP_S} s), "
        f"load {row['other_cpu_load_cores']}", flush=True)
  return row


def part_seeds(reps: int) -> list[dict]:
  p = get_protocol("darts", **SMALL)
  rows = []
  for s in (1, 2, 4):
    row = time_train_step(genotypes.DARTS_V2, p, s, reps)
    rows.append(dict(row, config=f"DARTS_V2, C={SMALL['C']}, {SMALL['layers']} cells, batch {SMALL['batch_size']}"))
    print(f"seeds {s}: step {row['step_median_s']} s, {row['images_per_s']} img/s (compile {row['compile_s']} s)",
          flush=True)
  return rows


def _one_hot_alphas(g) -> dict:
  """Alphas whose softmax is the genotype: one op per used edge, ``none`` on the others."""
  out = {}
  for name, pairs in (("normal", g.normal), ("reduce", g.reduce)):
    a = np.full((space.num_edges(), len(space.PRIMITIVES)), -1e9, np.float32)
    a[:, space.PRIMITIVES.index("none")] = 0.0
    for k, (op, src) in enumerate(pairs):
      e = space.edge_index(src, k // 2)
      a[e] = -1e9
      a[e, space.PRIMITIVES.index(op)] = 0.0
    out[name] = jnp.asarray(a)
  return out


def time_one_hot(gs, seeds: int, reps: int) -> dict:
  """The supernet with one-hot alphas, vmapped over len(gs) x seeds: compile and step time."""
  net = SearchNetwork(C=SMALL["C"], layers=SMALL["layers"], num_classes=10)
  B = SMALL["batch_size"]
  tx = optax.chain(optax.clip_by_global_norm(5.0), optax.add_decayed_weights(3e-4), optax.sgd(0.025, momentum=0.9))
  M = len(gs) * seeds
  alphas = jax.tree.map(lambda *a: jnp.stack(a), *[_one_hot_alphas(g) for g in gs for _ in range(seeds)])
  v = jax.vmap(net.init_variables)(jax.random.split(jax.random.key(0), M))
  state = (v["params"], v["batch_stats"], jax.vmap(tx.init)(v["params"]))
  x = jax.random.normal(jax.random.key(1), (B, 32, 32, 3))
  y = jax.random.randint(jax.random.key(2), (B,), 0, 10)

  def step(state, alphas):
    params, stats, opt = state
    def loss_fn(w):
      logits, new = net.forward(w, stats, x, alphas, train=True)
      return cross_entropy(logits, y), new
    (loss, new), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return (optax.apply_updates(params, upd), new, opt), loss

  f = step_jit(jax.vmap(step), donate_argnums=0)
  load = other_cpu_load()
  t0 = time.perf_counter()
  compiled = f.lower(state, alphas).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(reps + 1):
    t0 = time.perf_counter()
    state, loss = compiled(state, alphas)
    loss.block_until_ready()
    if i:
      times.append(time.perf_counter() - t0)
  return {"compile_s": round(compile_s, 2), "step_median_s": round(float(np.median(times)), 4), "members": M,
          "other_cpu_load_cores": round(load, 2)}


def startup_seconds() -> float:
  """Wall time of a fresh process that imports jnas and loads the digits dataset (a job's start-up)."""
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "-c", "import jnas, jax; jnas.data.load_digits(); jax.numpy.zeros(1).block_until_ready()"],
                 check=True, capture_output=True)
  return time.perf_counter() - t0


def part_genotypes(reps: int, steps: int, seeds: int = 2) -> dict:
  p = get_protocol("darts", **SMALL)
  gs = [genotypes.DARTS_V2] + jnas.random_genotypes(jax.random.key(0), 7)
  programs.cache_clear()  # every genotype pays its compile (the seeds part compiled DARTS_V2 already)
  jax.clear_caches()
  per = []
  data = _data(p.batch_size * 4)
  for i, g in enumerate(gs):
    row = time_train_step(g, p, seeds, reps, data=data)
    per.append(row)
    print(f"genotype {i}: compile {row['compile_s']} s, step ({seeds} seeds) {row['step_median_s']} s", flush=True)
  startup = startup_seconds()
  one_hot = {}
  for n in (1, 4):
    one_hot[n] = time_one_hot(gs[:n], seeds, max(1, reps // 2))
    print(f"one-hot N={n}: compile {one_hot[n]['compile_s']} s, step ({n}x{seeds}) {one_hot[n]['step_median_s']} s",
          flush=True)
  return {"config": f"C={SMALL['C']}, {SMALL['layers']} cells, batch {SMALL['batch_size']}, 32 px, {seeds} seeds, "
                    f"{steps} steps per pair", "startup_s": round(startup, 2), "per_genotype": per,
          "one_hot": {str(k): v for k, v in one_hot.items()}, "rows": genotype_rows(per, one_hot, startup, steps, seeds)}


def genotype_rows(per: list[dict], one_hot: dict, startup: float, steps: int, seeds: int) -> list[dict]:
  """Seconds and (genotype, seed) pairs per hour for N = 1, 4, 8 from the measured parts."""
  one_hot = {int(k): v for k, v in one_hot.items()}
  # unmeasured N: the vmapped step grows linearly in the members (slope from N=1 -> 4, or from N=1 alone)
  if 4 in one_hot:
    per_member = (one_hot[4]["step_median_s"] - one_hot[1]["step_median_s"]) / (3 * seeds)
  else:
    per_member = one_hot[1]["step_median_s"] / seeds
  rows = []
  for n in (1, 4, 8):
    seq = sum(r["compile_s"] + steps * r["step_median_s"] for r in per[:n])
    sep = seq + n * startup
    if n in one_hot:
      oh_step, oh_compile, measured = one_hot[n]["step_median_s"], one_hot[n]["compile_s"], True
    else:
      m = max(one_hot)
      oh_step = one_hot[m]["step_median_s"] + per_member * (n - m) * seeds
      oh_compile, measured = one_hot[m]["compile_s"], False
    oh = oh_compile + steps * oh_step
    pairs = n * seeds
    rows.append({"N": n, "seeds": seeds, "steps": steps,
                 "sequence_s": round(seq, 1), "separate_s": round(sep, 1), "one_hot_s": round(oh, 1),
                 "sequence_pairs_per_h": round(3600 * pairs / seq, 2), "separate_pairs_per_h": round(3600 * pairs / sep, 2),
                 "one_hot_pairs_per_h": round(3600 * pairs / oh, 2), "one_hot_measured": measured})
  return rows


PACKED_SIZES = {"study": dict(preset="cpu"), "paper": dict()}


def part_packed(size: str, ks: tuple[int, ...], reps: int) -> dict:
  p = get_protocol("darts", **PACKED_SIZES[size])
  gs = jnas.random_genotypes(jax.random.key(0), max(ks))
  data = _data(p.batch_size * 4)
  singles = []
  for i, g in enumerate(gs):
    programs.cache_clear()
    jax.clear_caches()
    row = time_train_step(g, p, 1, reps, data=data)
    singles.append(row)
    print(f"[{size}] genotype {i} alone: compile {row['compile_s']} s, step {row['step_median_s']} s, "
          f"peak {row['peak_rss_gb']} GB, load {row['other_cpu_load_cores']}", flush=True)
  rows = []
  for K in ks:
    if K == 1:
      packed = singles[0]
    else:
      programs.cache_clear()
      jax.clear_caches()
      try:
        packed = time_train_step(tuple(gs[:K]), p, 1, reps, data=data)
      except Exception as e:  # out of memory at paper size: say so in the table
        print(f"[{size}] K={K}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        rows.append({"K": K, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        continue
    seq_compile = sum(r["compile_s"] for r in singles[:K])
    seq_step = sum(r["step_median_s"] for r in singles[:K])
    row = {"K": K, "packed_compile_s": packed["compile_s"], "sequential_compile_s": round(seq_compile, 2),
           "compile_per_genotype_ratio": round(seq_compile / packed["compile_s"], 2),
           "packed_step_s": packed["step_median_s"], "sequential_step_s": round(seq_step, 3),
           "packed_images_per_s": round(K * p.batch_size / packed["step_median_s"], 1),
           "sequential_images_per_s": round(K * p.batch_size / seq_step, 1),
           "throughput_ratio": round(seq_step / packed["step_median_s"], 2),
           "peak_rss_gb": packed["peak_rss_gb"], "other_cpu_load_cores": packed["other_cpu_load_cores"]}
    rows.append(row)
    print(f"[{size}] K={K}: packed compile {row['packed_compile_s']} s vs {row['sequential_compile_s']} s, "
          f"step {row['packed_step_s']} s vs {row['sequential_step_s']} s", flush=True)
  return {"config": f"{size}: C={p.C}, {p.layers} cells, batch {p.batch_size}, aux {p.auxiliary_weight}, drop path "
                    f"{p.drop_path_prob}, cutout {p.cutout_length}, 1 seed, 32 px",
          "genotypes": [str(g) for g in gs], "singles": singles, "rows": rows}


def print_packed(r: dict) -> None:
  print(f"\n| K ({r['config']}) | compile packed s | compile K programs s | per-genotype compile gain | "
        "step packed s | K steps s | genotype-img/s packed | sequential | throughput ratio | peak GB |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for row in r["rows"]:
    if "error" in row:
      print(f"| {row['K']} | {row['error']} |")
      continue
    print(f"| {row['K']} | {row['packed_compile_s']} | {row['sequential_compile_s']} | "
          f"{row['compile_per_genotype_ratio']}x | {row['packed_step_s']} | {row['sequential_step_s']} | "
          f"{row['packed_images_per_s']} | {row['sequential_images_per_s']} | {row['throughput_ratio']}x | "
          f"{row['peak_rss_gb']} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--part", choices=("paper", "seeds", "genotypes", "packed", "all"), default="all")
  parser.add_argument("--size", choices=("study", "paper", "both"), default="study", help="packed part's size")
  parser.add_argument("--ks", default="1,2,4,8", help="packed part: pack sizes K")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--steps", type=int, default=208, help="steps per (genotype, seed) in the genotypes part "
                      "(208: e.g. 4 epochs of 5,000 images at batch 96)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "train_step.json"))
  args = parser.parse_args()
  parts = ("paper", "seeds", "genotypes") if args.part == "all" else (args.part,)
  result = {}
  if os.path.exists(args.out):  # keep the other parts of an earlier run
    import json
    with open(args.out) as f:
      result = json.load(f).get("parts", {})
  if "paper" in parts:
    result["paper"] = part_paper(args.reps)
  if "seeds" in parts:
    result["seeds"] = part_seeds(args.reps)
  if "genotypes" in parts:
    result["genotypes"] = part_genotypes(args.reps, args.steps)
  if "packed" in parts:
    for size in (("study", "paper") if args.size == "both" else (args.size,)):
      result[f"packed_{size}"] = part_packed(size, tuple(int(k) for k in args.ks.split(",")), args.reps)

  if "paper" in result:
    r = result["paper"]
    print("\n| one training step (train_genotypes' step) | compile s | step s (median) | PyTorch s | load |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {r['config']} | {r['compile_s']} | {r['step_median_s']} | {r['pytorch_reference_s']} | "
          f"{r['other_cpu_load_cores']} |")
  if "seeds" in result:
    print(f"\n| seeds in one program ({result['seeds'][0]['config']}) | step s | images/s | compile s |")
    print("|---:|---:|---:|---:|")
    for r in result["seeds"]:
      print(f"| {r['seeds']} | {r['step_median_s']} | {r['images_per_s']} | {r['compile_s']} |")
  if "genotypes" in result:
    g = result["genotypes"]
    print(f"\n| N genotypes ({g['config']}; small config) | sequence (train_genotypes) pairs/h | separate jobs pairs/h "
          f"| one-hot shared layout pairs/h |")
    print("|---:|---:|---:|---:|")
    for r in g["rows"]:
      oh = r.get("one_hot_pairs_per_h")
      oh = "did not finish compiling" if oh is None else f"{oh}{'' if r.get('one_hot_measured') else ' (extrapolated)'}"
      print(f"| {r['N']} | {r['sequence_pairs_per_h']} | {r['separate_pairs_per_h']} | {oh} |")
  for size in ("study", "paper"):
    if f"packed_{size}" in result:
      print_packed(result[f"packed_{size}"])
  checkpoint.atomic_write_json(args.out, {
      "benchmark": "train_step", "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "jax": jax.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "date": time.strftime("%Y-%m-%d"), "parts": result})
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
