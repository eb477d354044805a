"""LHD's benchmark: methods x (datasets x discretisation policies) on the LHD cell space.

  python -m experiments.lhd_benchmark --methods darts,pcdarts,gdas,drnas,sp-darts,random --preset cpu \\
      --data-dir /data/cifar10 --seeds 0
  python -m experiments.lhd_benchmark --methods darts,milenas --datasets cifar10,cifar100,svhn --preset paper \\
      --data-dir cifar10=/data/c10 --data-dir cifar100=/data/c100 --data-dir svhn=/data/svhn --seeds 0..4

The protocol of Zhang and Ding (ICML 2023, "Rethink DARTS Search Space and Renovate a New
Benchmark"; chaoji90/LHD, ``search/train_search_all.sh`` and ``eval/<dataset>/train_*.sh``):

* each method searches the LHD space (``SearchConfig.space='lhd'``, ``jnas.search.spaces``) on a
  dataset, once per seed (LHD: 5 searches), with LHD's search settings (``LHD_SEARCH``: 50 epochs,
  batch 176, first order, alpha weight decay 0, and its per-method batch and learning rates);
  ``random`` is LHD's random baseline: alphas and output betas 0.1 N(0, 1), no training;
* the searched weights (joint softmaxes and output rows) are discretised by each policy (Base, 1M,
  3ops, 4out: ``jnas.lhd.discretize``), and each genotype is retrained and tested on the *same*
  dataset by protocol ``lhd`` (600 epochs, batch 64, cutout, auxiliary head, drop path 0.01 (0.02 on
  CIFAR-100/SVHN) per concat output; 1M: 25 cells and channels grown to 1.5 M parameters;
  ``jnas.lhd.eval_settings``);
* the conditions are dataset x policy: 12 for LHD's three datasets.

The table reports the mean (and spread over seeds) of the **final** test accuracy. LHD reports the
best test accuracy over its last third of epochs (epochs 401-599), a selection on the test set;
``results.json`` holds that number too (``lhd_best``), labelled as LHD's.

Presets: ``paper`` (the above) and ``cpu`` (2 CPU cores: each method's CPU search preset, 3 cells,
C=8, 3 epochs on 1,000 images; retraining C=8, 5 cells, 2 epochs on 2,000 images, tested on 1,000;
1M: 6 cells and a capacity scaled by (8/36)^2). Its numbers show the pipeline, not the methods.

Writes ``<out>/search/<dataset>/<method>/`` (search runs), ``<out>/eval/<dataset>/<policy>/<method>/
seed_<s>/`` (retraining runs), ``<out>/results.json`` and ``<out>/table.md``. A rerun with the same
``--out`` and ``--resume`` skips every search and retraining that has finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from experiments import cli

DATASETS = ("cifar10", "cifar100", "svhn")
POLICIES = ("base", "1m", "3ops", "4out")
DEFAULT_METHODS = ("darts", "pcdarts", "gdas", "drnas", "sp-darts", "random")

# LHD's search settings [LHD search/<method>/train_search_*.py]; '*' for every method
LHD_SEARCH = {
    "*": dict(epochs=50, C=16, layers=8, batch_size=176, train_portion=0.5, order="first", w_lr=0.025,
              w_lr_min=3e-4, a_lr=3e-4, a_weight_decay=0.0),
    "pcdarts": dict(batch_size=576, w_lr=0.1, w_lr_min=0.0, a_lr=6e-4),
    "gdas": dict(batch_size=256, w_lr=0.05),
    "sp-darts": dict(w_lr_min=0.025),
    "drnas": dict(progressive=False, ks=(1, 1)),  # (LHD's DrNAS: no progressive pruning, all channels)
    "gaea": dict(mix="softmax"), "gaea-erm": dict(mix="softmax"),  # (LHD's port softmaxes p)
}
# what the cpu preset keeps of LHD's settings (the sizes come from each method's CPU preset)
_CPU_KEEP = ("order", "a_weight_decay", "progressive", "ks", "mix")
PRESETS = {
    "paper": dict(subset=0, eval=dict(C=36, layers=20), eval_overrides={}, capacity_scale=1.0, capacity_layers=25),
    "cpu": dict(subset=1000, eval=dict(C=8, layers=5),
                eval_overrides=dict(epochs=2, train_images=2000, test_images=1000),
                capacity_scale=(8 / 36) ** 2, capacity_layers=6),
}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.lhd_benchmark", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                 help=f"comma-separated search methods, or 'random' (default {','.join(DEFAULT_METHODS)})")
  p.add_argument("--datasets", default="cifar10", help=f"comma-separated, of {', '.join(DATASETS)} (or digits, "
                 "offline) (default cifar10)")
  p.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}")
  p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
  p.add_argument("--seeds", type=cli.parse_seeds, default=None, help="search seeds (one retraining each; "
                 "default 0..4 for paper, 0 for cpu)")
  p.add_argument("--data-dir", action="append", default=[], metavar="[DATASET=]DIR",
                 help="the dataset's folder (repeatable, DATASET=DIR for several datasets)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a search setting for every method (e.g. --set epochs=10)")
  p.add_argument("--out", default=None, help="run directory (default runs/lhd_benchmark/<time>)")
  p.add_argument("--resume", action="store_true", help="continue the benchmark in --out")
  p.add_argument("--overwrite", action="store_true", help="replace the benchmark in --out")
  p.add_argument("--quiet", action="store_true", help="no progress lines")
  p.add_argument("--debug", action="store_true", help="show Python tracebacks (also JNAS_DEBUG=1)")
  return p


def _split_list(text: str, known, what: str, parser) -> list[str]:
  items = [t.strip() for t in text.split(",") if t.strip()]
  bad = [t for t in items if known is not None and t not in known]
  if bad or not items:
    parser.error(f"--{what}: unknown {bad or text!r}; use {', '.join(known)}")
  return items


def _data_dirs(items, datasets, parser) -> dict:
  out = {}
  for item in items:
    name, sep, path = item.partition("=")
    if sep:
      out[name] = path
    elif len(datasets) == 1:
      out[datasets[0]] = item
    else:
      parser.error(f"--data-dir {item}: with several datasets, say which: DATASET=DIR")
  return out


def search_config(name: str, preset: str, num_classes: int, sets: dict):
  """The method's LHD search config for ``preset`` (see ``LHD_SEARCH``)."""
  from jnas.search import METHODS, config_for
  from jnas.search.base import config_fields
  spec = METHODS[name]
  fields = config_fields(spec.config)
  lhd = {**LHD_SEARCH["*"], **LHD_SEARCH.get(name, {})}
  if preset == "cpu":
    lhd = {k: v for k, v in lhd.items() if k in _CPU_KEEP}
  kw = {k: v for k, v in {**lhd, **sets}.items() if k in fields}
  return config_for(spec, preset, space="lhd", num_classes=num_classes, **kw)


