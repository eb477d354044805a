"""The random-sampling baseline and the relative improvement of search methods [paper_protocol.md §4.3-4.5].

    # 8 random DARTS cells, 1 seed each, the DARTS protocol, CIFAR-10 (the paper's baseline)
    python -m experiments.random_baseline --k 8 --seeds 2 --protocol darts --dataset cifar10 --data-dir DIR
    # CPU-sized, with the RI of an evaluate run (or of a search run's genotype.json, trained here)
    python -m experiments.random_baseline --k 4 --seeds 0..1 --preset cpu --dataset cifar10 \\
        --data-dir ~/data/cifar10 --searched runs/evaluate/DARTS_V2-C+D+A-cpu
    # only the RI table, from existing runs (methods x datasets)
    python -m experiments.random_baseline --random-runs runs/random/c10 runs/random/c100 --searched DIR ...
    # 8 random ENAS cells (NAS-Benchmark's sampler) by the ENAS protocol
    python -m experiments.random_baseline --space enas --k 8 --preset cpu --dataset cifar10 --data-dir DIR

The k architectures are drawn with ``jnas.random_genotype`` (the paper's sampler: per node 2 distinct
inputs, ops uniform over the 7 non-``none`` ops; ``--max-skip 2`` for the P-DARTS space), or with
``--space enas|nao|nsganet`` from that space's own sampler (``jnas.cellspace.sample``: NAS-Benchmark's,
``--sampler nb``, or uniform over the space) and trained by that space's protocol, from
``--sample-seed``, written to ``<out>/genotypes.json`` before training, and trained by
``jnas.train.train_genotypes`` (same protocol, same seeds for every architecture, as in YANG §3.1).

RI = 100 (Acc_searched - Acc_random) / Acc_random (YANG §3.1, Table 1), with Acc the mean over
architectures of each architecture's mean over seeds, of the final-epoch test accuracy
(``--metric best``: best epoch, what the paper's released curves reproduce, §6). A ``--searched`` run
is an ``experiments.evaluate`` run directory (its results.json), or a search run directory holding only
``genotype.json`` (then its genotypes are trained here, by this protocol, under ``<out>/searched/``).
Each searched run is compared with the random run of its own dataset. Writes ``summary.json`` and
``ri_table.json`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jnas  # sets the XLA:CPU flag before JAX starts
import jax

from experiments import cli
from experiments.evaluate import (add_common_args, load_data, parse_seeds, print_table, protocol_from_args,
                                  resolve_genotypes, summarize_results)
from jnas import checkpoint, metrics, rundir
from jnas.rundir import default_out
from jnas.train import TrainingInterrupted, train_genotypes, validate_training  # noqa: F401 (TrainingInterrupted re-exported)


SPACE_PROTOCOLS = {"darts": "darts", "enas": "enas", "nao": "nao", "nsganet": "nsganet"}


def sample(k: int, seed: int, max_skip: int | None, space: str = "darts", sampler: str = "nb",
           nao_ids: str = "literal") -> list:
  """k architectures from the space's sampler (``jnas.cellspace.sample``; DARTS: the paper's), keyed by ``seed``."""
  if space == "darts":
    return jnas.random_genotypes(jax.random.key(seed), k, max_skip_connect=max_skip)
  if max_skip is not None:
    raise ValueError("--max-skip applies to the DARTS space only")
  from jnas import cellspace
  return cellspace.samples(jax.random.key(seed), space, k, sampler, nao_ids=nao_ids)


def load_run(path: str) -> dict:
  """A run directory's results.json (``experiments.evaluate`` / ``random_baseline`` / ``train_genotypes``)."""
  p = os.path.join(path, "results.json")
  if not os.path.isfile(p):
    raise FileNotFoundError(f"{path}: no results.json (not a finished evaluate / random_baseline run)")
  with open(p) as f:
    return json.load(f)


def run_accuracy(run: dict, metric: str) -> dict:
  """Mean over architectures of the per-architecture seed means, and its spread."""
  rows = summarize_results(run["results"], metric)
  accs = [r["acc"] for r in rows if r["acc"] == r["acc"]]
  if not accs:
    raise ValueError("no architecture of the run finished training")
  mean, std = metrics.mean_std(accs) if len(accs) > 1 else (accs[0], float("nan"))
  return {"mean": mean, "std": std, "n_arch": len(accs), "n_pairs": sum(len(r[metric]) for r in rows)}


