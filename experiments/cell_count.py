"""Number of cells: accuracy of the same random architectures at several depths.

Yang et al. 2020 §5.3, Fig. 7 (paper_protocol.md §8): 16 random DARTS cells trained with 4, 6, 8,
12, 16, 20 and 24 cells (DARTS protocol): the mean best-epoch accuracy climbs from 95.67 % (4 cells)
to 97.01 % (24), a larger effect than the choice of architecture.

  python -m experiments.cell_count --preset cpu     # small nets, CIFAR-10 subset: ~21 min on 2 busy CPU cores
  python -m experiments.cell_count --preset paper   # 16 archs x 7 depths x 600 epochs (GPU)

Writes table.md (mean ± std, max per depth, final and best epoch, beside the paper's) and cells.png
(accuracy vs number of cells, the analogue of Fig. 7).
"""

from __future__ import annotations

import numpy as np

from experiments import common

PRESETS = {
    "paper": dict(n=16, layers=[4, 6, 8, 12, 16, 20, 24], protocol="darts"),
    "cpu": dict(n=2, layers=[3, 4, 6], protocol="darts",
                scale=dict(epochs=3, C=8, layers=4, batch_size=64, train_images=1000, test_images=1000)),
    "test": dict(n=2, layers=[3, 4], protocol="darts", data="synthetic",
                 scale=dict(epochs=1, C=4, layers=3, batch_size=16, train_images=32, test_images=32),
                 eval_batch_size=32),
}


def group(layers: int) -> str:
  return f"L{layers}"


def run(run, cfg, *, resume: bool, quiet: bool):
  if not cfg["layers"] or min(cfg["layers"]) < 3:
    raise ValueError(f"layers must be cell counts >= 3, got {cfg['layers']}")
  genotypes = common.sample_genotypes(cfg, cfg["n"])
  common.write_genotypes(run, {"darts": genotypes})
  protocols = {L: common.scaled_protocol(cfg["protocol"], cfg["scale"], layers=L) for L in cfg["layers"]}
  run.write_json("protocols.json", {group(L): common.protocol_dict(p) for L, p in protocols.items()})
  data = common.load_data(cfg)
  units = [common.Unit(group(L), i, g, protocols[L]) for L in cfg["layers"] for i, g in enumerate(genotypes)]
  return common.train_units(run, units, cfg, data, resume=resume, quiet=quiet)


def analyze(out: str) -> dict:
  cfg, records = common.read_config(out), common.load_records(out)
  n, paper = cfg["n"], common.PAPER["cell_count"]
  acc = {L: {w: common.accuracy(records, group(L), n, which=w, average_seeds=True) for w in ("final", "best")}
         for L in cfg["layers"]}
  rows, headline = [], {"n": n, "layers": cfg["layers"], "mean_final": {}, "mean_best": {}}
  for L in cfg["layers"]:
    f, b = common.summarize(acc[L]["final"]), common.summarize(acc[L]["best"])
    pp = paper["rows"].get(L)
    rows.append([L, f["n"] if f else 0, common.pm(f and f["mean"], f and f["std0"]), common.fmt(f and f["max"]),
                 common.pm(b and b["mean"], b and b["std0"]), common.fmt(b and b["max"]),
                 f"{common.pm(pp[0], pp[1])} ({pp[2]:.2f})" if pp else "–"])
    headline["mean_final"][str(L)] = f and f["mean"]
    headline["mean_best"][str(L)] = b and b["mean"]
  protocols = common.read_json(out, "protocols.json")
  body = (f"{common.settings_line(cfg, protocols[group(cfg['layers'][0])])} (cells: "
          f"{', '.join(map(str, cfg['layers']))}). n = {n} random DARTS genotypes per depth, protocol "
          f"{cfg['protocol']}; mean ± std (ddof 0, as the paper's Fig. 7) and max, in %.\n\n")
  body += common.md_table(["cells", "n", "final mean ± std", "final max", "best mean ± std", "best max",
                           "paper best mean ± std (max)"], rows)
  fig = _figure(out, cfg, acc, paper)
  if fig:
    body += f"\n![accuracy vs cells]({fig})\n"
  return common.write_report(out, "Number of cells (§5.3, Fig. 7)", body, headline)


def _figure(out, cfg, acc, paper):
  plt = common.pyplot()
  if plt is None:
    return None
  Ls = cfg["layers"]
  best = np.stack([acc[L]["best"] for L in Ls], axis=1)  # (n, depths)
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for i in range(best.shape[0]):
    ax.plot(Ls, best[i], "-o", color="C0", alpha=0.3, ms=3, lw=0.8, label="each architecture" if i == 0 else None)
  mean = np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in best.T])
  std = np.array([np.nanstd(c) if np.isfinite(c).any() else np.nan for c in best.T])
  ax.errorbar(Ls, mean, yerr=std, fmt="s-", color="C0", lw=2, capsize=3, label=f"ours: mean ± std, n={cfg['n']}")
  ax.set_xlabel("number of cells")
  ax.set_ylabel("best-epoch test accuracy (%), ours")
  ax2 = ax.twinx()
  pl = sorted(paper["rows"])
  ax2.errorbar(pl, [paper["rows"][L][0] for L in pl], yerr=[paper["rows"][L][1] for L in pl], fmt="d--",
               color="gray", capsize=3, label="paper: mean ± std, n=16 (600 epochs, C=36)")
  ax2.set_ylabel("paper's accuracy (%)", color="gray")
  h1, l1 = ax.get_legend_handles_labels()
  h2, l2 = ax2.get_legend_handles_labels()
  ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
  ax.set_title(f"Accuracy vs number of cells ({cfg['preset']} preset)")
  common.save_figure(fig, out, "cells.png")
  return "cells.png"


def main(argv=None):
  return common.study_main("cell_count", argv, PRESETS, __doc__, run, analyze)


if __name__ == "__main__":
  from experiments import cli
  cli.entry("cell_count", main)
