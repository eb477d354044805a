"""experiments.evaluate and experiments.random_baseline end to end on digits (tiny protocol).

The protocol equals tests/test_train.py's TINY, so when both files run in one session the DARTS_V2
programs are compiled once (jnas.train.programs is cached per genotype and protocol).
"""

import json
import os

import jax
import numpy as np
import pytest

import jnas
from experiments import evaluate, random_baseline
from jnas import metrics

TINY_ARGS = ["--protocol", "darts", "--set", "C=4", "--set", "layers=1", "--set", "epochs=2", "--set", "batch_size=32",
             "--set", "auxiliary_weight=0", "--set", "cutout_length=4", "--set", "train_images=192",
             "--set", "test_images=100", "--dataset", "digits", "--digits-size", "16", "--seeds", "0..1", "--quiet"]


@pytest.fixture(scope="module")
def eval_run(fast_compile, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("runs") / "eval")
  results = evaluate.main(["--genotype", "DARTS_V2", "--out", out] + TINY_ARGS)
  return out, results


def test_evaluate_writes_a_complete_run_dir(eval_run, capsys):
  out, results = eval_run
  assert sorted(os.listdir(out)) == [".jnas-run.json", "checkpoints", "config.json", "metrics.jsonl", "results.json",
                                     "summary.json"]
  with open(os.path.join(out, ".jnas-run.json")) as f:  # what --overwrite removes
    assert json.load(f) == ["results.json", "summary.json"]
  saved = json.load(open(os.path.join(out, "results.json")))
  assert saved["results"] == results and len(results) == 2
  assert saved["meta"]["dataset"] == "digits" and saved["meta"]["method"] == "DARTS_V2"
  assert saved["protocol"]["C"] == 4 and saved["protocol"]["layers"] == 1
  lines = open(os.path.join(out, "metrics.jsonl")).read().splitlines()
  assert len(lines) == 2 * 2  # epochs x seeds
  summary = json.load(open(os.path.join(out, "summary.json")))
  row = summary["rows"][0]
  np.testing.assert_allclose(row["final_mean"], np.mean([r["final_acc"] for r in results]))
  assert row["label"] == "DARTS_V2" and row["seeds"] == [0, 1]


def test_evaluate_resume_of_a_finished_run_gives_the_same_results(eval_run):
  out, results = eval_run
  assert evaluate.main(["--genotype", "DARTS_V2", "--out", out, "--resume"] + TINY_ARGS) == results
  with pytest.raises(FileExistsError):
    evaluate.main(["--genotype", "DARTS_V2", "--out", out] + TINY_ARGS)


def test_random_baseline_and_ri_table(eval_run, tmp_path, capsys):
  eval_out, eval_results = eval_run
  out = str(tmp_path / "random")
  summary = random_baseline.main(["--k", "1", "--sample-seed", "3", "--out", out, "--searched", eval_out] + TINY_ARGS)
  files = set(os.listdir(out))
  assert {"config.json", "metrics.jsonl", "results.json", "genotypes.json", "summary.json", "ri_table.json",
          "checkpoints"} <= files
  archs = json.load(open(os.path.join(out, "genotypes.json")))
  assert archs["text"] == [str(g) for g in jnas.random_genotypes(jax.random.key(3), 1)]
  rand = json.load(open(os.path.join(out, "results.json")))["results"]
  want = metrics.relative_improvement(np.mean([r["final_acc"] for r in eval_results]),
                                      np.mean([r["final_acc"] for r in rand]))
  (entry,) = summary["ri_table"]
  assert (entry["method"], entry["dataset"]) == ("DARTS_V2", "digits")
  np.testing.assert_allclose(entry["ri"], want)
  text = capsys.readouterr().out
  assert "| DARTS_V2 |" in text and "RI (%)" in text
  # table only, from the two finished runs
  table = random_baseline.main(["--random-runs", out, "--searched", eval_out, "--metric", "best"])["ri_table"]
  best = metrics.relative_improvement(np.mean([r["best_acc"] for r in eval_results]),
                                      np.mean([r["best_acc"] for r in rand]))
  np.testing.assert_allclose(table[0]["ri"], best)


def test_genotype_and_argument_errors(tmp_path, capsys):
  for bad, msg in (("DARTS_V3", "unknown genotype 'DARTS_V3'"), ("Genotype(normal=[('sep_conv_3x3', 9)])", "genotype")):
    with pytest.raises(SystemExit):
      evaluate.main(["--genotype", bad, "--out", str(tmp_path / "x")] + TINY_ARGS)
    assert msg in capsys.readouterr().err
  with pytest.raises(SystemExit):
    evaluate.main(["--genotype", "DARTS_V2", "--protocol", "dart"])
  assert "unknown protocol 'dart'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    evaluate.main(["--genotype", "DARTS_V2", "--set", "chanels=3"])
  assert "unknown protocol field 'chanels'" in capsys.readouterr().err
  assert evaluate.parse_seeds("0..3,7") == [0, 1, 2, 3, 7]
  with pytest.raises(ValueError):
    evaluate.parse_seeds("3..1")


def test_genotype_from_json_and_text(tmp_path):
  g = jnas.genotypes.PDARTS
  d = tmp_path / "search"
  d.mkdir()
  (d / "genotype.json").write_text(g.to_json())
  assert evaluate.resolve_genotypes(str(d)) == [("search", g)]
  assert evaluate.resolve_genotypes(str(d / "genotype.json")) == [("search", g)]
  (tmp_path / "many.json").write_text(json.dumps([g.to_dict(), jnas.genotypes.DARTS_V1.to_dict()]))
  assert [x for _, x in evaluate.resolve_genotypes(str(tmp_path / "many.json"))] == [g, jnas.genotypes.DARTS_V1]
  assert evaluate.resolve_genotypes(str(g))[0][1] == g
  assert evaluate.resolve_genotypes(g.to_ptdarts_str())[0][1] == g


def test_shared_flags_mean_the_same_on_every_command():
  import argparse
  from experiments import cli, darts_cifar
  p = argparse.ArgumentParser()
  evaluate.add_common_args(p)
  prot = evaluate.protocol_from_args(p.parse_args(["--epochs", "1", "--layers", "2", "--channels", "6",
                                                   "--batch-size", "16"]))
  assert (prot.epochs, prot.layers, prot.C, prot.batch_size) == (1, 2, 6, 16)
  assert evaluate.protocol_from_args(p.parse_args(["--epochs", "1", "--set", "epochs=3"])).epochs == 3  # --set wins
  search = darts_cifar.build_parser().parse_args(["--epochs", "1", "--layers", "4", "--channels", "6",
                                                  "--batch-size", "16"])
  assert cli.overrides(search) == ["epochs=1", "layers=4", "C=6", "batch_size=16"]
