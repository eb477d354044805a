"""One Markdown report of every study run: headlines beside the paper's, each table, each figure.

Reads the run directories of ``tricks_ablation``, ``seed_ranking``, ``depth_gap``, ``cell_count`` and
``macro_micro`` (finished or partial: a partial run reports the units it has), re-renders their
tables and figures from the recorded accuracies, and writes one report.

  python -m experiments.summary --preset cpu                  # runs/studies/<study>-cpu -> report-cpu.md
  python -m experiments.summary --dir depth_gap=/path/to/run  # any run directory for a study

The paper's values are those of paper_protocol.md §5-§8 (Yang et al. 2020 §4-§5), cited per table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
import sys

from experiments import common

STUDIES = ("tricks_ablation", "seed_ranking", "depth_gap", "cell_count", "macro_micro")


def _f(x, d=2):
  return common.fmt(x, d)


def headline_row(study: str, h: dict, cfg: dict) -> tuple[str, str]:
  """(ours, paper's) headline of one study as short text."""
  if study == "tricks_ablation":
    ps = cfg["protocols"]
    m = h["mean_best"]
    ours = ", ".join(f"{p} {_f(m.get(p))}" for p in ps)
    if h.get("ladder_gap_best") is not None:
      ours += f"; {ps[-1]} - {ps[0]}: {h['ladder_gap_best']:+.2f} p.p."
    rows = common.PAPER[study]["rows"]
    paper = ", ".join(f"{p} {rows[p][0]:.2f}" for p in ps if p in rows) + "; all - base: +2.91 p.p."
    return ours, paper
  if study == "seed_ranking":
    b, p = h["best"], common.PAPER[study]
    ours = (f"tau {_f(b.get('kendall_tau'))}, mean abs(Δ) {_f(b.get('mean_abs_delta'))}, "
            f"max abs(Δ) {_f(b.get('max_abs_delta'))} (n={b['n']}, best epoch)")
    return ours, f"tau {p['kendall_tau']}, mean abs(Δ) {p['mean_abs_delta']}, max abs(Δ) {p['max_abs_delta']} (n={p['n']})"
  if study == "depth_gap":
    b, p = h["best"], common.PAPER[study]
    L1, L2 = h["layers"]
    return (f"{L1} vs {L2} cells: tau {_f(b.get('kendall_tau'))}, max rank shift {_f(b.get('max_rank_shift'), 1)}, "
            f"mean {_f(b.get('mean_rank_shift'), 1)} of n={b['n']}",
            f"8 vs 20 cells: tau {p['kendall_tau']}, max rank shift {p['max_rank_shift']}, mean "
            f"{p['mean_rank_shift']} of n={p['n']}")
  if study == "cell_count":
    rows = common.PAPER[study]["rows"]
    ours = ", ".join(f"{L}: {_f(h['mean_best'].get(str(L)))}" for L in h["layers"])
    return f"best-epoch mean by cells: {ours}", ", ".join(f"{L}: {v[0]:.2f}" for L, v in sorted(rows.items()))
  if study == "macro_micro":
    m = h["mean_best"]
    return (f"modified - DARTS: {_f(h.get('shift_best'))} p.p. ({_f(m.get('modified'))} vs {_f(m.get('darts'))}, "
            f"n={h['n']['modified']} vs {h['n']['darts']})",
            "modified - DARTS: -0.18 p.p. (96.85 vs 97.03, n=56 vs 214)")
  raise ValueError(f"unknown study {study!r}")


def scale_text(out: str, cfg: dict) -> str:
  protocols = common.read_json(out, "protocols.json")
  p = next(iter(protocols.values()))
  cells = "/".join(map(str, cfg["layers"])) if "layers" in cfg else p["layers"]
  return (f"{cfg['preset']}: {cfg['data']}, {p.get('train_images') or 'all'}/{p.get('test_images') or 'all'} imgs, "
          f"{p['epochs']} ep, C={p['C']}, {cells} cells")


def build(dirs: dict[str, str], report: str, *, reanalyze: bool = True) -> str:
  """Writes the report for the run directories in ``dirs`` ({study: path}); returns its text."""
  unknown = sorted(set(dirs) - set(STUDIES))
  if unknown:
    raise ValueError(f"unknown studies {unknown}; known: {', '.join(STUDIES)}")
  report_dir = os.path.dirname(os.path.abspath(report))
  head_rows, sections, missing = [], [], []
  for study in STUDIES:
    out = dirs.get(study)
    if out is None or not os.path.exists(os.path.join(out, "config.json")):
      missing.append(f"{study} ({out or 'no directory given'})")
      continue
    cfg = common.read_config(out)
    records = common.load_records(out)
    if reanalyze or not os.path.exists(os.path.join(out, "table.md")):
      if not records:
        missing.append(f"{study} ({out}: no finished unit yet)")
        continue
      importlib.import_module(f"experiments.{study}").analyze(out)
    h = common.read_json(out, "headline.json")
    ours, paper = headline_row(study, h, cfg)
    wall = common.wall_time(out)
    head_rows.append([study, ours, paper, scale_text(out, cfg), f"{wall / 60:.1f} min" if wall == wall else "–",
                      f"{len(records)} runs"])
    with open(os.path.join(out, "table.md")) as f:
      table = f.read()
    rel = os.path.relpath(os.path.abspath(out), report_dir)
    table = re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"]({rel}/{m.group(1)})", table)
    sections.append(f"{table}\nRun directory: `{out}`.\n")
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  text = (f"# The studies of \"NAS evaluation is frustratingly hard\" (Yang et al., ICLR 2020), rerun with jnas\n\n"
          f"Generated {now} by `python -m experiments.summary`. Accuracies are top-1 test accuracy in %. The "
          f"paper's values are from paper_protocol.md §5-§8 (600-epoch, C=36 runs on CIFAR-10); runs at a "
          f"smaller scale are not expected to match them in level, only to be read beside them.\n\n")
  text += common.md_table(["study", "ours", "paper", "scale", "training time", "runs"], head_rows) if head_rows else ""
  if missing:
    text += "\nNot run yet: " + "; ".join(missing) + ".\n"
  text += "\n" + "\n".join(sections)
  common.checkpoint.atomic_write_text(report, text)
  return text


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--runs", default=os.path.join("runs", "studies"), help="where the study runs are")
  ap.add_argument("--preset", default="cpu", help="read <runs>/<study>-<preset>")
  ap.add_argument("--dir", action="append", default=[], metavar="STUDY=PATH", help="a study's run directory")
  ap.add_argument("--out", default=None, help="report path (default <runs>/report-<preset>.md)")
  ap.add_argument("--no-reanalyze", action="store_true", help="use the tables the studies wrote")
  args = ap.parse_args(argv)
  dirs = {s: os.path.join(args.runs, f"{s}-{args.preset}") for s in STUDIES}
  for item in args.dir:
    study, sep, path = item.partition("=")
    if not sep or study not in STUDIES:
      ap.error(f"--dir expects STUDY=PATH with STUDY in {', '.join(STUDIES)}, got {item!r}")
    dirs[study] = path
  report = args.out or os.path.join(args.runs, f"report-{args.preset}.md")
  text = build(dirs, report, reanalyze=not args.no_reanalyze)
  print(f"wrote {report}", file=sys.stderr)
  return text


if __name__ == "__main__":
  from experiments import cli
  cli.entry("summary", main)
