"""DARTS search on CIFAR (or digits, offline), many seeds in one compiled job.

  python -m experiments.darts_cifar --preset cpu --data-dir /tmp/cifar10py --seeds 0,1
  python -m experiments.darts_cifar --preset paper --data-dir ~/data --seeds 0..3 --order second
  python -m experiments.darts_cifar --dataset digits --epochs 2        # offline smoke run

Writes a run directory (default ``runs/search/<dataset>-<order>-<time>``): config.json,
metrics.jsonl (per epoch per seed), checkpoints/, and per seed ``seed_<s>/genotype.json`` and
``alphas.npz``; ``--resume --out DIR`` continues a killed run (Ctrl-C checkpoints first).
Read it back with ``jnas.search.load_search(DIR)``.

Presets (flags given explicitly override them):
  paper: the DARTS settings [paper_protocol.md §2]: 50 epochs, C=16, 8 cells, batch 64, all 50k
         training images split 25k/25k, lr 0.025 -> 0.001, alpha Adam 3e-4.
  cpu:   a search sized for 2 CPU cores: 1,000 CIFAR images (500/500), 3 cells, C=8, batch 32,
         3 epochs, first order. On CPU the supernet's compile time dominates (minutes); the
         XLA cache makes a second run start at once. It shows the job end to end; it is too
         small for the genotype to mean much.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time


PRESETS = {
    "paper": dict(epochs=50, layers=8, channels=16, batch_size=64, order="second", subset=None, eval_images=None),
    "cpu": dict(epochs=3, layers=3, channels=8, batch_size=32, order="first", subset=1000, eval_images=500),
}
DEFAULTS = dict(PRESETS["paper"])


def parse_seeds(text: str) -> list[int]:
  """'0,1,5' or '0..7' (inclusive) or a mix: '0..3,8'."""
  seeds = []
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    try:
      if ".." in part:
        lo, hi = (int(p) for p in part.split(".."))
        if hi < lo:
          raise ValueError
        seeds.extend(range(lo, hi + 1))
      else:
        seeds.append(int(part))
    except ValueError:
      raise argparse.ArgumentTypeError(f"bad seed list {text!r}: use e.g. '0,1,2' or '0..7'") from None
  if len(set(seeds)) != len(seeds) or not seeds:
    raise argparse.ArgumentTypeError(f"seed list {text!r} is empty or repeats a seed")
  return seeds


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.darts_cifar", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
  p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | digits | path/to/data.npz")
  p.add_argument("--data-dir", default=None, help="folder with cifar-10-batches-py (or .npz files); "
                 "without it, tensorflow-datasets downloads CIFAR")
  p.add_argument("--subset", type=int, default=-1, help="use the first N training images (0 = all)")
  p.add_argument("--train-portion", type=float, default=0.5, help="fraction for the weights (DARTS 0.5)")
  p.add_argument("--split-seed", type=int, default=2, help="seed of the 50/50 split (-1: first/second half, quark0)")
  seeds = p.add_mutually_exclusive_group()
  seeds.add_argument("--seeds", type=parse_seeds, default=None, help="e.g. 0,1,2 or 0..7 (default 2, DARTS)")
  seeds.add_argument("--num-seeds", type=int, default=None, help="seeds 0..N-1")
  p.add_argument("--order", choices=["first", "second", "second-fd"], default=None)
  p.add_argument("--unroll-steps", type=int, default=1, help="k virtual steps for --order second")
  p.add_argument("--epochs", type=int, default=None)
  p.add_argument("--layers", type=int, default=None)
  p.add_argument("--channels", type=int, default=None, help="initial channels C")
  p.add_argument("--nodes", type=int, default=4, help="intermediate nodes per cell")
  p.add_argument("--ops", default=None, help="comma-separated op set (default: the 8 DARTS ops)")
  p.add_argument("--batch-size", type=int, default=None)
  p.add_argument("--w-lr", type=float, default=0.025)
  p.add_argument("--w-lr-min", type=float, default=0.001, help="0.001 (DARTS code) or 0 (paper text)")
  p.add_argument("--a-lr", type=float, default=3e-4)
  p.add_argument("--alpha-init", choices=["normal", "zeros"], default="normal")
  p.add_argument("--derive-rule", choices=["darts", "ptdarts"], default="darts")
  p.add_argument("--cutout", type=int, default=0, help="cutout length in the search (DARTS: 0)")
  p.add_argument("--eval-images", type=int, default=-1, help="eval-mode validation images per epoch (0: none)")
  p.add_argument("--seed-batching", choices=["vmap", "loop"], default="vmap")
  p.add_argument("--conv-impl", choices=["auto", "shift", "xla"], default="auto")
  p.add_argument("--out", default=None, help="run directory (default runs/search/...)")
  p.add_argument("--resume", action="store_true", help="continue the run in --out")
  p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
  p.add_argument("--quiet", action="store_true", help="no progress line (for logs)")
  p.add_argument("--compile-cache", default=os.path.join(os.path.expanduser("~"), ".cache", "jnas", "xla"),
                 help="persistent XLA compilation cache ('' to disable): a rerun or resume skips compilation")
  return p


def resolve(args) -> argparse.Namespace:
  """Fills unset flags from the preset."""
  preset = PRESETS[args.preset]
  for name in ("epochs", "layers", "channels", "batch_size", "order"):
    if getattr(args, name) is None:
      setattr(args, name, preset[name])
  if args.subset == -1:
    args.subset = preset["subset"]
  if args.eval_images == -1:
    args.eval_images = preset["eval_images"]
  if args.seeds is None:
    args.seeds = list(range(args.num_seeds)) if args.num_seeds else [2]
  return args


def load_data(args):
  import jnas.data as D
  if args.dataset == "digits":
    ds = D.load_digits(size=16, channels=3)
  else:
    try:
      ds = D.load_dataset(args.dataset, args.data_dir)
    except (FileNotFoundError, ImportError, RuntimeError) as e:
      raise SystemExit(f"error: cannot load {args.dataset!r}: {e}") from None
  train = ds.train
  if args.subset:
    train = D.Split(train.images[:args.subset], train.labels[:args.subset])
  if args.split_seed < 0:
    w, a = D.search_split(train, portion=args.train_portion, shuffle=False)
  else:
    w, a = D.search_split(train, seed=args.split_seed, portion=args.train_portion)
  return ds, w, a


def main(argv=None) -> dict:
  args = resolve(build_parser().parse_args(argv))
  if args.compile_cache:
    import jax
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  from jnas import space
  from jnas.search import SearchConfig, run_search

  ops = tuple(args.ops.split(",")) if args.ops else tuple(space.PRIMITIVES)
  try:
    config = SearchConfig(C=args.channels, layers=args.layers, steps=args.nodes, primitives=ops,
                          order=args.order, unroll_steps=args.unroll_steps, epochs=args.epochs,
                          batch_size=args.batch_size, w_lr=args.w_lr, w_lr_min=args.w_lr_min, a_lr=args.a_lr,
                          alpha_init=args.alpha_init, derive_rule=args.derive_rule, conv_impl=args.conv_impl)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  ds, w, a = load_data(args)
  config = dataclasses.replace(config, num_classes=ds.num_classes)
  out = args.out or os.path.join("runs", "search", f"{args.dataset}-{args.order}-{time.strftime('%Y%m%d-%H%M%S')}")
  if args.resume and not args.out:
    raise SystemExit("error: --resume needs --out (the run directory to continue)")
  print(f"DARTS search ({args.order} order) on {ds.name}: {len(w.labels)} + {len(a.labels)} images, "
        f"C={config.C}, {config.layers} cells, {config.epochs} epochs, batch {config.batch_size}, "
        f"seeds {args.seeds} -> {out}", file=sys.stderr)
  t0 = time.perf_counter()
  try:
    result = run_search(config, args.seeds, w, a, out=out, resume=args.resume, overwrite=args.overwrite,
                        quiet=args.quiet, mean=ds.mean, std=ds.std, cutout_length=args.cutout,
                        seed_batching=args.seed_batching, eval_images=args.eval_images,
                        extra_config={"dataset": args.dataset, "subset": args.subset,
                                      "train_portion": args.train_portion, "split_seed": args.split_seed})
  except (FileExistsError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  wall = time.perf_counter() - t0
  if result["stopped"]:
    print(f"stopped after epoch {result['epochs_done']}; continue with --resume --out {out}", file=sys.stderr)
    return result
  print(f"\nsearch finished in {wall / 60:.1f} min; run directory {out}")
  for seed, g in result["genotypes"].items():
    last = [r for r in result["history"] if r["seed"] == seed][-1]
    status = "" if result["alive"][seed] else "  (stopped: non-finite loss)"
    acc = f"eval acc {last['eval_acc']:.2f}%" if "eval_acc" in last else f"val acc {last['val_acc']:.2f}%"
    print(f"seed {seed}: {acc}{status}\n  {g}")
  return result


if __name__ == "__main__":
  main()