def _search(name, config, seeds, ds, subset, out, args):
  """Per seed the searched LHD weights (host numpy) of method ``name`` (its run in ``out``)."""
  import jax
  import jax.numpy as jnp
  import jnas.data as D
  from jnas import lhd
  from jnas.search import METHODS, run
  if name == "random":
    return {s: jax.device_get(lhd.search_weights(lhd.random_arch(jax.random.key(s)))) for s in seeds}, None
  done = os.path.exists(os.path.join(out, "results.json"))
  if done:
    res = run.load_search(out)
  else:
    train = ds.train if not subset else D.Split(ds.train.images[:subset], ds.train.labels[:subset])
    w, a = D.search_split(train, seed=2, portion=config.train_portion) if config.train_portion < 1 else (train, None)
    res = run.run_search(METHODS[name], config, seeds, w, a, out=out, resume=os.path.exists(out), quiet=args.quiet,
                         mean=ds.mean, std=ds.std, eval_images=500 if subset else None,
                         extra_config={"benchmark": "lhd", "dataset": ds.name})
  weights = {}
  for s in seeds:
    if res["arch"].get(s) is None or not res.get("alive", {}).get(s, True):
      continue
    arch = {k: jnp.asarray(res["arch"][s][k]) for k in ("normal", "reduce", "normal_output", "reduce_output")}
    weights[s] = jax.device_get(lhd.search_weights(arch, config.steps))
  return weights, res


