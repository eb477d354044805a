"""Seed study: do two seeds of the same training protocol rank random architectures alike?

Yang et al. 2020 §5.3 (paper_protocol.md §6): 32 random DARTS cells, each trained twice with the
DARTS protocol and different seeds; Kendall tau between the two rankings 0.48, |delta accuracy|
0.13 ± 0.08 % on average and up to 0.39 %. Also §5.1 / Fig. 5: Kendall tau between the accuracy at
epoch e and the final accuracy grows slowly over training (0.28 at 50 of 600 epochs, 0.85 at 580),
a little faster with a moving average over 20 epochs.

  python -m experiments.seed_ranking --preset cpu     # small nets, CIFAR-10 subset: ~20 min on 2 busy CPU cores
  python -m experiments.seed_ranking --preset paper   # 32 archs x 2 seeds x 600 epochs (GPU)

Writes table.md (tau, spearman, |delta| between seeds, final and best epoch; tau(epoch e, final)),
seeds.png (seed A vs seed B) and epoch_tau.png.
"""

from __future__ import annotations

import numpy as np

from experiments import common
from jnas import metrics

PRESETS = {
    "paper": dict(n=32, seeds=[2, 3], protocol="darts"),
    "cpu": dict(n=6, seeds=[2, 3], protocol="darts",
                scale=dict(epochs=3, C=8, layers=4, batch_size=64, train_images=1000, test_images=1000)),
    "test": dict(n=3, seeds=[2, 3], protocol="darts", data="synthetic",
                 scale=dict(epochs=2, C=4, layers=3, batch_size=16, train_images=32, test_images=32),
                 eval_batch_size=32),
}


def run(run, cfg, *, resume: bool, quiet: bool):
  if len(cfg["seeds"]) < 2:
    raise ValueError(f"the seed study needs at least 2 seeds, got {cfg['seeds']}")
  genotypes = common.sample_genotypes(cfg, cfg["n"])
  common.write_genotypes(run, {"darts": genotypes})
  protocol = common.scaled_protocol(cfg["protocol"], cfg["scale"])
  run.write_json("protocols.json", {cfg["protocol"]: common.protocol_dict(protocol)})
  data = common.load_data(cfg)
  units = [common.Unit(cfg["protocol"], i, g, protocol) for i, g in enumerate(genotypes)]
  return common.train_units(run, units, cfg, data, resume=resume, quiet=quiet)


def epoch_points(E: int) -> list[int]:
  """Epochs at which tau(epoch e, final) is reported: all of them for short runs, else the paper's
  50, 100, 200, ..., 580 of 600 scaled to E."""
  if E <= 12:
    return list(range(1, E + 1))
  return sorted({min(E, max(1, int(round(f * E)))) for f in common.PAPER["seed_ranking"]["epoch_fraction"]} | {E})


def ma_window(E: int) -> int:
  """The paper's window, 20 of 600 epochs, scaled to E (at least 2, so smoothing is visible)."""
  return max(2, int(round(E * 20 / 600)))


