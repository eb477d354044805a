"""Shared plumbing of the paper's studies (Yang et al. 2020 §4-§5; paper_protocol.md §5-§8).

A study is a list of *units*: one random genotype trained under one setting (a protocol of the
ablation ladder, a number of cells, an op set) for a few seeds. This module holds what every study
needs around ``jnas.train.train_genotypes``, so the study modules stay short:

* ``parse_args`` / ``make_config``: ``--preset cpu|paper|test`` plus overrides; an unknown key is an
  error;
* ``load_data``: CIFAR-10 from a local folder, sklearn digits or generated images;
* ``sample_genotypes``: the seeded sampler, written to ``genotypes.json`` before any training;
* ``train_units``: one ``train_genotypes`` call per batch of units of one setting (``unit_batches``:
  up to ``pack_size`` genotypes, packed into one program) into ``<out>/train/<group>/<i>/`` (or
  ``<first>-<last>/``); a finished unit leaves ``<i>.json`` beside it and is skipped by ``--resume``;
  genotypes x seeds per hour go to the log and to ``metrics.jsonl``;
* tables in Markdown, accuracy vectors (final epoch and best epoch), figures with the Agg backend.

A run directory of a study::

  config.json  genotypes.json  metrics.jsonl (one line per unit)  train/<group>/<i>/ (+ <i>.json)
  results.json (every record)  table.md  headline.json  *.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import jnas
from jnas import checkpoint, rundir
from jnas.genotype import Genotype
from jnas.rundir import RunDir

# ------------------------------------------------------------------------------------------ paper
# The paper's numbers beside which each study prints ours (paper_protocol.md, section cited).
PAPER: dict[str, Any] = {
    "tricks_ablation": {
        "source": "Yang et al. §4, Fig. 3 (paper_protocol.md §5): 8 random archs, mean ± std (ddof 1), min, max",
        "rows": {
            "base": (94.96, 0.31, 94.55, 95.50),
            "A": (95.04, 0.32, 94.43, 95.37),
            "D": (95.93, 0.28, 95.52, 96.42),
            "C": (96.39, 0.23, 96.04, 96.68),
            "C+D": (96.84, 0.24, 96.44, 97.19),
            "C+D+A": (97.00, 0.19, 96.66, 97.17),
            "+50C": (97.24, 0.12, 97.07, 97.40),
            "+AA": (97.31, 0.29, 96.80, 97.63),
            "+1500E": (97.65, 0.22, 97.36, 98.01),
            "all": (97.87, 0.22, 97.45, 98.15),
        },
    },
    "seed_ranking": {
        "source": "Yang et al. §5.3 (paper_protocol.md §6): 32 archs x 2 seeds, DARTS protocol",
        "n": 32, "kendall_tau": 0.48, "mean_abs_delta": 0.13, "std_abs_delta": 0.08, "max_abs_delta": 0.39,
        # tau(acc at epoch e, final acc) over 214 archs x 600 epochs, raw and moving average w=20 (§6 / Fig. 5)
        "epoch_fraction": (50 / 600, 100 / 600, 200 / 600, 300 / 600, 400 / 600, 500 / 600, 550 / 600, 580 / 600),
        "epoch_tau": (0.28, 0.27, 0.31, 0.37, 0.48, 0.63, 0.78, 0.85),
        "epoch_tau_ma": (0.30, 0.35, 0.43, 0.49, 0.59, 0.74, 0.82, 0.88),
    },
    "depth_gap": {
        "source": "Yang et al. §5.3 (paper_protocol.md §8): 32 archs at 8 and 20 cells",
        "n": 32, "kendall_tau": 0.54, "max_rank_shift": 18, "max_rank_shift_tie_avg": 18.5,
        "mean_rank_shift": 5.1, "mean_acc": {8: 96.52, 20: 96.93},
    },
    "cell_count": {
        "source": "Yang et al. §5.3, Fig. 7 (paper_protocol.md §8): 16 archs, best-epoch acc, mean ± std (ddof 0), max",
        "rows": {4: (95.67, 0.55, 96.26), 6: (96.51, 0.19, 96.78), 8: (96.69, 0.25, 97.13),
                 12: (96.93, 0.13, 97.12), 16: (96.98, 0.12, 97.23), 20: (96.99, 0.24, 97.38),
                 24: (97.01, 0.23, 97.41)},
    },
    "macro_micro": {
        "source": "Yang et al. §5.2, Fig. 6 (paper_protocol.md §7): best-epoch acc, mean ± std",
        "rows": {"darts": (214, 97.03, 0.23, 96.18, 97.56), "modified": (56, 96.85, 0.29, 96.07, 97.42)},
        "shift": -0.18,
    },
}


# -------------------------------------------------------------------------------------- training
def _train_module():
  """``jnas.train`` (imported late so this module loads, and its tests collect, without it)."""
  try:
    from jnas import train
  except ImportError as e:  # pragma: no cover - only while jnas.train is missing
    raise ImportError(f"the studies need jnas.train (train_genotypes, get_protocol): {e}") from e
  return train


def train_genotypes(*args, **kwargs):
  """``jnas.train.train_genotypes`` (a module attribute, so tests can swap in a stand-in)."""
  return _train_module().train_genotypes(*args, **kwargs)


def get_protocol(name: str, **overrides):
  return _train_module().get_protocol(name, **overrides)


def protocol_dict(p) -> dict:
  return dataclasses.asdict(p) if dataclasses.is_dataclass(p) else dict(p)


def scaled_protocol(name: str, scale: dict | None = None, **overrides):
  """The protocol ``name`` (``jnas.train.PROTOCOLS``), scaled for a small run, then ``overrides``.

  ``scale=None`` keeps the paper's settings. Otherwise ``jnas.train.cpu_preset`` maps the DARTS
  protocol's 600 epochs and 36 channels to ``scale['epochs']`` and ``scale['C']`` keeping each
  protocol's ratio to them ('+1500E' trains 2.5x longer, '+50C' is 50/36 wider), sets ``layers`` and
  the ``train_images`` / ``test_images`` subset; any other key of ``scale`` (``batch_size``, ...)
  replaces the protocol's value as it is.
  """
  train = _train_module()
  p = get_protocol(name)
  if scale:
    sized = {k: v for k, v in scale.items() if k in ("epochs", "C", "layers", "train_images", "test_images")}
    rest = {k: v for k, v in scale.items() if k not in sized}
    p = train.cpu_preset(p, **sized).replace(**rest)
  return p.replace(**overrides) if overrides else p


# ------------------------------------------------------------------------------------------ config
COMMON_DEFAULTS = dict(
    data="cifar10",          # 'cifar10' | 'digits' | 'synthetic'
    data_dir=None,           # cifar10: the folder holding cifar-10-batches-py (--data-dir DIR)
    image_size=32,           # digits/synthetic only
    sample_seed=0,           # seeds the genotype sampler
    seeds=(2,),              # training seeds (NAS-Benchmark's augment default is 2)
    scale=None,              # see scaled_protocol (epochs, C, layers, train_images, test_images,
                             # batch_size); None = the paper's settings
    eval_batch_size=500,
    pack_size=None,          # genotypes of one setting trained in one program (jnas.packed); None =
                             # jnas.train.default_pack_size(), 1 = one program per genotype
)


def parse_args(argv: Sequence[str] | None, description: str, presets: dict[str, dict],
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
  """Command line of a study: --preset, --out, --resume/--overwrite, --quiet, --set KEY=VALUE."""
  ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", choices=sorted(presets), default="cpu",
                  help="settings: 'cpu' = small nets on a CIFAR-10 subset, 'paper' = the paper's, 'test' = seconds")
  ap.add_argument("--out", default=None, help="run directory (default runs/studies/<study>-<preset>)")
  ap.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished units")
  ap.add_argument("--overwrite", action="store_true", help="replace the run in --out")
  ap.add_argument("--quiet", action="store_true", help="print only the table")
  ap.add_argument("--debug", action="store_true", help="show Python tracebacks (also JNAS_DEBUG=1)")
  from experiments import cli
  cli.add_device_args(ap)
  ap.add_argument("--data-dir", default=None, help="CIFAR-10 folder (same as --set data_dir=DIR)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="override a preset value (JSON value; e.g. --set n=8 --set seeds=[0,1])")
  if extra is not None:
    extra(ap)
  args = ap.parse_args(argv)
  if args.resume and args.overwrite:
    ap.error("--resume and --overwrite exclude each other")
  return args


def make_config(study: str, presets: dict[str, dict], preset: str, sets: Sequence[str] = ()) -> dict:
  """The preset's settings with ``KEY=VALUE`` overrides; unknown keys raise ``ValueError``."""
  if preset not in presets:
    raise ValueError(f"{study}: unknown preset {preset!r}; known: {', '.join(sorted(presets))}")
  cfg = {**COMMON_DEFAULTS, **presets[preset]}
  for item in sets:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    if key not in cfg:
      raise ValueError(f"{study}: unknown setting {key!r}; known: {', '.join(sorted(cfg))}")
    try:
      cfg[key] = json.loads(value)
    except json.JSONDecodeError:
      cfg[key] = value  # a bare string, e.g. --set data=digits
  cfg["study"], cfg["preset"] = study, preset
  cfg["seeds"] = [int(s) for s in cfg["seeds"]]
  if not cfg["seeds"]:
    raise ValueError("seeds must not be empty")
  return cfg


