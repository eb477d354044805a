"""Architecture search with any registered method, many seeds in one compiled job.

  python -m experiments.darts_cifar --list-methods
  python -m experiments.darts_cifar --method darts --preset cpu --data-dir ~/data/cifar10 --seeds 0,1
  python -m experiments.darts_cifar --method pcdarts --preset paper --data-dir ~/data/cifar10 --seeds 0..3
  python -m experiments.darts_cifar --method gdas --dataset digits --preset cpu --epochs 2   # offline

Writes a run directory (default ``runs/search/<method>-<dataset>-<time>``): config.json,
metrics.jsonl (per stage, epoch and seed), stages.json, checkpoints/, and per seed
``seed_<s>/genotype.json`` and ``arch.npz``; ``--resume --out DIR`` continues a stopped run
(Ctrl-C or SIGTERM checkpoints at the step it arrives and exits with 130 / 143). Read it back
with ``jnas.search.load_search(DIR)``.

Presets (flags and ``--set`` override them):
  paper: the method's defaults, from its authors' code (``--list-methods``; e.g. DARTS: 50 epochs,
         C=16, 8 cells, batch 64, the 50k training images split 25k/25k, second order).
  cpu:   sized for 2 CPU cores: 1,000 training images (500/500), 3 cells, C=8, batch 32,
         3 epochs (a stage), first order. It shows the job end to end; the genotype means little.

Method settings: ``--set KEY=VALUE`` with the fields of the method's config (``--list-methods
--method NAME`` prints them with their defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from experiments import cli

DATA_PRESETS = {"paper": dict(subset=0, eval_images=None), "cpu": dict(subset=1000, eval_images=500)}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.darts_cifar", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--method", default=None, help="search method (default darts; --list-methods)")
  p.add_argument("--list-methods", action="store_true", help="print the methods (with --method: its settings)")
  p.add_argument("--preset", choices=sorted(DATA_PRESETS), default="paper")
  cli.add_run_args(p, set_help="a method setting, e.g. --set order=first (repeatable; --list-methods --method M)")
  p.add_argument("--order", choices=["first", "second", "second-fd"], default=None,
                 help="arch-gradient estimator of bilevel methods (= --set order=...)")
  p.add_argument("--subset", type=int, default=-1, help="use the first N training images (0 = all)")
  p.add_argument("--split-seed", type=int, default=2, help="seed of the weights/architecture split "
                 "(-1: first/second part, as quark0)")
  p.add_argument("--eval-images", type=int, default=-1, help="eval-mode validation images per epoch (0: none)")
  p.add_argument("--seed-batching", choices=["auto", "vmap", "loop"], default="auto",
                 help="seeds in one vmapped program or one program per seed (auto: per seed for single-path "
                      "methods such as GDAS, else vmapped)")
  p.add_argument("--seed-lr-scale", action="append", default=[], metavar="SEED=FACTOR",
                 help="multiply one seed's weight learning rate by FACTOR (repeatable): per-seed learning rates "
                      "in one compiled job")
  p.add_argument("--monitor", action="append", default=[], choices=["hessian"],  # jnas.search.run.MONITORS
                 help="per-epoch diagnostics in metrics.jsonl (repeatable): hessian = the extreme eigenvalues of "
                      "the alpha Hessian of the loss on the epoch's last architecture batch (R-DARTS); "
                      "edge_entropy and skip_share are always logged")
  p.add_argument("--hessian-iters", type=int, default=20, help="Lanczos steps of --monitor hessian (20)")
  p.add_argument("--hessian-hvp", choices=["fd", "exact"], default="fd",
                 help="Hessian-vector products of --monitor hessian: fd (two gradients, one backward's memory) or "
                      "exact (reverse over reverse; far more memory)")
  p.add_argument("--select", choices=["method", "pt"], default=None,
                 help="how the genotype is chosen from the final supernet: method = the method's own rule, pt = "
                      "DARTS-PT's perturbation-based selection with fine-tuning, after any method (default: the "
                      "method's; pt for darts-pt)")
  p.add_argument("--pt-set", action="append", default=[], metavar="KEY=VALUE",
                 help="a DARTS-PT selection setting (jnas.search.projection.PTConfig), e.g. --pt-set proj_intv=1")
  return p


def _pt_config(args, config):
  """``--pt-set`` items over DARTS-PT's defaults (the search's batch size); None without them."""
  if not args.pt_set:
    return None
  from jnas.search import base, projection
  fields = base.config_fields(projection.PTConfig)
  values = cli.typed_overrides(args.pt_set, fields, "DARTS-PT's selection (--pt-set)")
  return projection.PTConfig(**{"batch_size": config.batch_size, **values})


def list_methods(method: str | None, file=None) -> None:
  """All methods, one line each; with ``method``, that method's settings and defaults."""
  from jnas.search import METHODS
  file = file or sys.stdout
  from jnas.search.base import config_fields
  if method:
    spec = METHODS[method]
    print(f"{spec.name}: {spec.paper}\n  {spec.changes}\n\nsettings (--set KEY=VALUE; default = the authors' code):",
          file=file)
    cpu = spec.preset("cpu")
    for k, v in config_fields(spec.config).items():
      print(f"  {k:18} {v!r}" + (f"   (cpu preset: {cpu[k]!r})" if k in cpu else ""), file=file)
    return
  width = max(len(n) for n in METHODS)
  for name, spec in METHODS.items():
    print(f"{name:{width}}  {spec.changes}  [{spec.paper}]", file=file)