def seed_stats(a, b) -> dict:
  """Agreement of two seeds' accuracies over the same architectures (NaN pairs dropped)."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  keep = np.isfinite(a) & np.isfinite(b)
  a, b = a[keep], b[keep]
  if a.size < 2:
    return {"n": int(a.size)}
  d = np.abs(a - b)
  return {"n": int(a.size), "kendall_tau": metrics.kendall_tau(a, b), "spearman_rho": metrics.spearman_rho(a, b),
          "mean_abs_delta": float(d.mean()), "std_abs_delta": float(d.std(ddof=1)) if d.size > 1 else float("nan"),
          "max_abs_delta": float(d.max())}


def analyze(out: str) -> dict:
  cfg, records = common.read_config(out), common.load_records(out)
  n, group, (s_a, s_b) = cfg["n"], cfg["protocol"], cfg["seeds"][:2]
  paper = common.PAPER["seed_ranking"]
  stats = {}
  for which in ("final", "best"):
    a = common.accuracy(records, group, n, seed=s_a, which=which)
    b = common.accuracy(records, group, n, seed=s_b, which=which)
    stats[which] = dict(seed_stats(a, b), a=a.tolist(), b=b.tolist())
  protocol = common.read_json(out, "protocols.json")[group]
  rows = []
  for which, label in (("final", "final epoch"), ("best", "best epoch")):
    s = stats[which]
    rows.append([label, s["n"], common.fmt(s.get("kendall_tau")), common.fmt(s.get("spearman_rho")),
                 common.pm(s.get("mean_abs_delta"), s.get("std_abs_delta")), common.fmt(s.get("max_abs_delta"))])
  rows.append(["paper (§5.3, best epoch)", paper["n"], common.fmt(paper["kendall_tau"]), "–",
               common.pm(paper["mean_abs_delta"], paper["std_abs_delta"]), common.fmt(paper["max_abs_delta"])])
  body = (f"{common.settings_line(cfg, protocol)}. n = {n} random DARTS genotypes, protocol {group}, "
          f"seeds {s_a} and {s_b}; accuracies in %.\n\n")
  body += common.md_table(["accuracy", "n", "Kendall tau", "Spearman rho", "mean ± std abs(Δ acc)", "max abs(Δ acc)"],
                          rows)
  # tau(epoch e, final), §5.1 / Fig. 5, on seed A's curves.
  c = common.curves(records, group, n, s_a)
  c = c[np.all(np.isfinite(c), axis=1)] if c.size else c
  epoch_tau = None
  if c.shape[0] >= 2 and c.shape[1] >= 1:
    E = c.shape[1]
    es, w = epoch_points(E), ma_window(E)
    raw = metrics.epoch_rank_correlation(c, es)
    ma = metrics.epoch_rank_correlation(c, es, window=w)
    fr = np.asarray(paper["epoch_fraction"])
    rows = []
    for e, t, tm in zip(es, raw, ma):
      k = int(np.argmin(np.abs(fr - e / E)))
      rows.append([e, f"{e / E:.2f}", common.fmt(t), common.fmt(tm),
                   f"{paper['epoch_tau'][k]:.2f} / {paper['epoch_tau_ma'][k]:.2f} (e={round(fr[k] * 600)})"])
    body += (f"\nKendall tau between the accuracy after epoch e and the final accuracy (seed {s_a}, "
             f"{c.shape[0]} genotypes; moving average over w = {w} epochs; paper: 214 archs, 600 epochs, w = 20, "
             f"nearest fraction of training):\n\n")
    body += common.md_table(["epoch e", "e / E", "tau raw", f"tau MA (w={w})", "paper raw / MA"], rows)
    epoch_tau = {"epochs": es, "raw": raw.tolist(), "ma": ma.tolist(), "window": w, "E": E}
  headline = {"n": n, "seeds": [s_a, s_b], "final": {k: v for k, v in stats["final"].items() if k not in ("a", "b")},
              "best": {k: v for k, v in stats["best"].items() if k not in ("a", "b")}, "epoch_tau": epoch_tau}
  figs = _figures(out, cfg, stats, epoch_tau, paper, s_a, s_b)
  body += "".join(f"\n![{name}]({name})\n" for name in figs)
  return common.write_report(out, "Seed study (§5.3) and ranking over epochs (§5.1, Fig. 5)", body, headline)


def _figures(out, cfg, stats, epoch_tau, paper, s_a, s_b):
  plt = common.pyplot()
  if plt is None:
    return []
  names = []
  fig, ax = plt.subplots(figsize=(5, 5))
  a, b = np.asarray(stats["best"]["a"]), np.asarray(stats["best"]["b"])
  ax.scatter(a, b, s=18)
  fin = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
  if fin.size:
    lo, hi = fin.min(), fin.max()
    ax.plot([lo, hi], [lo, hi], "--", color="gray", lw=1, label="equal accuracy")
    ax.legend(loc="upper left", fontsize=8)
  ax.set_xlabel(f"best-epoch test accuracy (%), seed {s_a}")
  ax.set_ylabel(f"best-epoch test accuracy (%), seed {s_b}")
  tau = stats["best"].get("kendall_tau")
  ax.set_title(f"Two seeds, n={stats['best']['n']} random archs: tau={common.fmt(tau)}\n"
               f"(paper: tau={paper['kendall_tau']}, n={paper['n']})", fontsize=10)
  common.save_figure(fig, out, "seeds.png")
  names.append("seeds.png")
  if epoch_tau:
    fig, ax = plt.subplots(figsize=(6, 4))
    E = epoch_tau["E"]
    x = np.asarray(epoch_tau["epochs"]) / E
    ax.plot(x, epoch_tau["raw"], "o-", label="ours, raw")
    ax.plot(x, epoch_tau["ma"], "s-", label=f"ours, moving average w={epoch_tau['window']}")
    ax.plot(paper["epoch_fraction"], paper["epoch_tau"], "d--", color="gray", label="paper, raw (600 epochs)")
    ax.plot(paper["epoch_fraction"], paper["epoch_tau_ma"], "^--", color="silver", label="paper, w=20")
    ax.set_xlabel("fraction of training done (epoch e / E)")
    ax.set_ylabel("Kendall tau (acc at epoch e, final acc)")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(f"Ranking over training: n={cfg['n']} archs, E={E} epochs")
    common.save_figure(fig, out, "epoch_tau.png")
    names.append("epoch_tau.png")
  return names


def main(argv=None):
  return common.study_main("seed_ranking", argv, PRESETS, __doc__, run, analyze)


if __name__ == "__main__":
  from experiments import cli
  cli.entry("seed_ranking", main)
