"""Bad input and faults, every command alike: a one-line error naming the problem and the flag,
exit status 2, and nothing new in the run directory; run-directory rules (overwrite, resume,
failed starts). Every row fails before compiling anything, so the table is cheap."""

import json
import os

import numpy as np
import pytest

from experiments import cli, darts_cifar, evaluate, random_baseline, tricks_ablation
from jnas import rundir
from jnas.rundir import NoRunError, RunDir, RunExistsError


def _listing(path):
  if not os.path.exists(path):
    return None
  return sorted(os.path.relpath(os.path.join(r, f), path) for r, ds, fs in os.walk(path) for f in fs + ds)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  empty = root / "empty"
  empty.mkdir()
  a_file = root / "a_file"
  a_file.write_text("not a folder")
  rng = np.random.default_rng(0)
  tiny = str(root / "six_px.npz")  # 6x6 images: the second reduction gets 3x3
  np.savez(tiny, images=rng.integers(0, 255, (64, 6, 6, 3), dtype=np.uint8), labels=rng.integers(0, 10, 64),
           test_images=rng.integers(0, 255, (16, 6, 6, 3), dtype=np.uint8), test_labels=rng.integers(0, 10, 16))
  return {"root": str(root), "empty": str(empty), "file": str(a_file), "tiny": tiny}


SEARCH = ["--dataset", "digits", "--preset", "cpu", "--compile-cache", "", "--quiet"]
EVAL = ["--genotype", "DARTS_V2", "--dataset", "digits", "--preset", "cpu", "--compile-cache", "", "--quiet"]

# (command, main, argv (with {placeholders}), message fragment)
ROWS = [
    ("darts_cifar", darts_cifar.main, SEARCH[2:] + ["--dataset", "nope", "--out", "{out}"], "unknown dataset 'nope'"),
    ("darts_cifar", darts_cifar.main, SEARCH[2:] + ["--dataset", "cifar10", "--data-dir", "{root}/missing",
                                                     "--out", "{out}"], "--data-dir {root}/missing: no such folder"),
    ("darts_cifar", darts_cifar.main, SEARCH[2:] + ["--dataset", "cifar10", "--data-dir", "{empty}", "--out", "{out}"],
     "the folder is empty"),
    ("darts_cifar", darts_cifar.main, SEARCH + ["--resume", "--out", "{empty}"], "holds no run"),
    ("darts_cifar", darts_cifar.main, SEARCH + ["--resume", "--out", "{root}/typo"], "does not exist"),
    ("darts_cifar", darts_cifar.main, SEARCH + ["--out", "{file}/run"], "is a file, not a folder"),
    ("darts_cifar", darts_cifar.main, SEARCH + ["--set", "C=abc", "--out", "{out}"], "--set C: expected"),
    ("darts_cifar", darts_cifar.main, SEARCH + ["--set", "primitives=none,conv_9x9", "--out", "{out}"],
     "unknown op(s) ['conv_9x9']"),
    ("darts_cifar", darts_cifar.main, SEARCH[2:] + ["--dataset", "{tiny}", "--layers", "3", "--out", "{out}"],
     "reduction cell 2 at 3x3"),
    ("darts_cifar", darts_cifar.main, SEARCH + ["--seed-lr-scale", "7=2", "--out", "{out}"], "seed 7 is not among"),
    ("darts_cifar", darts_cifar.main, SEARCH + ["--devices", "4", "--out", "{out}"], "--devices 4: 1 device visible"),
    ("darts_cifar", darts_cifar.main, SEARCH + ["--coordinator", "localhost:1", "--num-processes", "2",
                                                "--process-id", "2", "--out", "{out}"], "--process-id 2 is out of range"),
    ("darts_cifar", darts_cifar.main, SEARCH + ["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0",
                                                "--out", "{out}"], "expected HOST:PORT"),
    ("evaluate", evaluate.main, EVAL + ["--digits-size", "16", "--out", "{out}"],
     "the auxiliary head (after cell 5) needs a 8-10 px map"),
    ("evaluate", evaluate.main, EVAL + ["--resume", "--out", "{empty}"], "holds no run"),
    ("evaluate", evaluate.main, EVAL[2:] + ["--genotype", "Genotype(normal=[('conv_9x9', 0)]", "--out", "{out}"], ""),
    ("random_baseline", random_baseline.main, EVAL[2:] + ["--k", "1", "--dataset", "cifar10", "--data-dir", "{empty}",
                                                           "--out", "{out}"], "the folder is empty"),
    ("tricks_ablation", tricks_ablation.main, ["--preset", "test", "--set", "data=cifar10", "--out", "{out}"],
     "CIFAR-10 not found (no --data-dir given)"),
    ("tricks_ablation", tricks_ablation.main, ["--preset", "test", "--resume", "--out", "{empty}"], "holds no run"),
]


