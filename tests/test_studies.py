"""The paper's studies (experiments/*): run directories, tables, rank statistics, resume, summary.

One study (macro_micro: one DARTS and one modified-op genotype) trains for real through
``jnas.train.train_genotypes`` on generated 32-px images (base protocol, 1 epoch, C=4, 3 cells): the
end-to-end check. (About 85 s of CPU for the whole file, two thirds of it compiling the two networks.) The others run
their full plumbing with a stand-in trainer that returns chosen accuracy curves, so their tables can
be checked against statistics computed by hand, and a whole module costs milliseconds, not compiles.
"""

import importlib
import json
import os

import numpy as np
import pytest

from experiments import common, summary
from jnas import metrics
from jnas.rundir import RunExistsError

STUDIES = ("tricks_ablation", "seed_ranking", "depth_gap", "cell_count", "macro_micro")
TINY = ["--preset", "test", "--quiet"]


class StandIn:
  """A ``train_genotypes`` stand-in: curve of (genotype, seed, protocol) from ``acc`` or a hash.

  ``acc`` maps (genotype hash, seed, protocol name, layers) to a final accuracy; the curve rises by
  1 p.p. per epoch to it. ``fail_after`` raises (a killed job) once that many calls have returned.
  It writes a small run directory at ``out`` as the real function does.
  """

  def __init__(self, acc=None, fail_after=None):
    self.acc, self.fail_after, self.calls = acc or {}, fail_after, []

  def __call__(self, genotypes, seeds, protocol, train, test, *, num_classes, out=None, resume=False, quiet=False,
               eval_batch_size=500, devices=None, parallel_mode="seeds", pack_size=None):
    if self.fail_after is not None and len(self.calls) >= self.fail_after:
      raise KeyboardInterrupt("stand-in killed")
    self.calls.append((tuple(g.hash() for g in genotypes), protocol.name, protocol.layers))
    recs = []
    for gi, g in enumerate(genotypes):
      for s in seeds:
        key = (g.hash(), s, protocol.name, protocol.layers)
        final = self.acc.get(key, 50.0 + int(g.hash()[:4], 16) % 1000 / 100 + s + protocol.layers)
        curve = [final - (protocol.epochs - 1 - e) for e in range(protocol.epochs)]
        recs.append(dict(genotype=str(g), genotype_hash=g.hash(), genotype_index=gi, seed=s, test_acc=curve,
                         train_loss=[1.0] * len(curve), train_acc=curve, final_acc=curve[-1], best_acc=max(curve),
                         best_epoch=int(np.argmax(curve)), params=1, status="ok"))
    if out is not None:
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"results": recs}, f)
    return recs


def run_study(name, out, *extra):
  return importlib.import_module(f"experiments.{name}").main(TINY + ["--out", str(out), *extra])


# ------------------------------------------------------------------------------ real training
REAL = ["--set", "n_darts=1", "--set", "n_modified=1", "--set", "protocol=base", "--set",
        'scale={"epochs": 1, "C": 4, "layers": 3, "batch_size": 16, "train_images": 32, "test_images": 32}']


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, fast_compile):
  """macro_micro trained for real: one DARTS and one modified-op genotype, base protocol (no aux head
  or drop path: a smaller program to compile), 1 epoch, C=4, 3 cells."""
  out = tmp_path_factory.mktemp("real") / "macro_micro"
  return out, run_study("macro_micro", out, *REAL)