def main(argv=None) -> dict:
  parser = build_parser()
  args = parser.parse_args(argv)
  from jnas.search import METHODS
  if args.method is not None and args.method not in METHODS:
    parser.error(f"unknown method {args.method!r}; known: {', '.join(METHODS)} (--list-methods)")
  if args.list_methods:
    list_methods(args.method)
    return {}
  args.method = args.method or "darts"
  if args.resume and not args.out:
    parser.error("--resume needs --out (the run directory to continue)")
  if args.resume and args.overwrite:
    parser.error("--resume and --overwrite exclude each other")
  cli.setup_devices(args)
  cli.setup_compile_cache(args.compile_cache)
  from jnas import data as D
  from jnas.search import config_for, run
  from jnas.search.base import config_fields

  spec = METHODS[args.method]
  items = cli.overrides(args) + ([f"order={args.order}"] if args.order else [])
  try:
    kw = cli.typed_overrides(items, config_fields(spec.config), f"method {spec.name!r}")
    config = config_for(spec, args.preset, **kw)
  except (ValueError, TypeError) as e:
    parser.error(str(e))
  data = DATA_PRESETS[args.preset]
  subset = data["subset"] if args.subset == -1 else args.subset
  eval_images = data["eval_images"] if args.eval_images == -1 else args.eval_images
  seeds = args.seeds or [2]
  seed_lr_scale = {}
  for item in args.seed_lr_scale:
    k, sep, v = item.partition("=")
    try:
      seed_lr_scale[int(k)] = float(v)
    except ValueError:
      parser.error(f"--seed-lr-scale expects SEED=FACTOR, e.g. 3=0.5; got {item!r}")
    if not sep or int(k) not in seeds:
      parser.error(f"--seed-lr-scale {item}: seed {k} is not among --seeds {seeds}")
  ds = cli.load_dataset(args.dataset, args.data_dir, digits_size=16)
  config = dataclasses.replace(config, num_classes=ds.num_classes)
  train = ds.train
  if subset:
    train = D.Split(train.images[:subset], train.labels[:subset])
  if config.train_portion >= 1.0:
    w, a = train, None
  elif args.split_seed < 0:
    w, a = D.search_split(train, portion=config.train_portion, shuffle=False)
  else:
    w, a = D.search_split(train, seed=args.split_seed, portion=config.train_portion)
  out = args.out or os.path.join("runs", "search", f"{spec.name}-{os.path.basename(str(args.dataset))}-"
                                 f"{time.strftime('%Y%m%d-%H%M%S')}")
  if spec.name == "nsganet":  # no supernet: a GA over candidates trained from scratch
    return _nsganet(args, config, seeds, w, a, ds, out)
  # everything that can be checked is checked before --out is touched
  run.validate_search(spec, config, w, a, seeds, devices=args.devices, parallel_mode=args.parallel,
                      seed_batching=args.seed_batching)
  cli.prepare_out(out, resume=args.resume, overwrite=args.overwrite)
  print(f"{spec.name} search on {ds.name}: {len(w.labels)} + {0 if a is None else len(a.labels)} images, "
        f"C={config.C}, {config.layers} cells, {config.epochs} epochs, batch {config.batch_size}, "
        f"seeds {seeds} -> {out}", file=sys.stderr)
  t0 = time.perf_counter()
  result = run.run_search(spec, config, seeds, w, a, out=out, resume=args.resume, overwrite=args.overwrite,
                          quiet=args.quiet, mean=ds.mean, std=ds.std, seed_batching=args.seed_batching,
                          eval_images=eval_images, seed_lr_scale=seed_lr_scale or None,
                          devices=args.devices, parallel_mode=args.parallel, monitor=tuple(args.monitor),
                          hessian_iters=args.hessian_iters, hessian_hvp=args.hessian_hvp,
                          selection=args.select, pt_config=_pt_config(args, config),
                          extra_config={"dataset": args.dataset, "subset": subset, "split_seed": args.split_seed,
                                        "preset": args.preset})
  wall = time.perf_counter() - t0
  print(f"\nsearch finished in {wall / 60:.1f} min; run directory {out}")
  from experiments.search_traces import plot_traces
  figure = plot_traces(out)
  if figure:
    print(f"per-epoch traces (eigenvalue, entropy, skip share): {figure}")
  for seed, g in result["genotypes"].items():
    last = [r for r in result["history"] if r["seed"] == seed][-1:]
    last = last[0] if last else {}
    if not result["alive"][seed]:
      print(f"seed {seed}: stopped by a non-finite loss (no genotype.json; its last finite genotype is in "
            f"results.json)")
      continue
    acc = last.get("eval_acc") if last.get("eval_acc") is not None else last.get("train_acc")
    what = "eval acc (eval-mode, validation split)" if last.get("eval_acc") is not None else "train acc"
    print(f"seed {seed}: {what} {acc:.2f}%\n  {g}" if acc is not None else f"seed {seed}:\n  {g}")
  alive = [s for s in result["alive"] if result["alive"][s]]
  if not alive:
    raise SystemExit(f"darts_cifar: every seed stopped at a non-finite loss; lower the learning rate "
                     f"(--set w_lr=...) or check the data. Run directory: {out}")
  data_flag = f" --dataset {args.dataset}" + (f" --data-dir {args.data_dir}" if args.data_dir else "")
  print(f"\nnext: retrain a found genotype, e.g.\n  python -m experiments.evaluate --genotype "
        f"{os.path.join(out, f'seed_{alive[0]}', 'genotype.json')} --seeds 0..1 --preset {args.preset}{data_flag}")
  return result


def _nsganet(args, config, seeds, w, a, ds, out):
  from jnas.search import nsganet
  if a is None:
    raise SystemExit("darts_cifar: nsganet scores candidates on a validation split; use train_portion < 1")
  cli.prepare_out(out, resume=args.resume, overwrite=args.overwrite)
  os.makedirs(out, exist_ok=True)
  print(f"nsganet search on {ds.name}: {len(w.labels)} + {len(a.labels)} images, {config.pop_size} + "
        f"{config.n_gens - 1} x {config.n_offspring} candidates, {config.candidate_epochs} epochs each, seeds {seeds} "
        f"-> {out}", file=sys.stderr)
  t0 = time.perf_counter()
  result = nsganet.search(config, seeds, w, a, out=out, resume=args.resume, quiet=args.quiet, mean=ds.mean,
                          std=ds.std)
  print(f"\nsearch finished in {(time.perf_counter() - t0) / 60:.1f} min; run directory {out}")
  for seed, g in result["genotypes"].items():
    print(f"seed {seed}: front {[(round(acc, 2), round(mp, 4)) for _, acc, mp in result['fronts'][seed]]} "
          f"(valid acc %, MParams)\n  {g}")
  return result


if __name__ == "__main__":
  cli.entry("darts_cifar", main)