@pytest.mark.parametrize("row", range(len(ROWS)), ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_bad_input_is_one_line_and_writes_nothing(row, files, tmp_path, capsys):
  command, main, argv, message = ROWS[row]
  fill = dict(files, out=str(tmp_path / "out"))
  argv = [a.format(**fill) for a in argv]
  before = {p: _listing(p) for p in (fill["out"], files["empty"], files["root"])}
  with pytest.raises(SystemExit) as stop:
    cli.entry(command, main, argv)
  err = capsys.readouterr().err
  assert stop.value.code == 2, err
  assert message.format(**fill) in err, err
  assert "Traceback" not in err
  assert {p: _listing(p) for p in before} == before  # nothing new anywhere


def test_debug_shows_the_traceback(files, tmp_path):
  argv = SEARCH + ["--resume", "--out", files["empty"], "--debug"]
  with pytest.raises(NoRunError):
    cli.entry("darts_cifar", darts_cifar.main, argv)


# ------------------------------------------------------------------------------ run directories
def test_overwrite_keeps_files_the_user_put_there(tmp_path):
  out = str(tmp_path / "run")
  run = RunDir(out, {"a": 1})
  run.write_json("results.json", {"old": True})
  run.write_npz("seed_0/arch.npz", x=np.zeros(2))
  run.log({"epoch": 0})
  run.save(1, {"w": np.zeros(3, np.float32)})
  with open(os.path.join(out, "notes.txt"), "w") as f:
    f.write("mine")
  rundir.note_written(out, "table.md")
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("a study's table")
  with pytest.raises(RunExistsError, match="--resume to continue it, --overwrite"):
    RunDir(out, {"a": 2})
  RunDir(out, {"a": 2}, overwrite=True)
  assert sorted(os.listdir(out)) == ["config.json", "notes.txt"]
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f) == {"a": 2}


def test_resume_needs_a_run_and_a_failed_start_does_not_block(tmp_path):
  out = str(tmp_path / "run")
  with pytest.raises(NoRunError, match="does not exist; check --out, or drop --resume"):
    RunDir(out, {"a": 1}, resume=True)
  assert not os.path.exists(out)
  RunDir(out, {"a": 1})  # a start that then failed: config.json, no checkpoint, no metrics
  run = RunDir(out, {"a": 2})  # the corrected command is not refused
  assert not run.resumed
  run.log({"epoch": 0})
  with pytest.raises(RunExistsError):
    RunDir(out, {"a": 3})
  assert RunDir(out, {"a": 2}, resume=True).resumed