def test_real_run_writes_a_complete_run_directory(real_run):
  out, headline = real_run
  for name in ("config.json", "genotypes.json", "protocols.json", "metrics.jsonl", "results.json", "table.md",
               "headline.json", "histograms.png"):
    assert os.path.exists(out / name), name
  for group in ("darts", "modified"):  # each unit is a complete train_genotypes run directory
    unit = out / "train" / group / "000"
    for name in ("config.json", "metrics.jsonl", "results.json"):
      assert os.path.exists(unit / name), (unit, name)
    assert os.path.exists(str(unit) + ".json")
  records = common.load_records(str(out))
  assert [r["group"] for r in records] == ["darts", "modified"]
  assert all(len(r["test_acc"]) == 1 and r["status"] == "ok" and r["seed"] == 2 for r in records)
  sets = common.read_genotypes(str(out))
  assert [r["genotype_hash"] for r in records] == [sets["darts"][0].hash(), sets["modified"][0].hash()]
  assert sets["modified"][0].ops() <= {"conv_1x1", "conv_3x3", "conv_7x7", "conv_11x11", "max_pool_3x3",
                                       "max_pool_5x5", "skip_connect"}
  # the table's shift is the difference of the recorded accuracies
  assert headline["shift_best"] == pytest.approx(records[1]["best_acc"] - records[0]["best_acc"])
  assert headline["shift_final"] == pytest.approx(records[1]["final_acc"] - records[0]["final_acc"])
  log = [json.loads(line) for line in open(out / "metrics.jsonl")]
  assert [r["event"] for r in log] == ["unit", "unit", "done"] and all(r["runs_per_hour"] > 0 for r in log[:2])


def test_real_run_resume_skips_finished_genotypes(real_run, monkeypatch):
  out, headline = real_run
  stand_in = StandIn()
  monkeypatch.setattr(common, "train_genotypes", stand_in)
  assert run_study("macro_micro", out, "--resume", *REAL) == headline
  assert stand_in.calls == []


# ------------------------------------------------------------------------------- stand-in runs
@pytest.fixture(scope="module")
def stand_in_runs(tmp_path_factory):
  """Every study at the test preset with the stand-in trainer."""
  root = tmp_path_factory.mktemp("studies")
  mp = pytest.MonkeyPatch()
  mp.setattr(common, "train_genotypes", StandIn())
  try:
    heads = {name: run_study(name, root / name) for name in STUDIES}
  finally:
    mp.undo()
  return root, heads


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_writes_its_run_directory_and_table(stand_in_runs, name):
  root, heads = stand_in_runs
  out = root / name
  for f in ("config.json", "genotypes.json", "protocols.json", "metrics.jsonl", "results.json", "table.md",
            "headline.json"):
    assert os.path.exists(out / f), f
  cfg = common.read_config(str(out))
  table = open(out / "table.md").read()
  assert table.startswith("## ") and "| " in table and "paper" in table
  pngs = [f for f in os.listdir(out) if f.endswith(".png")]
  assert pngs and all(f"]({p})" in table for p in pngs)
  n_units = {"tricks_ablation": len(cfg.get("protocols", [])) * cfg.get("n", 0),
             "seed_ranking": cfg.get("n"), "depth_gap": 2 * cfg.get("n", 0),
             "cell_count": len(cfg.get("layers", [])) * cfg.get("n", 0),
             "macro_micro": cfg.get("n_darts", 0) + cfg.get("n_modified", 0)}[name]
  log = [json.loads(line) for line in open(out / "metrics.jsonl")]
  assert sum(r["event"] == "unit" for r in log) == n_units
  assert len(common.load_records(str(out))) == n_units * len(cfg["seeds"])


def test_macro_micro_samples_each_op_set(stand_in_runs):
  root, _ = stand_in_runs
  sets = common.read_genotypes(str(root / "macro_micro"))
  from jnas import space
  assert set().union(*(g.ops() for g in sets["modified"])) <= set(space.MACRO_MICRO_PRIMITIVES) - {"none"}
  assert set().union(*(g.ops() for g in sets["darts"])) <= set(space.PRIMITIVES) - {"none"}


def test_summary_renders_every_study(stand_in_runs, tmp_path):
  root, _ = stand_in_runs
  report = tmp_path / "report.md"
  text = summary.main(["--runs", str(root), "--out", str(report)] +
                      [f"--dir={s}={root / s}" for s in STUDIES])
  assert text == open(report).read()
  for title in ("Training-protocol ablation", "Seed study", "Depth gap", "Number of cells", "Macro vs micro"):
    assert title in text
  assert "Not run yet" not in text
  for link in __import__("re").findall(r"\]\(([^)]+\.png)\)", text):
    assert os.path.exists(tmp_path / link), link
  partial = summary.build({"depth_gap": str(root / "depth_gap")}, str(tmp_path / "one.md"))
  assert "Not run yet: tricks_ablation" in partial


