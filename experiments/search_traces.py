"""Per-epoch traces of a search run as one figure: the alpha Hessian's dominant eigenvalue (when the
run had ``--monitor hessian``), edge entropy and skip share, one line per seed, with DARTS-ES's
stop epoch and SS-DARTS's selected epoch marked where the run has them.

  python -m experiments.search_traces RUN_DIR [RUN_DIR ...]    # writes RUN_DIR/traces.png

``experiments.darts_cifar`` writes the same figure at the end of every search.
"""

from __future__ import annotations

import argparse
import json
import os

from experiments import cli, common
from jnas.search.run import load_search

__all__ = ["plot_traces", "main"]

METRICS = (("hessian_max", "dominant eigenvalue of the alpha Hessian"), ("edge_entropy", "edge-weight entropy"),
           ("skip_share", "skip-connect share (normal cell)"), ("eval_acc", "eval accuracy (%)"))


def plot_traces(out: str) -> str | None:
  """Writes ``<out>/traces.png`` from the run's ``metrics.jsonl``; returns its path (None without
  matplotlib or records)."""
  run = load_search(out)
  recs = [r for r in run["history"] if isinstance(r.get("epoch"), int)]
  if not recs:
    return None
  plt = common.pyplot()
  if plt is None:
    return None
  shown = [(k, label) for k, label in METRICS if any(r.get(k) is not None for r in recs)]
  fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), squeeze=False)
  selected = {}
  results = os.path.join(out, "results.json")
  if os.path.exists(results):
    with open(results) as f:
      selected = {r["seed"]: r.get("selected_epoch") for r in json.load(f)["seeds"]}
  stages = sorted({r.get("stage", 0) for r in recs})
  for ax, (k, label) in zip(axes[0], shown):
    for seed in sorted({r["seed"] for r in recs}):
      pts = [(r.get("stage", 0), r["epoch"], r[k]) for r in recs if r["seed"] == seed and r.get(k) is not None]
      if not pts:
        continue
      x = [e + 1 + sum(_epochs(recs, st) for st in stages if st < s_) for s_, e, _ in pts]
      line, = ax.plot(x, [v for _, _, v in pts], marker="o", ms=3, label=f"seed {seed}")
      if selected.get(seed) is not None:
        ax.axvline(selected[seed] + 1 + sum(_epochs(recs, st) for st in stages[:-1]), color=line.get_color(),
                   ls="--", lw=1)
    ax.set_xlabel("epoch")
    ax.set_title(label, fontsize=9)
  axes[0][0].legend(fontsize=7)
  fig.suptitle(f"{run['method']}: {os.path.basename(os.path.normpath(out))}"
               + (" (dashed: the selected epoch)" if any(v is not None for v in selected.values()) else ""),
               fontsize=9)
  return common.save_figure(fig, out, "traces.png")


def _epochs(recs, stage) -> int:
  return 1 + max(r["epoch"] for r in recs if r.get("stage", 0) == stage)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("runs", nargs="+", help="search run directories")
  args = p.parse_args(argv)
  for out in args.runs:
    path = plot_traces(out)
    print(path or f"{out}: no records or no matplotlib")


if __name__ == "__main__":
  cli.entry("search_traces", main)