def test_damaged_checkpoint_is_named_and_skipped(tmp_path, capsys):
  from jnas.rundir import CheckpointDamagedError
  run = RunDir(str(tmp_path / "run"), {"a": 1})
  run.save(1, {"w": np.arange(1000, dtype=np.float32)})
  run.save(2, {"w": np.arange(1000, dtype=np.float32) + 1})
  metadata = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(run.checkpoint_dir, "2")) for f in fs
              if f.endswith("_METADATA") or f == "manifest.ocdbt" or f.endswith(".json")]
  assert metadata
  for p in metadata:  # truncated metadata
    with open(p, "r+b") as f:
      f.truncate(max(os.path.getsize(p) // 2, 1))
  state, step = run.restore({"w": np.zeros(1000, np.float32)})
  assert step == 1 and float(state["w"][5]) == 5.0
  assert "is damaged" in capsys.readouterr().err
  for p in [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(run.checkpoint_dir, "1")) for f in fs]:
    with open(p, "r+b") as f:
      f.truncate(0)
  with pytest.raises(CheckpointDamagedError, match="no intact checkpoint"):
    run.restore({"w": np.zeros(1000, np.float32)})


def test_api_checks_its_inputs():
  import jax
  import jax.numpy as jnp
  import jnas
  from jnas import genotypes
  from jnas.supernet import SearchNetwork
  net = jnas.Network(genotypes.DARTS_V2, C=4, layers=3, num_classes=10, auxiliary=True)
  v = jax.eval_shape(net.init_variables, jax.random.key(0))

  def fwd(shape, dtype=jnp.float32, train=False):
    return jax.eval_shape(lambda v, x: net.forward(v["params"], v["batch_stats"], x, train=train), v,
                          jax.ShapeDtypeStruct(shape, dtype))

  with pytest.raises(ValueError, match="uint8; normalise them"):
    fwd((2, 32, 32, 3), jnp.uint8)
  with pytest.raises(ValueError, match="auxiliary head"):
    fwd((2, 16, 16, 3), train=True)
  fwd((2, 16, 16, 3))  # eval mode: no aux head
  with pytest.raises(ValueError, match="reduction cell 1 at 7x7"):
    fwd((2, 7, 7, 3))
  snet = SearchNetwork(C=4, layers=3, num_classes=10)
  sv = jax.eval_shape(snet.init_variables, jax.random.key(0))
  w = {t: jnp.ones((14, 8)) / 8 for t in ("normal", "reduce")}
  with pytest.raises(ValueError, match="SearchNetwork.forward: images are uint8"):
    jax.eval_shape(lambda v, x: snet.forward(v["params"], v["batch_stats"], x, w), sv,
                   jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.uint8))
  from jnas import data as D
  from jnas.train import get_protocol, train_genotypes
  ds = D.load_digits(size=8, channels=3)
  proto = get_protocol("base", preset="cpu")
  bad = D.Split(ds.train.images, ds.train.labels[:-1])
  with pytest.raises(ValueError, match="images but .* labels"):
    train_genotypes([genotypes.DARTS_V2], [0], proto, bad, ds.test, num_classes=10)
  with pytest.raises(ValueError, match="num_classes must be >= 1"):
    train_genotypes([genotypes.DARTS_V2], [0], proto, ds.train, ds.test, num_classes=0)
  with pytest.raises(ValueError, match="labels run from 0 to 9, outside 0..4"):
    train_genotypes([genotypes.DARTS_V2], [0], proto, ds.train, ds.test, num_classes=5)
  with pytest.raises(ValueError, match="float32; train_genotypes takes uint8"):
    train_genotypes([genotypes.DARTS_V2], [0], proto, D.Split(ds.train.images.astype(np.float32), ds.train.labels),
                    ds.test, num_classes=10)


def test_unreachable_coordinator_is_one_line(tmp_path):
  """Process 1 of 2 with no coordinator listening: after JNAS_COORDINATOR_TIMEOUT seconds, one
  line with the address (a subprocess: jax.distributed changes the process for good)."""
  import socket
  import subprocess
  import sys
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  env = dict(os.environ, JNAS_COORDINATOR_TIMEOUT="3", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.darts_cifar", *SEARCH, "--coordinator", f"localhost:{port}",
                         "--num-processes", "2", "--process-id", "1", "--out", str(tmp_path / "out")],
                        env=env, capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert f"--coordinator localhost:{port}: no answer within 3 s" in proc.stderr
  assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("processes, calls", [(1, 6), (2, 2)])
def test_progress_gathers_at_the_same_steps_in_every_process(monkeypatch, processes, calls):
  """``Member.progress`` may gather over processes, so in a multi-process job the loop calls it at
  steps every process agrees on (each epoch's last), not when a process's own clock says a second
  has passed: with a clock that moves 2 s per read, one process asks at every step (3 x 2 epochs),
  each of two processes only at the 2 epochs' ends."""
  from jnas import loop
  from jnas.progress import Progress
  clock = iter(range(0, 10_000, 2))
  monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
  monkeypatch.setattr(loop.jax, "process_count", lambda: processes)
  asked = []
  member = loop.Member("m", lambda st, e: None, lambda st, e, i, ctx: st + 1, lambda st, e: [],
                       lambda st: np.ones(1, bool), lambda st: asked.append(st) or {"loss": 0.0})
  out = loop.run_epochs([member], [0], epochs=2, steps_per_epoch=3, bar=Progress(6, quiet=True))
  assert out == [6] and len(asked) == calls