# ----------------------------------------------------------------------- hand-computed statistics
def _acc_for(n, values):
  """Stand-in accuracies {(hash, seed, protocol, layers): acc} from {(index, seed, protocol, layers): acc},
  for the first n genotypes the test preset samples."""
  gs = common.sample_genotypes(dict(common.COMMON_DEFAULTS), n)
  return {(gs[i].hash(), seed, proto, layers): v for (i, seed, proto, layers), v in values.items()}


def test_seed_ranking_statistics_match_hand_computed(tmp_path, monkeypatch):
  a, b = [90.0, 91.0, 92.0, 93.0], [90.5, 92.5, 91.0, 93.3]
  # pairs (i<j): only (1, 2) is discordant -> tau = (5 - 1) / 6; abs deltas 0.5, 1.5, 1.0, 0.3
  acc = _acc_for(4, {**{(i, 2, "C+D+A", 3): v for i, v in enumerate(a)},
                            **{(i, 3, "C+D+A", 3): v for i, v in enumerate(b)}})
  monkeypatch.setattr(common, "train_genotypes", StandIn(acc))
  h = run_study("seed_ranking", tmp_path / "sr", "--set", "n=4")
  for which in ("final", "best"):
    assert h[which]["kendall_tau"] == pytest.approx(4 / 6)
    assert h[which]["mean_abs_delta"] == pytest.approx(0.825)
    assert h[which]["max_abs_delta"] == pytest.approx(1.5)
    assert h[which]["std_abs_delta"] == pytest.approx(np.std([0.5, 1.5, 1.0, 0.3], ddof=1))
  assert "| final epoch | 4 | 0.67 |" in open(tmp_path / "sr" / "table.md").read()
  # curves rise 1 p.p. per epoch to the final value: every epoch ranks like the final one
  assert h["epoch_tau"]["raw"] == pytest.approx([1.0, 1.0])


def test_depth_gap_statistics_match_hand_computed(tmp_path, monkeypatch):
  x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
  # ranks (1 = best): x -> 4 3 2 1, y -> 3 4 1 2: every architecture moves 1; pairs (0,1), (2,3)
  # discordant -> tau = (4 - 2) / 6
  acc = _acc_for(4, {**{(i, 2, "C+D+A", 3): v for i, v in enumerate(x)},
                            **{(i, 2, "C+D+A", 4): v for i, v in enumerate(y)}})
  monkeypatch.setattr(common, "train_genotypes", StandIn(acc))
  h = run_study("depth_gap", tmp_path / "dg", "--set", "n=4")
  assert h["best"]["kendall_tau"] == pytest.approx(1 / 3)
  assert h["best"]["max_rank_shift"] == 1.0 and h["best"]["mean_rank_shift"] == 1.0
  assert h["best"]["mean_acc"] == pytest.approx([2.5, 2.5])
  assert "| best epoch | 4 | 0.33 |" in open(tmp_path / "dg" / "table.md").read()


def test_tricks_ablation_table_matches_hand_computed(tmp_path, monkeypatch):
  vals = {"base": [80.0, 82.0, 84.0], "C+D+A": [85.0, 86.0, 90.0]}
  acc = _acc_for(3, {(i, 2, p, 3): v for p, vs in vals.items() for i, v in enumerate(vs)})
  monkeypatch.setattr(common, "train_genotypes", StandIn(acc))
  h = run_study("tricks_ablation", tmp_path / "ta", "--set", "n=3")
  assert h["mean_final"] == pytest.approx({"base": 82.0, "C+D+A": 87.0})
  assert h["ladder_gap_best"] == pytest.approx(5.0)
  table = open(tmp_path / "ta" / "table.md").read()
  # base: mean 82, sample std 2; C+D+A: mean 87, std sqrt(7)
  assert "| base | 3 | 82.00 ± 2.00 | 80.00 | 84.00 |" in table
  assert f"| C+D+A (DARTS) | 3 | 87.00 ± {np.sqrt(7):.2f} | 85.00 | 90.00 |" in table


