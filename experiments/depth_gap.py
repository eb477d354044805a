"""Depth gap: are random architectures ranked alike with 8 and with 20 cells?

Yang et al. 2020 §5.3 (paper_protocol.md §8): 32 random DARTS cells trained with 8 and with 20 cells
(the DARTS protocol otherwise, same seed): Kendall tau 0.54, and architectures move by up to 18 of 32
rank positions. DARTS searches with 8 cells and evaluates with 20, so this gap weakens its search.

  python -m experiments.depth_gap --preset cpu     # small nets, CIFAR-10 subset: ~23 min on 2 busy CPU cores
  python -m experiments.depth_gap --preset paper   # 32 archs at 8 and 20 cells, 600 epochs (GPU)

Writes table.md (tau, spearman, rank displacement, mean accuracy per depth, final and best epoch)
and ranks.png (rank at the shallow depth vs rank at the deep one).
"""

from __future__ import annotations

import numpy as np

from experiments import common
from jnas import metrics

PRESETS = {
    "paper": dict(n=32, layers=[8, 20], protocol="darts"),
    "cpu": dict(n=4, layers=[3, 5], protocol="darts",
                scale=dict(epochs=3, C=8, layers=4, batch_size=64, train_images=1000, test_images=1000)),
    "test": dict(n=3, layers=[3, 4], protocol="darts", data="synthetic",
                 scale=dict(epochs=1, C=4, layers=3, batch_size=16, train_images=32, test_images=32),
                 eval_batch_size=32),
}


def group(layers: int) -> str:
  return f"L{layers}"


def run(run, cfg, *, resume: bool, quiet: bool):
  if len(cfg["layers"]) != 2 or min(cfg["layers"]) < 3:
    raise ValueError(f"layers must be two cell counts >= 3 (e.g. [8, 20]), got {cfg['layers']}")
  genotypes = common.sample_genotypes(cfg, cfg["n"])
  common.write_genotypes(run, {"darts": genotypes})
  protocols = {L: common.scaled_protocol(cfg["protocol"], cfg["scale"], layers=L) for L in cfg["layers"]}
  run.write_json("protocols.json", {group(L): common.protocol_dict(p) for L, p in protocols.items()})
  data = common.load_data(cfg)
  # Genotype by genotype, both depths: a stopped run leaves complete pairs.
  units = [common.Unit(group(L), i, g, protocols[L]) for i, g in enumerate(genotypes) for L in cfg["layers"]]
  return common.train_units(run, units, cfg, data, resume=resume, quiet=quiet)


def depth_stats(x, y) -> dict:
  """Rank agreement of the same architectures at two depths (NaN pairs dropped)."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  if x.size < 2:
    return {"n": int(x.size)}
  d = metrics.rank_displacement(x, y)
  return {"n": int(x.size), "kendall_tau": metrics.kendall_tau(x, y), "spearman_rho": metrics.spearman_rho(x, y),
          "max_rank_shift": d["max"], "mean_rank_shift": d["mean"], "mean_acc": [float(x.mean()), float(y.mean())]}


def analyze(out: str) -> dict:
  cfg, records = common.read_config(out), common.load_records(out)
  n, (L1, L2) = cfg["n"], cfg["layers"]
  paper = common.PAPER["depth_gap"]
  acc = {w: [common.accuracy(records, group(L), n, which=w, average_seeds=True) for L in (L1, L2)]
         for w in ("final", "best")}
  stats = {w: depth_stats(*acc[w]) for w in acc}
  rows = []
  for w, label in (("final", "final epoch"), ("best", "best epoch")):
    s = stats[w]
    m = s.get("mean_acc", [None, None])
    rows.append([label, s["n"], common.fmt(s.get("kendall_tau")), common.fmt(s.get("spearman_rho")),
                 common.fmt(s.get("max_rank_shift"), 1), common.fmt(s.get("mean_rank_shift"), 1),
                 common.fmt(m[0]), common.fmt(m[1])])
  rows.append([f"paper (§5.3, 8 vs 20 cells)", paper["n"], common.fmt(paper["kendall_tau"]), "–",
               f"{paper['max_rank_shift']} ({paper['max_rank_shift_tie_avg']} tie-avg)",
               common.fmt(paper["mean_rank_shift"], 1), common.fmt(paper["mean_acc"][8]),
               common.fmt(paper["mean_acc"][20])])
  protocols = common.read_json(out, "protocols.json")
  body = (f"{common.settings_line(cfg, protocols[group(L1)])} (cells: {L1} and {L2}). n = {n} random DARTS "
          f"genotypes, protocol {cfg['protocol']}; rank shifts are abs(rank at {L1} cells - rank at {L2} cells) with "
          f"tie-averaged ranks; accuracies in %.\n\n")
  body += common.md_table(["accuracy", "n", "Kendall tau", "Spearman rho", "max rank shift", "mean rank shift",
                           f"mean acc, {L1} cells", f"mean acc, {L2} cells"], rows)
  headline = {"n": n, "layers": [L1, L2], "final": stats["final"], "best": stats["best"]}
  fig = _figure(out, cfg, acc["best"], stats["best"], paper)
  if fig:
    body += f"\n![ranks at two depths]({fig})\n"
  return common.write_report(out, "Depth gap (§5.3)", body, headline)


def _figure(out, cfg, acc, stats, paper):
  plt = common.pyplot()
  if plt is None:
    return None
  x, y = (np.asarray(a, float) for a in acc)
  keep = np.isfinite(x) & np.isfinite(y)
  fig, ax = plt.subplots(figsize=(5, 5))
  if keep.sum() >= 1:
    rx, ry = metrics.rank(x[keep]), metrics.rank(y[keep])
    ax.scatter(rx, ry, s=20)
    m = keep.sum()
    ax.plot([1, m], [1, m], "--", color="gray", lw=1, label="same rank")
    ax.legend(loc="upper left", fontsize=8)
  L1, L2 = cfg["layers"]
  ax.set_xlabel(f"rank with {L1} cells (1 = best)")
  ax.set_ylabel(f"rank with {L2} cells (1 = best)")
  ax.set_title(f"Depth gap, n={stats['n']} random archs: tau={common.fmt(stats.get('kendall_tau'))}, "
               f"max shift {common.fmt(stats.get('max_rank_shift'), 1)}\n(paper, 8 vs 20 cells, n=32: tau=0.54, "
               f"max shift 18)", fontsize=9)
  common.save_figure(fig, out, "ranks.png")
  return "ranks.png"


def main(argv=None):
  return common.study_main("depth_gap", argv, PRESETS, __doc__, run, analyze)


if __name__ == "__main__":
  from experiments import cli
  cli.entry("depth_gap", main)