def _lhd_best(test_acc: list, epochs: int):
  """LHD's reported metric: the best test accuracy over the epochs after the first 2/3 (401-599 of 600)."""
  tail = [a for e, a in enumerate(test_acc) if e > (2 * epochs) // 3]
  return max(tail) if tail else (test_acc[-1] if test_acc else float("nan"))


def main(argv=None) -> dict:
  parser = build_parser()
  args = parser.parse_args(argv)
  from jnas.search import METHODS
  methods = _split_list(args.methods, tuple(METHODS) + ("random",), "methods", parser)
  datasets = _split_list(args.datasets, DATASETS + ("digits",), "datasets", parser)
  policies = _split_list(args.policies, POLICIES, "policies", parser)
  if args.resume and args.overwrite:
    parser.error("--resume and --overwrite exclude each other")
  preset = PRESETS[args.preset]
  seeds = args.seeds or ([0, 1, 2, 3, 4] if args.preset == "paper" else [0])
  dirs = _data_dirs(args.data_dir, datasets, parser)
  from jnas import checkpoint, lhd
  from jnas import data as D
  from jnas import train as T
  from jnas.search import spaces
  from jnas.search.base import config_fields
  sets = {}
  for name in methods:  # every check before --out is touched
    if name == "random":
      continue
    try:
      sets_m = cli.typed_overrides(args.set, config_fields(METHODS[name].config), f"method {name!r}") if args.set else {}
      sets.update(sets_m)
      spaces.check_space(name, search_config(name, args.preset, 10, sets_m))
    except (ValueError, TypeError) as e:
      parser.error(f"{name}: {e}")
  out = args.out or os.path.join("runs", "lhd_benchmark", time.strftime("%Y%m%d-%H%M%S"))
  if os.path.exists(os.path.join(out, "benchmark.json")) and not (args.resume or args.overwrite):
    parser.error(f"{out} holds a benchmark; pass --resume to continue it or --overwrite to replace it")
  from jnas import rundir
  if args.overwrite and os.path.exists(out):
    rundir.remove_run(out)  # (what the benchmark wrote, by its manifest; a user's own files stay)
  os.makedirs(out, exist_ok=True)
  for name in ("benchmark.json", "search", "eval", "results.json", "table.md"):
    rundir.note_written(out, name)
  checkpoint.atomic_write_json(os.path.join(out, "benchmark.json"), {
      "methods": methods, "datasets": datasets, "policies": policies, "preset": args.preset, "seeds": seeds,
      "set": args.set})
  t0 = time.perf_counter()
  rows, walls = [], {}
  for dname in datasets:
    ds = cli.load_dataset(dname, dirs.get(dname), digits_size=32)
    protocol0 = T.get_protocol("lhd", "cpu" if args.preset == "cpu" else "paper", **preset["eval_overrides"])
    for name in methods:
      t_s = time.perf_counter()
      config = None if name == "random" else search_config(name, args.preset, ds.num_classes, sets)
      print(f"[lhd_benchmark] search {name} on {dname} (seeds {seeds})", file=sys.stderr)
      weights, _ = _search(name, config, seeds, ds, preset["subset"], os.path.join(out, "search", dname, name), args)
      walls[f"search/{dname}/{name}"] = round(time.perf_counter() - t_s, 1)
      for policy in policies:
        for s, w in weights.items():
          g = lhd.discretize(w, policy, config.primitives if config else lhd.PRIMITIVES)
          setting = lhd.eval_settings(g, policy, dname, num_classes=ds.num_classes, **preset["eval"],
                                      capacity=lhd.CAPACITY * preset["capacity_scale"],
                                      capacity_layers=preset["capacity_layers"])
          protocol = protocol0.replace(**setting)
          run_dir = os.path.join(out, "eval", dname, policy, name, f"seed_{s}")
          t_e = time.perf_counter()
          if os.path.exists(os.path.join(run_dir, "results.json")):
            with open(os.path.join(run_dir, "results.json")) as f:
              res = json.load(f)["results"][0]
          else:
            print(f"[lhd_benchmark] retrain {name} / {dname} / {policy} / seed {s}: {g}", file=sys.stderr)
            res = T.train_genotypes([g], [s], protocol, ds.train, ds.test, num_classes=ds.num_classes, out=run_dir,
                                    resume=os.path.exists(run_dir), quiet=args.quiet, mean=ds.mean, std=ds.std,
                                    meta={"benchmark": "lhd", "method": name, "dataset": dname, "policy": policy})[0]
          walls[f"eval/{dname}/{policy}/{name}/seed_{s}"] = round(time.perf_counter() - t_e, 1)
          rows.append({"method": name, "dataset": dname, "policy": policy, "seed": s, "genotype": g.to_dict(),
                       "final_acc": res["final_acc"], "lhd_best": _lhd_best(res["test_acc"], protocol.epochs),
                       "params": res["params"], "C": setting["C"], "layers": setting["layers"],
                       "drop_path_prob": setting["drop_path_prob"], "status": res["status"]})
  wall = time.perf_counter() - t0
  table = render_table(rows, methods, datasets, policies)
  checkpoint.atomic_write_json(os.path.join(out, "results.json"), {
      "preset": args.preset, "seeds": seeds, "wall_s": round(wall, 1), "walls_s": walls, "rows": rows})
  head = (f"LHD benchmark, preset `{args.preset}`, seeds {seeds}: final test accuracy (%) of the retrained "
          f"genotype, mean (± std over seeds). This invocation: {wall / 60:.1f} min"
          f"{' (a resumed run: finished parts were read back, not rerun)' if args.resume else ''}.\n\n")
  checkpoint.atomic_write_text(os.path.join(out, "table.md"), head + table + "\n")
  print(head + table)
  print(f"\nresults: {os.path.join(out, 'results.json')}; table: {os.path.join(out, 'table.md')}")
  return {"rows": rows, "wall_s": wall, "table": table}


def render_table(rows, methods, datasets, policies) -> str:
  """A markdown table, methods x (dataset / policy), of the mean (± std) final test accuracy."""
  import numpy as np
  conds = [(d, p) for d in datasets for p in policies]
  lines = ["| method | " + " | ".join(f"{d} {p}" for d, p in conds) + " |", "|---" * (len(conds) + 1) + "|"]
  for m in methods:
    cells = []
    for d, p in conds:
      accs = [r["final_acc"] for r in rows if (r["method"], r["dataset"], r["policy"]) == (m, d, p)
              and r["status"] == "ok"]
      if not accs:
        cells.append("-")
      elif len(accs) == 1:
        cells.append(f"{accs[0]:.2f}")
      else:
        cells.append(f"{np.mean(accs):.2f} ± {np.std(accs):.2f}")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.entry("lhd_benchmark", main)
