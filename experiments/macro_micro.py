"""Macro vs micro: random cells over a deliberately poor op set against the DARTS op set.

Yang et al. 2020 §5.2, Fig. 6 (paper_protocol.md §7): 56 random cells over a modified op set (plain
1x1, 3x3, 7x7, 11x11 convolutions, 3x3 and 5x5 max pooling, none, skip) with the DARTS cell wiring and
macro structure, trained with the DARTS protocol, reach 96.85 ± 0.29 % against 97.03 ± 0.23 % for 214
random DARTS cells: a shift of only 0.18 p.p. The wiring and the macro structure, not the ops, carry
the accuracy.

The paper does not define the modified ops; jnas does (``jnas.ops``, README): ``conv_KxK`` = ReLU ->
dense KxK conv C->C, stride s (2 on the reduction cell's input edges), padding K//2, no bias -> BN;
``max_pool_5x5`` = 5x5 max pool, padding 2, stride s (BN after it only where pooling has BN,
``pool_bn``); ``max_pool_3x3``, ``skip_connect`` (FactorizedReduce at stride 2) and ``none`` as in
DARTS. Both op sets are sampled by the same rule (``jnas.random_genotype``): per node 2 distinct inputs,
per edge an op uniform over the set without ``none``.

  python -m experiments.macro_micro --preset cpu     # small nets, CIFAR-10 subset: ~24 min on 2 busy CPU cores
  python -m experiments.macro_micro --preset paper   # 214 DARTS + 56 modified cells, 600 epochs (GPU)

Writes table.md (per op set: mean ± std, min, max, final and best epoch; the shift of the means) and
histograms.png (the analogue of Fig. 6).
"""

from __future__ import annotations

import numpy as np

from experiments import common
from jnas import space

OP_SETS = {"darts": space.PRIMITIVES, "modified": space.MACRO_MICRO_PRIMITIVES}

PRESETS = {
    "paper": dict(n_darts=214, n_modified=56, protocol="darts"),
    "cpu": dict(n_darts=3, n_modified=3, protocol="darts",
                scale=dict(epochs=3, C=8, layers=4, batch_size=64, train_images=1000, test_images=1000)),
    "test": dict(n_darts=2, n_modified=2, protocol="darts", data="synthetic",
                 scale=dict(epochs=1, C=4, layers=3, batch_size=16, train_images=32, test_images=32),
                 eval_batch_size=32),
}


def run(run, cfg, *, resume: bool, quiet: bool):
  sets = {name: common.sample_genotypes(cfg, cfg[f"n_{name}"], primitives=prims, stream=k)
          for k, (name, prims) in enumerate(OP_SETS.items())}
  common.write_genotypes(run, sets)
  protocol = common.scaled_protocol(cfg["protocol"], cfg["scale"])
  run.write_json("protocols.json", {name: common.protocol_dict(protocol) for name in OP_SETS})
  data = common.load_data(cfg)
  # Alternate the two sets, so a stopped run has compared both.
  order = [(name, i) for i in range(max(len(g) for g in sets.values())) for name in OP_SETS if i < len(sets[name])]
  units = [common.Unit(name, i, sets[name][i], protocol) for name, i in order]
  return common.train_units(run, units, cfg, data, resume=resume, quiet=quiet)


def analyze(out: str) -> dict:
  cfg, records = common.read_config(out), common.load_records(out)
  paper = common.PAPER["macro_micro"]
  acc = {name: {w: common.accuracy(records, name, cfg[f"n_{name}"], which=w, average_seeds=True)
                for w in ("final", "best")} for name in OP_SETS}
  rows, headline = [], {"mean_final": {}, "mean_best": {}, "n": {k: cfg[f"n_{k}"] for k in OP_SETS}}
  for name in OP_SETS:
    f, b = common.summarize(acc[name]["final"]), common.summarize(acc[name]["best"])
    pp = paper["rows"][name]
    rows.append([name, f["n"] if f else 0, common.pm(f and f["mean"], f and f["std"]),
                 f"{common.fmt(f and f['min'])} / {common.fmt(f and f['max'])}",
                 common.pm(b and b["mean"], b and b["std"]), f"{common.fmt(b and b['min'])} / {common.fmt(b and b['max'])}",
                 f"{pp[0]}: {common.pm(pp[1], pp[2])} ({pp[3]:.2f} / {pp[4]:.2f})"])
    headline["mean_final"][name] = f and f["mean"]
    headline["mean_best"][name] = b and b["mean"]
  for w in ("final", "best"):
    m = headline[f"mean_{w}"]
    headline[f"shift_{w}"] = (m["modified"] - m["darts"]) if None not in (m["modified"], m["darts"]) else None
  protocol = next(iter(common.read_json(out, "protocols.json").values()))
  body = (f"{common.settings_line(cfg, protocol)}. Random cells over each op set, protocol {cfg['protocol']}; "
          f"accuracies in %, std ddof 1. Modified ops: {', '.join(o for o in OP_SETS['modified'] if o != 'none')} "
          f"(none is never drawn).\n\n")
  body += common.md_table(["op set", "n", "final mean ± std", "final min / max", "best mean ± std", "best min / max",
                           "paper n: mean ± std (min / max)"], rows)
  body += (f"\nShift of the means, modified - DARTS: final epoch {common.fmt(headline['shift_final'])} p.p., "
           f"best epoch {common.fmt(headline['shift_best'])} p.p. (paper: {paper['shift']:+.2f} p.p.).\n")
  fig = _figure(out, cfg, acc, headline)
  if fig:
    body += f"\n![accuracy histograms]({fig})\n"
  return common.write_report(out, "Macro vs micro: modified op set (§5.2, Fig. 6)", body, headline)


def _figure(out, cfg, acc, headline):
  plt = common.pyplot()
  if plt is None:
    return None
  fig, ax = plt.subplots(figsize=(6.5, 4))
  vals = {k: v["best"][np.isfinite(v["best"])] for k, v in acc.items()}
  allv = np.concatenate(list(vals.values())) if vals else np.zeros(0)
  if allv.size:
    bins = np.linspace(allv.min() - 1e-6, allv.max() + 1e-6, 12)
    for k, v in vals.items():
      ax.hist(v, bins=bins, alpha=0.55, label=f"{k} ops (n={v.size}, mean {common.fmt(headline['mean_best'][k])})")
      if v.size:
        ax.axvline(v.mean(), ls="--", color="C0" if k == "darts" else "C1")
  ax.set_xlabel("best-epoch test accuracy (%)")
  ax.set_ylabel("number of architectures")
  ax.legend(fontsize=8)
  ax.set_title(f"DARTS vs modified op set: shift {common.fmt(headline['shift_best'])} p.p.\n"
               f"(paper: 214 vs 56 archs, shift -0.18 p.p.)", fontsize=10)
  common.save_figure(fig, out, "histograms.png")
  return "histograms.png"


def main(argv=None):
  return common.study_main("macro_micro", argv, PRESETS, __doc__, run, analyze)


if __name__ == "__main__":
  from experiments import cli
  cli.entry("macro_micro", main)
