"""Training-protocol ablation: random architectures under each protocol of the paper's ladder.

Yang et al. 2020 §4, Fig. 3 (paper_protocol.md §5): 8 random DARTS cells, each trained under base
(the DARTS retraining protocol with every trick off), A (auxiliary tower), D (drop path), C
(cutout), C+D, C+D+A (the DARTS protocol), +50C, +AA, +1500E and all of them; the means climb from
94.96 to 97.87 %, a gap larger than most NAS methods' gains over random sampling.

  python -m experiments.tricks_ablation --preset cpu     # small nets, CIFAR-10 subset: ~35 min on 2 busy CPU cores
  python -m experiments.tricks_ablation --preset paper   # 8 archs x 10 protocols, 600/1500 epochs (GPU)

Writes table.md (mean ± std, min, max per protocol, final and best epoch, beside the paper's) and
ablation.png (the analogue of Fig. 3).
"""

from __future__ import annotations

import numpy as np

from experiments import common

LADDER = ("base", "A", "D", "C", "C+D", "C+D+A", "+50C", "+AA", "+1500E", "all")
LABELS = {"C+D+A": "C+D+A (DARTS)", "+50C": "C+D+A+50C", "+AA": "C+D+A+AA", "+1500E": "C+D+A+AA+1500E",
          "all": "C+D+A+AA+50C+1500E"}

PRESETS = {
    "paper": dict(n=8, protocols=list(LADDER)),
    # CIFAR-10 subset; the DARTS protocol at C=8, 3 cells, 2 epochs (+1500E: 5 epochs, +50C: C=11).
    "cpu": dict(n=2, protocols=list(LADDER),
                scale=dict(epochs=2, C=8, layers=3, batch_size=64, train_images=1000, test_images=500)),
    "test": dict(n=2, protocols=["base", "C+D+A"], data="synthetic",
                 scale=dict(epochs=1, C=4, layers=3, batch_size=16, train_images=32, test_images=32),
                 eval_batch_size=32),
}


def label(p: str) -> str:
  return LABELS.get(p, p)


def run(run, cfg, *, resume: bool, quiet: bool):
  unknown = [p for p in cfg["protocols"] if p not in LADDER]
  if unknown:
    raise ValueError(f"unknown protocol(s) {unknown}; the ladder is {', '.join(LADDER)}")
  genotypes = common.sample_genotypes(cfg, cfg["n"])
  common.write_genotypes(run, {"darts": genotypes})
  protocols = {p: common.scaled_protocol(p, cfg["scale"]) for p in cfg["protocols"]}
  run.write_json("protocols.json", {p: common.protocol_dict(v) for p, v in protocols.items()})
  data = common.load_data(cfg)
  # Genotype by genotype, the whole ladder each: a stopped run has complete ladders.
  units = [common.Unit(p, i, g, protocols[p]) for i, g in enumerate(genotypes) for p in cfg["protocols"]]
  return common.train_units(run, units, cfg, data, resume=resume, quiet=quiet)


def analyze(out: str) -> dict:
  cfg, records = common.read_config(out), common.load_records(out)
  n, paper = cfg["n"], common.PAPER["tricks_ablation"]
  acc = {p: {w: common.accuracy(records, p, n, which=w, average_seeds=True) for w in ("final", "best")}
         for p in cfg["protocols"]}
  rows, headline = [], {"mean_final": {}, "mean_best": {}, "n": n}
  for p in cfg["protocols"]:
    f, b = common.summarize(acc[p]["final"]), common.summarize(acc[p]["best"])
    pp = paper["rows"].get(p)
    rows.append([label(p), f["n"] if f else 0,
                 common.pm(f["mean"], f["std"]) if f else "–", common.fmt(f and f["min"]), common.fmt(f and f["max"]),
                 common.pm(b["mean"], b["std"]) if b else "–", common.fmt(b and b["min"]), common.fmt(b and b["max"]),
                 common.pm(pp[0], pp[1]) if pp else "–", f"{pp[2]:.2f} / {pp[3]:.2f}" if pp else "–"])
    headline["mean_final"][p] = f and f["mean"]
    headline["mean_best"][p] = b and b["mean"]
  means = [m for m in headline["mean_best"].values() if m is not None]
  headline["ladder_gap_best"] = (headline["mean_best"][cfg["protocols"][-1]] - headline["mean_best"][cfg["protocols"][0]]
                                 if len(means) == len(cfg["protocols"]) and len(means) > 1 else None)
  protocols = common.read_json(out, "protocols.json")
  p0 = protocols.get("C+D+A") or next(iter(protocols.values()))
  body = (f"{common.settings_line(cfg, p0)}. n = {n} random DARTS genotypes per protocol, top-1 test accuracy "
          f"(%). Paper: {paper['source']}; its values are best-epoch accuracies at full scale.\n\n")
  body += common.md_table(
      ["protocol", "n", "final mean ± std", "final min", "final max", "best mean ± std", "best min", "best max",
       "paper mean ± std", "paper min / max"], rows)
  if headline["ladder_gap_best"] is not None:
    body += (f"\nGap between the last and the first protocol (best-epoch means): "
             f"{headline['ladder_gap_best']:+.2f} p.p. (paper, all vs base: +2.91 p.p.).\n")
  fig = _figure(out, cfg, acc, paper)
  if fig:
    body += f"\n![training-protocol ablation]({fig})\n"
  return common.write_report(out, "Training-protocol ablation (§4, Fig. 3)", body, headline)


def _figure(out, cfg, acc, paper):
  plt = common.pyplot()
  if plt is None:
    return None
  ps = cfg["protocols"]
  x = np.arange(len(ps))
  fig, ax = plt.subplots(figsize=(9, 4.5))
  best = np.stack([acc[p]["best"] for p in ps], axis=1)  # (n, protocols)
  for i in range(best.shape[0]):
    ax.plot(x, best[i], "-o", color="C0", alpha=0.35, ms=3, lw=0.8, label="each architecture" if i == 0 else None)
  means = np.nanmean(np.where(np.isfinite(best), best, np.nan), axis=0) if np.isfinite(best).any() else x * np.nan
  ax.plot(x, means, "s-", color="C0", lw=2, label=f"ours: mean of n={cfg['n']} (best epoch)")
  ax.set_xticks(x, [label(p) for p in ps], rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("top-1 test accuracy (%), ours")
  ax.set_xlabel("training protocol")
  pv = [paper["rows"][p][0] if p in paper["rows"] else np.nan for p in ps]
  ax2 = ax.twinx()
  ax2.plot(x, pv, "d--", color="gray", label="paper mean (8 archs, 600/1500 epochs)")
  ax2.set_ylabel("paper's accuracy (%)", color="gray")
  lines = ax.get_legend_handles_labels()
  lines2 = ax2.get_legend_handles_labels()
  ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
  ax.set_title(f"Training-protocol ablation: {cfg['n']} random DARTS cells ({cfg['preset']} preset)")
  common.save_figure(fig, out, "ablation.png")
  return "ablation.png"


def main(argv=None):
  return common.study_main("tricks_ablation", argv, PRESETS, __doc__, run, analyze)


if __name__ == "__main__":
  from experiments import cli
  cli.entry("tricks_ablation", main)
