"""Retrain genotypes from scratch by a protocol and report test accuracy over seeds [paper_protocol.md §3].

    python -m experiments.evaluate --genotype DARTS_V2 --seeds 0..7 --protocol darts \\
        --dataset cifar10 --data-dir ~/data/cifar10                     # the paper's setting (GPU-days)
    python -m experiments.evaluate --genotype DARTS_V2 --seeds 0..1 --protocol darts --preset cpu \\
        --dataset cifar10 --data-dir ~/data/cifar10                     # 8 cells, C 16, 2 epochs, 2k images
    python -m experiments.evaluate --genotype runs/search/s0/genotype.json --dataset digits --preset cpu

``--genotype`` (repeatable) takes a published name (``DARTS_V2``, ``PDARTS``, ... see
``jnas.genotypes.PUBLISHED``), genotype text (quark0 or pt.darts form), or a path to a JSON file written
with ``Genotype.to_json`` (a search run's ``genotype.json``, or its directory). ``--protocol`` is a name
of ``jnas.protocols.PROTOCOLS`` (``base``, ``A``, ``D``, ``C``, ``C+D``, ``darts``, ``+50C``, ``+AA``,
``+1500E``, ``all``, ``nasbench-224``); ``--preset cpu`` shrinks it to a CPU-sized run; ``--set
field=value`` overrides any Protocol field (``--epochs``, ``--layers``, ``--channels``,
``--batch-size`` are shorthands, as on every command: ``experiments/cli.py``). The run directory (``--out``, default
``runs/evaluate/<name>-<protocol>-<preset>``) holds config.json, metrics.jsonl, checkpoints/,
results.json (``jnas.train.train_genotypes``) and summary.json (the table below); ``--resume``
continues a killed run.

Expected: DARTS_V2 under the paper protocol, 97.24 +- 0.09 % on CIFAR-10 (2.76 % error, DARTS-P
Table 1; 600 epochs, about 1.5 GPU-days per seed on a 1080Ti).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jnas  # sets the XLA:CPU flag before JAX starts

from experiments import cli
from jnas import checkpoint, genotypes, metrics, rundir
from jnas.protocols import PRESETS, PROTOCOLS, Protocol, get_protocol
from jnas.rundir import default_out
from jnas.train import TrainingInterrupted, train_genotypes, validate_training  # noqa: F401 (TrainingInterrupted re-exported)


# -------------------------------------------------------------------------------- arguments
def parse_seeds(text) -> list[int]:
  """'0..7' (inclusive), '0,3,5', '2', or a mix ('0..3,7'); a parsed list passes through."""
  if isinstance(text, list):
    return text
  try:
    return cli.parse_seeds(text)
  except Exception as e:  # argparse.ArgumentTypeError
    raise ValueError(str(e)) from None


def _parse_one(item):
  """A DARTS ``Genotype`` or a ``jnas.cellspace.SpaceGenotype`` (ENAS / NAO / NSGA-Net) from text or JSON."""
  from jnas import cellspace
  if isinstance(item, str):
    return cellspace.genotype_from_text(item) if cellspace.is_space_genotype(item) else jnas.Genotype.parse(item)
  if isinstance(item, dict) and item.get("format") == cellspace.JSON_FORMAT:
    return cellspace.genotype_from_dict(item)
  return jnas.Genotype.from_dict(item)


def _genotypes_from_json(obj, what: str) -> list[jnas.Genotype]:
  if isinstance(obj, dict) and "genotypes" in obj:
    obj = obj["genotypes"]
  elif isinstance(obj, dict) and "genotype" in obj and not {"normal", "reduce"} <= set(obj):
    obj = obj["genotype"]
  items = obj if isinstance(obj, list) else [obj]
  out = []
  for item in items:
    out.append(_parse_one(item))
  if not out:
    raise ValueError(f"{what}: holds no genotype")
  return out


def resolve_genotypes(spec: str) -> list[tuple[str, jnas.Genotype]]:
  """``[(label, genotype)]`` from a published name, genotype text, or a JSON file / run directory
  (a file may hold one genotype, a list, or ``{"genotypes": [...]}``)."""
  spec = spec.strip()
  if spec in genotypes.PUBLISHED:
    return [(spec, genotypes.PUBLISHED[spec])]
  if spec.startswith(("Genotype(", "SpaceGenotype(")):
    g = _parse_one(spec)
    return [(f"genotype-{g.hash()[:8]}", g)]
  if os.path.exists(spec):
    path = os.path.join(spec, "genotype.json") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
      raise ValueError(f"{spec}: a directory without genotype.json")
    with open(path) as f:
      text = f.read()
    base = os.path.basename(os.path.dirname(os.path.abspath(path))) if os.path.basename(path) == "genotype.json" \
        else os.path.splitext(os.path.basename(path))[0]
    try:
      obj = json.loads(text)
    except json.JSONDecodeError:
      gs = [_parse_one(text)]
    else:
      gs = _genotypes_from_json(obj, path)
    return [(base if len(gs) == 1 else f"{base}[{i}]", g) for i, g in enumerate(gs)]
  raise ValueError(f"unknown genotype {spec!r}: not a published name ({', '.join(sorted(genotypes.PUBLISHED))}), "
                   "not genotype text ('Genotype(normal=...)'), and no such file")


def parse_overrides(items: list[str]) -> dict:
  """``['C=8', 'autoaugment=true']`` -> typed Protocol fields; an unknown field is a ValueError."""
  fields = {f.name: f for f in dataclasses.fields(Protocol)}
  out = {}
  for item in items or []:
    if "=" not in item:
      raise ValueError(f"--set expects field=value, got {item!r}")
    k, v = item.split("=", 1)
    k = k.strip()
    if k not in fields:
      raise ValueError(f"--set: unknown protocol field {k!r}; known: {', '.join(fields)}")
    default = getattr(Protocol(), k)
    if isinstance(default, bool):
      if v.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"--set {k}: expected true/false, got {v!r}")
      out[k] = v.lower() in ("true", "1")
    elif isinstance(default, int):
      out[k] = int(v)
    elif isinstance(default, float):
      out[k] = float(v)
    else:
      out[k] = v
  return out


def add_common_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--protocol", default=None, help=f"one of {', '.join(PROTOCOLS)} (default darts; for "
                      "--space enas|nao|nsganet that space's own)")
  parser.add_argument("--preset", default="paper", choices=PRESETS, help="paper: as named; cpu: 8 cells, C 16, "
                      "2 epochs (scaled), 2,000 / 1,000 images")
  cli.add_run_args(parser, seeds_default="0", set_help="override a Protocol field (repeatable), e.g. --set "
                   "cutout_length=0")
  parser.add_argument("--digits-size", type=int, default=32, help="side of the upsampled digits images (32)")
  parser.add_argument("--eval-batch-size", type=int, default=500)
  parser.add_argument("--pack-size", type=int, default=None,
                      help="genotypes trained side by side in one compiled program (jnas.packed; default: "
                           "jnas.train.default_pack_size() for the backend; 1: one program per genotype)")
  parser.add_argument("--share-program", action="store_true",
                      help="train every genotype through one compiled program with the genotype as data "
                           "(jnas.arc_network; DARTS-space genotypes of one node count): one compile for all")


def load_data(args) -> jnas.data.Dataset:
  return cli.load_dataset(args.dataset, args.data_dir, digits_size=args.digits_size)


def protocol_from_args(args) -> Protocol:
  return get_protocol(args.protocol or "darts", preset=args.preset, **parse_overrides(cli.overrides(args)))


# ---------------------------------------------------------------------------------- summaries
def summarize_results(results: list[dict], metric: str = "final") -> list[dict]:
  """One row per genotype: mean/std (ddof 1) over its seeds that finished, of ``final_acc`` or
  ``best_acc``."""
  rows = {}
  for r in results:
    row = rows.setdefault(r["genotype_index"], {"genotype_index": r["genotype_index"], "genotype_hash": r["genotype_hash"],
                                               "genotype": r["genotype"], "params": r["params"], "seeds": [],
                                               "final": [], "best": [], "failed": []})
    row["seeds"].append(r["seed"])
    if r["status"] == "ok" and r["test_acc"]:
      row["final"].append(r["final_acc"])
      row["best"].append(r["best_acc"])
    else:
      row["failed"].append(f"seed {r['seed']}: {r['status']}")
  out = []
  for row in rows.values():
    for m in ("final", "best"):
      mean, std = metrics.mean_std(row[m]) if row[m] else (float("nan"), float("nan"))
      row[f"{m}_mean"], row[f"{m}_std"] = mean, std
    row["acc"] = row[f"{metric}_mean"]
    out.append(row)
  return out


def _fmt(mean, std):
  if mean != mean:
    return "-"
  return f"{mean:.2f}" + ("" if std != std else f" ± {std:.2f}")


def print_table(rows: list[dict], labels: list[str], file=None) -> None:
  file = file or sys.stdout
  print("| genotype | params | seeds | final acc % | best acc % | failed |", file=file)
  print("|---|---:|---|---:|---:|---|", file=file)
  for row, label in zip(rows, labels):
    print(f"| {label} | {row['params']:,} | {','.join(map(str, row['seeds']))} | {_fmt(row['final_mean'], row['final_std'])} "
          f"| {_fmt(row['best_mean'], row['best_std'])} | {'; '.join(row['failed']) or '-'} |", file=file)


# ---------------------------------------------------------------------------------------- main
def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("--genotype", action="append", required=True,
                      help="published name, genotype text, or genotype.json path (repeatable)")
  parser.add_argument("--method", default=None, help="label of the method in RI tables (default: the genotype label)")
  add_common_args(parser)
  args = parser.parse_args(argv)
  cli.setup_devices(args)
  cli.setup_compile_cache(args.compile_cache)
  try:
    named = [pair for spec in args.genotype for pair in resolve_genotypes(spec)]
    if args.protocol is None:  # a space's own protocol for its genotypes (ENAS, NAO, NSGA-Net), else DARTS's
      spaces = {getattr(g, "space", "darts") for _, g in named}
      args.protocol = spaces.pop() if len(spaces) == 1 and spaces != {"darts"} else "darts"
    seeds = parse_seeds(args.seeds)
    protocol = protocol_from_args(args)
  except ValueError as e:
    parser.error(str(e))
  labels = [label for label, _ in named]
  method = args.method or (labels[0] if len(labels) == 1 else "+".join(labels))
  out = args.out or default_out("evaluate", f"{method}-{protocol.name}-{args.preset}".replace("+", "p"))
  ds = load_data(args)
  validate_training([g for _, g in named], seeds, protocol, ds.train, ds.test, ds.num_classes,
                    devices=args.devices, parallel_mode=args.parallel)
  cli.prepare_out(out, resume=args.resume, overwrite=args.overwrite)
  meta = {"experiment": "evaluate", "method": method, "labels": labels, "dataset": ds.name, "preset": args.preset,
          "protocol_name": args.protocol}
  if not args.quiet:
    print(f"evaluate: {len(named)} genotype(s) x seeds {seeds}, protocol {protocol.name} ({args.preset}: "
          f"{protocol.layers} cells, C {protocol.C}, {protocol.epochs} epochs), {ds.name}, out {out}", file=sys.stderr)
  t0 = time.perf_counter()
  results = train_genotypes([g for _, g in named], seeds, protocol, ds.train, ds.test, num_classes=ds.num_classes,
                            out=out, resume=args.resume, quiet=args.quiet, devices=args.devices,
                            parallel_mode=args.parallel, eval_batch_size=args.eval_batch_size, mean=ds.mean,
                            std=ds.std, meta=meta, pack_size=args.pack_size,
                            share_program=args.share_program)
  wall = time.perf_counter() - t0
  rows = summarize_results(results)
  print_table(rows, labels)
  print(f"protocol {protocol.name} ({args.preset}), {ds.name}; mean ± std over seeds (ddof 1); wall {wall:.0f} s; "
        f"run dir {out}")
  rundir.note_written(out, "summary.json")
  checkpoint.atomic_write_json(os.path.join(out, "summary.json"), {
      "meta": meta, "protocol": protocol.to_dict(), "wall_s": round(wall, 1),
      "rows": [dict(r, label=l) for r, l in zip(rows, labels)]})
  if all(r["status"] != "ok" for r in results):
    raise SystemExit("evaluate: every run stopped at a non-finite loss (see the failed column); "
                     f"run directory {out}")
  return results


if __name__ == "__main__":
  cli.entry("evaluate", main)