# ----------------------------------------------------------------------------------- resume
def test_resume_skips_completed_genotypes(tmp_path, monkeypatch):
  out, one = tmp_path / "cc", ("--set", "pack_size=1")  # one train_genotypes call per unit
  killed = StandIn(fail_after=3)
  monkeypatch.setattr(common, "train_genotypes", killed)
  with pytest.raises(KeyboardInterrupt):
    run_study("cell_count", out, *one)  # 2 depths x 2 genotypes: killed in the 4th unit
  assert len(killed.calls) == 3 and not os.path.exists(out / "results.json")
  with pytest.raises(RunExistsError):
    run_study("cell_count", out, *one)  # neither --resume nor --overwrite
  rest = StandIn()
  monkeypatch.setattr(common, "train_genotypes", rest)
  h = run_study("cell_count", out, "--resume", *one)
  last = common.read_genotypes(str(out))["darts"][1]
  assert rest.calls == [((last.hash(),), "C+D+A", 4)]  # only the unit the kill interrupted
  assert len(common.load_records(str(out))) == 4
  fresh = StandIn()
  monkeypatch.setattr(common, "train_genotypes", fresh)
  assert run_study("cell_count", tmp_path / "cc2", *one) == h and len(fresh.calls) == 4


def test_units_of_one_setting_train_in_one_call(tmp_path, monkeypatch):
  # pack_size=2: the 2 genotypes of each depth go to train_genotypes together, and the study's
  # records and table are those of one call per unit
  ref = StandIn()
  monkeypatch.setattr(common, "train_genotypes", ref)
  h1 = run_study("cell_count", tmp_path / "one", "--set", "pack_size=1")
  killed = StandIn(fail_after=1)
  monkeypatch.setattr(common, "train_genotypes", killed)
  with pytest.raises(KeyboardInterrupt):
    run_study("cell_count", tmp_path / "packed", "--set", "pack_size=2")
  sets = common.read_genotypes(str(tmp_path / "packed"))["darts"]
  assert [len(c[0]) for c in killed.calls] == [2] and killed.calls[0][0] == tuple(g.hash() for g in sets)
  rest = StandIn()
  monkeypatch.setattr(common, "train_genotypes", rest)
  assert run_study("cell_count", tmp_path / "packed", "--resume", "--set", "pack_size=2") == h1
  assert [len(c[0]) for c in rest.calls] == [2]  # the second depth's pair
  assert common.load_records(str(tmp_path / "packed")) == common.load_records(str(tmp_path / "one"))
  train = tmp_path / "packed" / "train"
  assert sorted(os.listdir(train / os.listdir(train)[0])) == ["000-001", "000.json", "001.json"]
  units = [common.Unit(group, i, g, "p") for group, i, g in
           (("a", 0, sets[0]), ("a", 1, sets[1]), ("a", 2, sets[0]), ("a", 3, sets[1]), ("b", 0, sets[0]))]
  assert common.unit_batches(units, 3) == [[0, 1, 2], [3], [4]]  # at most 3, and one group per batch


def test_bad_settings_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown setting 'nn'"):
    common.make_config("seed_ranking", {"cpu": {}}, "cpu", ["nn=3"])
  with pytest.raises(ValueError, match="unknown preset"):
    common.make_config("seed_ranking", {"cpu": {}}, "gpu")
  with pytest.raises(ValueError, match="unknown protocol"):
    run_study("tricks_ablation", tmp_path / "x", "--set", 'protocols=["base", "Z"]')
  with pytest.raises(ValueError, match="at least 2 seeds"):
    run_study("seed_ranking", tmp_path / "y", "--set", "seeds=[2]")
  with pytest.raises(SystemExit):
    run_study("depth_gap", tmp_path / "z", "--resume", "--overwrite")