def ri_table(random_runs: dict[str, dict], searched: list[tuple[str, str, dict]], metric: str) -> list[dict]:
  """One entry per (method, dataset): random and searched accuracy, RI, and whether protocols match."""
  table = []
  for method, dataset, run in searched:
    entry = {"method": method, "dataset": dataset, "searched": run_accuracy(run, metric)}
    base = random_runs.get(dataset)
    if base is None:
      entry.update(random=None, ri=None, note=f"no random run for dataset {dataset!r}")
    else:
      entry["random"] = run_accuracy(base, metric)
      entry["ri"] = metrics.relative_improvement(entry["searched"]["mean"], entry["random"]["mean"])
      same = {k: v for k, v in run["protocol"].items() if k != "name"} == \
             {k: v for k, v in base["protocol"].items() if k != "name"}
      entry["note"] = "" if same else "protocols differ"
    table.append(entry)
  return table


def print_ri_table(table: list[dict], metric: str, file=None) -> None:
  file = file or sys.stdout
  datasets = list(dict.fromkeys(e["dataset"] for e in table))
  methods = list(dict.fromkeys(e["method"] for e in table))
  cell = {(e["method"], e["dataset"]): e for e in table}
  print(f"RI (%) = 100 (searched - random) / random, {metric}-epoch test accuracy", file=file)
  print("| method | " + " | ".join(datasets) + " |", file=file)
  print("|---|" + "---:|" * len(datasets), file=file)
  for m in methods:
    parts = []
    for d in datasets:
      e = cell.get((m, d))
      parts.append("-" if e is None or e["ri"] is None else f"{e['ri']:+.2f}" + (" (!)" if e["note"] else ""))
    print(f"| {m} | " + " | ".join(parts) + " |", file=file)
  print("\n| method | dataset | random acc % (archs) | searched acc % (archs) | RI % |", file=file)
  print("|---|---|---:|---:|---:|", file=file)
  f = lambda a: "-" if a is None else (f"{a['mean']:.2f}" + ("" if a["std"] != a["std"] else f" ± {a['std']:.2f}")
                                       + f" ({a['n_arch']})")
  for e in table:
    ri = "-" if e["ri"] is None else f"{e['ri']:+.2f}"
    print(f"| {e['method']} | {e['dataset']} | {f(e['random'])} | {f(e['searched'])} | {ri} "
          f"{'(' + e['note'] + ')' if e['note'] else ''}|", file=file)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("--k", type=int, default=8, help="number of random architectures (8 in the paper)")
  parser.add_argument("--sample-seed", type=int, default=0, help="seed of the architecture sampler")
  parser.add_argument("--max-skip", type=int, default=None, help="at most this many skip_connect in the normal "
                      "cell (2: the P-DARTS space)")
  parser.add_argument("--space", default="darts", choices=sorted(SPACE_PROTOCOLS),
                      help="the search space sampled (default darts); each space's default protocol is its own "
                           "(enas, nao, nsganet; --protocol overrides)")
  parser.add_argument("--sampler", default="nb", choices=("nb", "uniform"),
                      help="nb: NAS-Benchmark's sampler for the space, exactly; uniform: uniform over the space's "
                           "search encoding (jnas.cellspace; the DARTS space has one sampler)")
  parser.add_argument("--nao-ids", default="literal", choices=("literal", "large"),
                      help="NAO's nb sampler draws op ids 0-10: read literally as NB's model.py ids (default) or "
                           "shifted by 5 to the 11-op large space (NB does not say which it ran)")
  parser.add_argument("--searched", nargs="*", default=[], help="evaluate run dirs, or search run dirs with "
                      "genotype.json (trained here)")
  parser.add_argument("--random-runs", nargs="*", default=None, help="existing random-baseline run dirs (one per "
                      "dataset): build the RI table without training")
  parser.add_argument("--metric", choices=("final", "best"), default="final")
  add_common_args(parser)
  args = parser.parse_args(argv)
  if args.protocol is None:
    args.protocol = SPACE_PROTOCOLS[args.space]
  cli.setup_devices(args)
  cli.setup_compile_cache(args.compile_cache)
  try:
    seeds = parse_seeds(args.seeds)
    protocol = protocol_from_args(args)
    if args.k < 1:
      raise ValueError(f"--k must be >= 1, got {args.k}")
  except ValueError as e:
    parser.error(str(e))

  random_runs: dict[str, dict] = {}
  searched: list[tuple[str, str, dict]] = []
  out = args.out
  t0 = time.perf_counter()
  if args.random_runs is not None:  # table only
    for d in args.random_runs:
      run = load_run(d)
      random_runs[run.get("meta", {}).get("dataset", os.path.basename(d))] = run
  else:
    out = out or default_out("random", f"k{args.k}-s{args.sample_seed}-{protocol.name}-{args.preset}".replace("+", "p"))
    ds = load_data(args)
    try:
      archs = sample(args.k, args.sample_seed, args.max_skip, args.space, args.sampler, args.nao_ids)
    except ValueError as e:
      parser.error(str(e))
    validate_training(archs, seeds, protocol, ds.train, ds.test, ds.num_classes, devices=args.devices,
                      parallel_mode=args.parallel)
    cli.prepare_out(out, resume=args.resume, overwrite=args.overwrite)
    gfile = os.path.join(out, "genotypes.json")
    record = {"sampler": "jnas.random_genotype" if args.space == "darts" else f"jnas.cellspace.sample({args.sampler})",
              "space": args.space, "nao_ids": args.nao_ids if args.space == "nao" else None,
              "sample_seed": args.sample_seed, "k": args.k, "max_skip": args.max_skip,
              "genotypes": [g.to_dict() for g in archs], "text": [str(g) for g in archs]}
    if args.resume and os.path.isfile(gfile):
      with open(gfile) as f:
        if json.load(f)["text"] != record["text"]:
          raise SystemExit(f"{gfile}: the stored architectures differ from --k/--sample-seed/--max-skip")
    os.makedirs(out, exist_ok=True)
    rundir.note_written(out, "genotypes.json")
    checkpoint.atomic_write_json(gfile, record)
    meta = {"experiment": "random_baseline", "method": "random", "dataset": ds.name, "preset": args.preset,
            "protocol_name": args.protocol, "sample_seed": args.sample_seed, "space": args.space}
    if not args.quiet:
      print(f"random baseline: {args.k} architectures x seeds {seeds}, protocol {protocol.name} ({args.preset}), "
            f"{ds.name}, out {out}", file=sys.stderr)
    results = train_genotypes(archs, seeds, protocol, ds.train, ds.test, num_classes=ds.num_classes, out=out,
                              resume=args.resume and rundir.holds_run(out), quiet=args.quiet,
                              devices=args.devices, parallel_mode=args.parallel,
                              eval_batch_size=args.eval_batch_size, mean=ds.mean, std=ds.std, meta=meta,
                              pack_size=args.pack_size, share_program=args.share_program)
    rows = summarize_results(results, args.metric)
    print_table(rows, [f"random {i} ({g.hash()[:8]})" for i, g in enumerate(archs)])
    acc = run_accuracy({"results": results}, args.metric)
    print(f"random sampling: {acc['mean']:.2f} ± {acc['std']:.2f} % over {acc['n_arch']} architectures "
          f"({args.metric} epoch; std ddof 1 over the per-architecture seed means)")
    random_runs[ds.name] = load_run(out)

  for d in args.searched:
    if os.path.isfile(os.path.join(d, "results.json")):
      run = load_run(d)
    elif os.path.isfile(os.path.join(d, "genotype.json")) and args.random_runs is None:
      named = resolve_genotypes(d)
      sub = os.path.join(out, "searched", os.path.basename(os.path.normpath(d)))
      rundir.note_written(out, "searched")
      meta = {"experiment": "evaluate", "method": os.path.basename(os.path.normpath(d)), "dataset": ds.name,
              "preset": args.preset, "protocol_name": args.protocol}
      train_genotypes([g for _, g in named], seeds, protocol, ds.train, ds.test, num_classes=ds.num_classes, out=sub,
                      resume=args.resume and rundir.holds_run(sub), overwrite=args.overwrite, quiet=args.quiet,
                      devices=args.devices, parallel_mode=args.parallel,
                      eval_batch_size=args.eval_batch_size, mean=ds.mean, std=ds.std, meta=meta,
                      pack_size=args.pack_size, share_program=args.share_program)
      run = load_run(sub)
    else:
      raise SystemExit(f"--searched {d}: neither results.json nor (when training here) genotype.json")
    m = run.get("meta", {})
    searched.append((m.get("method", os.path.basename(os.path.normpath(d))), m.get("dataset", "?"), run))

  table = ri_table(random_runs, searched, args.metric) if searched else []
  if table:
    print_ri_table(table, args.metric)
  summary = {"random": {d: run_accuracy(r, args.metric) for d, r in random_runs.items()}, "metric": args.metric,
             "ri_table": table, "wall_s": round(time.perf_counter() - t0, 1)}
  if out is not None:
    rundir.note_written(out, "summary.json" if args.random_runs is None else "ri_table.json")
    checkpoint.atomic_write_json(os.path.join(out, "summary.json" if args.random_runs is None else "ri_table.json"),
                                 summary)
    if table and args.random_runs is None:
      rundir.note_written(out, "ri_table.json")
      checkpoint.atomic_write_json(os.path.join(out, "ri_table.json"), {"metric": args.metric, "rows": table})
  return summary


if __name__ == "__main__":
  cli.entry("random_baseline", main)