# -------------------------------------------------------------------------------------------- data
def synthetic_dataset(n_train: int = 256, n_test: int = 128, size: int = 32, num_classes: int = 4, seed: int = 0):
  """Generated images: class k is a noisy image with a bright k-th horizontal band (learnable in one epoch)."""
  rng = np.random.default_rng(seed)

  def make(n):
    y = rng.integers(0, num_classes, n)
    x = rng.normal(100, 30, (n, size, size, 3))
    band = size // num_classes
    for k in range(num_classes):
      x[y == k, k * band:(k + 1) * band] += 100
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int32)

  (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
  return jnas.data.make_dataset(xtr, ytr, xte, yte, name="synthetic", num_classes=num_classes)


def load_data(cfg: dict):
  """(train Split, test Split, Dataset) for the config's data (subsets: the protocol's
  ``train_images`` / ``test_images``, drawn by ``train_genotypes``)."""
  check_data(cfg)
  name = cfg["data"]
  if name == "cifar10":
    ds = jnas.data.load_dataset("cifar10", cfg["data_dir"])
  elif name == "digits":
    ds = jnas.data.load_digits(size=cfg["image_size"], channels=3)
  else:
    ds = synthetic_dataset(size=cfg["image_size"])
  return ds.train, ds.test, ds


# --------------------------------------------------------------------------------------- genotypes
def sample_genotypes(cfg: dict, n: int, *, primitives=jnas.space.PRIMITIVES, stream: int = 0) -> list[Genotype]:
  """``n`` genotypes from the paper's sampler, key = fold_in(key(sample_seed), stream)."""
  import jax
  if n < 1:
    raise ValueError(f"the number of genotypes must be >= 1, got {n}")
  key = jax.random.fold_in(jax.random.key(int(cfg["sample_seed"])), stream)
  return jnas.random_genotypes(key, n, primitives=tuple(primitives))


def write_genotypes(run: RunDir, sets: dict[str, list[Genotype]]) -> None:
  """Writes ``genotypes.json`` ({set name: [genotype JSON, ...]}); on resume checks it is unchanged."""
  doc = {name: [g.to_dict() for g in gs] for name, gs in sets.items()}
  path = run.file("genotypes.json")
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    if stored != json.loads(json.dumps(doc)):
      raise ValueError(f"{path} holds other genotypes than this config samples; use --overwrite or another --out")
    return
  run.write_json("genotypes.json", doc)


def read_genotypes(out: str) -> dict[str, list[Genotype]]:
  with open(os.path.join(out, "genotypes.json")) as f:
    return {k: [Genotype.from_dict(d) for d in v] for k, v in json.load(f).items()}


# ------------------------------------------------------------------------------------------- units
@dataclasses.dataclass(frozen=True)
class Unit:
  """One genotype under one setting: ``group`` names the setting (protocol, cell count, op set)."""
  group: str
  index: int
  genotype: Genotype
  protocol: Any


def slug(name: str) -> str:
  """A file-name form of a group name ('C+D+A' -> 'C+D+A', 'L 8' -> 'L_8')."""
  return re.sub(r"[^A-Za-z0-9+._-]+", "_", str(name)).strip("_") or "_"


def open_run(cfg: dict, out: str, *, resume: bool, overwrite: bool) -> RunDir:
  """The study's RunDir. ``--overwrite`` removes what the old study wrote (its manifest: the units'
  training runs, tables, figures), nothing else in the folder."""
  return RunDir(out, cfg, resume=resume, overwrite=overwrite, resume_may_change=("data_dir", "devices", "parallel",
                                                                               "pack_size"))


def check_data(cfg: dict) -> None:
  """The data checks that need no loading (a missing CIFAR-10 folder), before the run directory."""
  if cfg.get("data") == "cifar10":
    d = cfg.get("data_dir")
    from experiments.cli import DATA_HELP
    if d is None or not os.path.isdir(d):
      where = "no --data-dir given" if d is None else f"--data-dir {d}: no such folder"
      raise FileNotFoundError(f"CIFAR-10 not found ({where}): {DATA_HELP['cifar10']}")
    if not os.listdir(d):
      raise FileNotFoundError(f"CIFAR-10 not found (--data-dir {d} is empty): {DATA_HELP['cifar10']}")
  elif cfg.get("data") not in ("digits", "synthetic"):
    raise ValueError(f"unknown data {cfg.get('data')!r}; use cifar10, digits or synthetic (--set data=...)")


def unit_batches(units: Sequence[Unit], pack_size: int | None) -> list[list[int]]:
  """Positions of ``units`` grouped for one ``train_genotypes`` call each: consecutive units of one
  group and protocol whose genotypes can share a pack (``jnas.packed.shape_key``), at most
  ``pack_size`` (None: ``jnas.train.default_pack_size()``) per call. Depends only on the list, so a
  resumed study forms the same batches."""
  from jnas.packed import shape_key
  size = _train_module().default_pack_size() if pack_size is None else int(pack_size)
  if size < 1:
    raise ValueError(f"pack_size must be >= 1, got {size}")
  batches: list[list[int]] = []
  for k, u in enumerate(units):
    if batches:
      last = units[batches[-1][-1]]
      if (len(batches[-1]) < size and last.group == u.group and last.protocol == u.protocol
              and shape_key(last.genotype) == shape_key(u.genotype)):
        batches[-1].append(k)
        continue
    batches.append([k])
  return batches


def train_units(run: RunDir, units: Sequence[Unit], cfg: dict, data, *, resume: bool, quiet: bool) -> list[dict]:
  """Trains every unit (skipping finished ones on resume) and returns all records, unit by unit.

  Units of one setting train together: each batch of ``unit_batches`` is one
  ``train_genotypes([genotypes], seeds, protocol, ...)`` call, its genotypes packed into one program
  and every genotype's seeds vmapped, into ``train/<group>/<i>/`` (one unit) or
  ``train/<group>/<first>-<last>/`` (several). Each unit's records go to ``train/<group>/<i>.json``
  when its batch finishes; a killed study loses at most the batch in progress, which itself resumes
  from its checkpoints. Records get the study's ``group`` and genotype ``index``.
  """
  train, test, ds = data
  seeds = list(cfg["seeds"])
  done_runs = 0
  t0 = time.perf_counter()
  by_unit: dict[int, list[dict]] = {}
  batches = unit_batches(units, cfg.get("pack_size"))
  for b, batch in enumerate(batches):
    us = [units[k] for k in batch]
    folder = os.path.join("train", slug(us[0].group))
    results = [run.file(os.path.join(folder, f"{u.index:03d}")) + ".json" for u in us]
    if all(os.path.exists(r) for r in results):  # finished in an earlier session (a fresh run has none)
      for k, r in zip(batch, results):
        with open(r) as f:
          by_unit[k] = json.load(f)
      continue
    name = f"{us[0].index:03d}" if len(us) == 1 else f"{us[0].index:03d}-{us[-1].index:03d}"
    path = run.file(os.path.join(folder, name))
    t = time.perf_counter()
    kwargs = {} if cfg.get("pack_size") is None else {"pack_size": int(cfg["pack_size"])}
    recs = train_genotypes([u.genotype for u in us], seeds, us[0].protocol, train, test, num_classes=ds.num_classes,
                           out=path, resume=resume and rundir.holds_run(path), quiet=quiet,
                           eval_batch_size=cfg["eval_batch_size"], devices=cfg.get("devices"),
                           parallel_mode=cfg.get("parallel", "seeds"), **kwargs)
    wall = time.perf_counter() - t
    # No later batch reuses this batch's compiled programs: free them. (With jnas.train's cache of 32
    # programs, the 19th program of tricks_ablation's cpu run failed to compile: "LLVM ERROR: Unable
    # to allocate section memory".)
    programs = getattr(_train_module(), "programs", None)
    if hasattr(programs, "cache_clear"):
      programs.cache_clear()
    for j, (k, u, result) in enumerate(zip(batch, us, results)):
      mine = [dict(r, group=u.group, index=u.index, genotype_index=u.index) for r in recs if r["genotype_index"] == j]
      checkpoint.atomic_write_json(result, mine)
      by_unit[k] = mine
      done_runs += len(mine)
      rate = done_runs / max(time.perf_counter() - t0, 1e-9) * 3600
      bad = [r["status"] for r in mine if r.get("status", "ok") != "ok"]
      run.log({"event": "unit", "unit": k, "group": u.group, "index": u.index, "seeds": seeds, "wall_s": wall,
               "batch": b, "batch_size": len(us), "runs_per_hour": rate,
               "final_acc": [r["final_acc"] for r in mine], "status": bad or "ok"})
      if not quiet:
        accs = ", ".join(f"{r['final_acc']:.2f}" for r in mine)
        shared = f"{wall:.0f} s for {len(us)} genotypes" if len(us) > 1 else f"{wall:.0f} s"
        print(f"[{run.config['study']}] unit {k + 1}/{len(units)} {u.group} #{u.index}: final acc {accs} "
              f"({shared}; {rate:.1f} genotypes x seeds per hour){' ' + str(bad) if bad else ''}",
              file=sys.stderr, flush=True)
  records = [r for k in range(len(units)) for r in by_unit[k]]
  run.write_json("results.json", records)
  return records


def study_main(study: str, argv, presets: dict, description: str, run_fn: Callable, analyze_fn: Callable,
               default_out: str | None = None) -> dict:
  """The ``main`` of a study module: parse, open the run dir, train, analyse, print the table."""
  args = parse_args(argv, description, presets)
  cfg = make_config(study, presets, args.preset, list(args.set) + ([f"data_dir={args.data_dir}"] if args.data_dir else []))
  out = args.out or default_out or os.path.join("runs", "studies", f"{study}-{args.preset}")
  from experiments import cli
  cli.setup_devices(args)
  cfg = dict(cfg, devices=args.devices, parallel=args.parallel)
  check_data(cfg)
  run = open_run(cfg, out, resume=args.resume, overwrite=args.overwrite)
  t0 = time.perf_counter()
  try:
    run_fn(run, cfg, resume=args.resume, quiet=args.quiet)
  except _train_module().TrainingInterrupted as e:
    print(f"[{study}] {e}\n[{study}] finished units are kept; continue with --resume --out {out}", file=sys.stderr)
    raise SystemExit(e.exit_code) from None
  run.log({"event": "done", "wall_s": time.perf_counter() - t0})
  headline = analyze_fn(out)
  with open(os.path.join(out, "table.md")) as f:
    print(f.read())
  return headline


# ------------------------------------------------------------------------------------------ reading
def load_records(out: str) -> list[dict]:
  """Every record of a study run: results.json, or the finished units' files of a partial run."""
  p = os.path.join(out, "results.json")
  if os.path.exists(p):
    with open(p) as f:
      return json.load(f)
  recs = []
  root = os.path.join(out, "train")
  for group in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    for name in sorted(os.listdir(os.path.join(root, group))):
      if name.endswith(".json"):
        with open(os.path.join(root, group, name)) as f:
          recs.extend(json.load(f))
  return recs


def read_json(out: str, name: str):
  with open(os.path.join(out, name)) as f:
    return json.load(f)


def read_config(out: str) -> dict:
  return read_json(out, "config.json")


def wall_time(out: str) -> float:
  """Seconds spent training the units (summed over sessions of a resumed run)."""
  p = os.path.join(out, "metrics.jsonl")
  if not os.path.exists(p):
    return float("nan")
  return float(sum(r.get("wall_s", 0.0) for r in checkpoint.read_jsonl(p) if r.get("event") == "unit"))


def ok(records: list[dict]) -> list[dict]:
  return [r for r in records if r.get("status", "ok") == "ok"]


def accuracy(records: list[dict], group: str, n: int, seed: int | None = None, which: str = "final",
             average_seeds: bool = False) -> np.ndarray:
  """Accuracy of genotypes 0..n-1 in ``group``: ``which`` = 'final' (last epoch) or 'best' (max over
  epochs). One seed (default: the first one found), or the mean over seeds. NaN where missing/failed."""
  if which not in ("final", "best"):
    raise ValueError(f"which must be 'final' or 'best', got {which!r}")
  out = np.full(n, np.nan)
  by_index: dict[int, list[dict]] = {}
  for r in ok(records):
    if r["group"] == group and (seed is None or r["seed"] == seed):
      by_index.setdefault(int(r["index"]), []).append(r)
  for i, rs in by_index.items():
    if i < n:
      vals = [r[f"{which}_acc"] for r in rs]
      out[i] = float(np.mean(vals)) if average_seeds else vals[0]
  return out


def curves(records: list[dict], group: str, n: int, seed: int) -> np.ndarray:
  """(n, epochs) per-epoch test accuracy of genotypes 0..n-1 for one seed (NaN rows where missing)."""
  rs = {int(r["index"]): r["test_acc"] for r in ok(records) if r["group"] == group and r["seed"] == seed}
  epochs = max((len(c) for c in rs.values()), default=0)
  out = np.full((n, epochs), np.nan)
  for i, c in rs.items():
    if i < n:
      out[i, :len(c)] = c
  return out


def summarize(values) -> dict | None:
  """mean, std (ddof 1), std0 (ddof 0), min, max, n of the finite values; None if there are none."""
  v = np.asarray(values, dtype=float)
  v = v[np.isfinite(v)]
  if v.size == 0:
    return None
  s = jnas.metrics.summarize(v, ddof=1)
  s["std0"] = float(np.std(v))
  return s


# ------------------------------------------------------------------------------------------ tables
def fmt(x, digits: int = 2) -> str:
  if x is None or (isinstance(x, float) and not np.isfinite(x)):
    return "–"
  return f"{x:.{digits}f}"


def pm(mean, std, digits: int = 2) -> str:
  return f"{fmt(mean, digits)} ± {fmt(std, digits)}" if std is not None and np.isfinite(std) else fmt(mean, digits)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub Markdown table."""
  lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def settings_line(cfg: dict, protocol: dict | None = None) -> str:
  """One line saying at what scale a study ran (for its table and the summary)."""
  parts = [f"preset `{cfg['preset']}`", f"data {cfg['data']}"]
  if protocol:
    parts.append(f"{protocol.get('train_images') or 'all'} train / {protocol.get('test_images') or 'all'} test images")
    parts.append(f"{protocol['epochs']} epochs, C={protocol['C']}, {protocol['layers']} cells, batch {protocol['batch_size']}")
  parts.append(f"seeds {cfg['seeds']}, sampler seed {cfg['sample_seed']}")
  return "; ".join(parts)


def write_report(out: str, title: str, body: str, headline: dict) -> dict:
  """Writes ``table.md`` (title + body) and ``headline.json`` atomically; returns ``headline``."""
  rundir.note_written(out, "table.md")
  checkpoint.atomic_write_text(os.path.join(out, "table.md"), f"## {title}\n\n{body}")
  rundir.note_written(out, "headline.json")
  checkpoint.atomic_write_json(os.path.join(out, "headline.json"), headline)
  return headline


# ----------------------------------------------------------------------------------------- figures
def pyplot():
  """matplotlib.pyplot with the Agg backend, or None (with a message) if matplotlib is missing."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no figures (pip install 'jnas[plots]')", file=sys.stderr)
    return None
  return plt


def save_figure(fig, out: str, name: str) -> str:
  """Saves ``fig`` as ``<out>/<name>`` (PNG, written to a temporary file then renamed)."""
  path = os.path.join(out, name)
  rundir.note_written(out, name)
  tmp = path + ".tmp.png"
  fig.tight_layout()
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)
  import matplotlib.pyplot as plt
  plt.close(fig)
  return path
