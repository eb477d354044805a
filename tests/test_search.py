"""The DARTS search job: run directory, seeds batched vs alone, resume, NaN, bad input.

A tiny supernet (C=4, 3 cells, 2 intermediate nodes, 4 ops, 8x8 images) keeps compile time low;
the job does not depend on the size.
"""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas.data as D
from jnas.loop import Interrupted
from jnas.search import METHODS, run

OPS = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
TINY = dict(C=4, layers=3, steps=1, primitives=OPS, batch_size=8, epochs=2)  # (1-node cells compile fastest)


# ------------------------------------------------------------------------------------ the job
def _data():
  ds = D.load_digits(size=8, channels=3)
  w, a = D.search_split(ds.train, seed=0)
  return ds, D.Split(w.images[:32], w.labels[:32]), D.Split(a.images[:32], a.labels[:32])


CFG = METHODS["darts"].config(order="first", conv_impl="xla", **TINY)


def _run(*args, **kw):
  return run.run_search("darts", CFG, *args, **kw)


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory, fast_compile):
  ds, w, a = _data()
  out = str(tmp_path_factory.mktemp("search") / "run")
  res = _run([0, 1], w, a, out=out, quiet=True, mean=ds.mean, std=ds.std, eval_images=16, monitor=("hessian",),
             hessian_iters=6)
  return out, res


def test_run_directory_is_complete(batched_run):
  out, res = batched_run
  for name in ("config.json", "metrics.jsonl", "results.json", "stages.json", "seed_0/genotype.json",
               "seed_1/arch.npz"):
    assert os.path.exists(os.path.join(out, name)), name
  loaded = run.load_search(out)
  assert loaded["genotypes"][0] == res["genotypes"][0] and loaded["finished"] and loaded["method"] == "darts"
  assert len(loaded["history"]) == 2 * 2  # epochs x seeds
  rec = loaded["history"][-1]
  for k in ("stage", "epoch", "seed", "train_loss", "train_acc", "val_loss", "val_acc", "eval_acc", "lr", "time",
            "genotype", "entropy_normal", "entropy_reduce", "edge_entropy", "skip_share", "hessian_max", "hessian_min"):
    assert k in rec, k
  for r in loaded["history"]:  # the monitor's diagnostics, per epoch and seed
    assert r["hessian_max"] >= r["hessian_min"] and np.isfinite(r["hessian_max"])
    assert 0 < r["edge_entropy"] <= np.log(len(OPS)) + 1e-6 and 0 <= r["skip_share"] <= 1
  assert len({r["hessian_max"] for r in loaded["history"]}) == 4  # per seed and epoch
  with pytest.raises(ValueError, match="unknown monitor"):
    _run([0], *_data()[1:], monitor=("hesian",))
  assert rec["epoch"] == 1  # 0-based
  assert rec["lr"] == pytest.approx(0.001 + 0.5 * 0.024 * (1 + np.cos(np.pi / 2)), rel=1e-6)  # epoch 1 of 2
  np.testing.assert_allclose(loaded["arch"][1]["normal"], res["arch"][1]["normal"])
  assert not np.allclose(res["arch"][0]["normal"], res["arch"][1]["normal"])  # seeds differ
  with open(os.path.join(out, "seed_0", "genotype.json")) as f:
    assert json.load(f)["normal"]


def test_seed_alone_equals_seed_in_batch(batched_run):
  """Seed 1 run alone (one single-seed program) follows the same trajectory as inside the batch."""
  _, res = batched_run
  ds, w, a = _data()
  alone = _run([1], w, a, quiet=True, mean=ds.mean, std=ds.std, eval_images=0, seed_batching="loop")
  assert alone["genotypes"][1] == res["genotypes"][1]
  # float32 sums run in another order under vmap; after 8 Adam steps of 3e-4 the alphas (about
  # 1e-3 in size) differ by at most ~5e-6 here.
  for k in ("normal", "reduce"):
    np.testing.assert_allclose(alone["arch"][1][k], res["arch"][1][k], rtol=0, atol=2e-5)


def test_resume_equals_uninterrupted(batched_run, tmp_path):
  out_full, res = batched_run
  ds, w, a = _data()
  out = str(tmp_path / "killed")
  kw = dict(quiet=True, mean=ds.mean, std=ds.std, eval_images=16)
  # stopped in the middle of epoch 2 (step 6 of 8): resumed from that step, not from the epoch
  with pytest.raises(Interrupted, match="step 2/4") as stop:
    _run([0, 1], w, a, out=out, stop_at=6, **kw)
  assert stop.value.exit_code == 1 and stop.value.position == 6
  assert not os.path.exists(os.path.join(out, "results.json"))
  assert not run.load_search(out)["finished"]
  with pytest.raises(FileExistsError, match="--resume"):
    _run([0, 1], w, a, out=out, **kw)
  with pytest.raises(ValueError, match="config differs"):
    _run([0, 2], w, a, out=out, resume=True, **kw)
  resumed = _run([0, 1], w, a, out=out, resume=True, **kw)
  for s in (0, 1):
    assert resumed["genotypes"][s] == res["genotypes"][s]
    np.testing.assert_array_equal(resumed["arch"][s]["normal"], res["arch"][s]["normal"])
  assert [r["epoch"] for r in run.load_search(out)["history"]] == [0, 0, 1, 1]


def test_nan_seed_stops_alone(batched_run):
  """A seed whose weights hold a NaN keeps its state and is marked dead; the other one steps."""
  ds, w, a = _data()
  progs = run._programs(METHODS["darts"], CFG, 4, 0, "null", tuple(ds.mean), tuple(ds.std), "vmap", (8, 8, 3))
  state = progs.init(jnp.stack([jax.random.key(0), jax.random.key(1)]))
  poison = jax.tree.map(lambda p: p.at[1].set(jnp.nan), state.params)
  state = state._replace(params=poison)
  before = jax.device_get(state)
  sums = jax.tree.map(lambda z: jnp.broadcast_to(z, (2,)), progs.sums)
  wi, wl, ai, al = (jnp.asarray(x) for x in (w.images, w.labels, a.images, a.labels))
  pw, pa = progs.perms(state.key, 0, 32, 32)
  new, m = progs.step(state, sums, wi, wl, ai, al, pw, pa, jnp.int32(0))
  assert list(np.asarray(new.alive)) == [True, False]
  assert list(np.asarray(new.step)) == [1, 0]
  np.testing.assert_array_equal(np.asarray(new.arch["normal"][1]), before.arch["normal"][1])
  assert not np.array_equal(np.asarray(new.arch["normal"][0]), before.arch["normal"][0])


def test_bad_inputs():
  ds, w, a = _data()
  with pytest.raises(ValueError, match="distinct"):
    _run([0, 0], w, a)
  with pytest.raises(ValueError, match="fewer than one batch"):
    _run([0], D.Split(w.images[:4], w.labels[:4]), a)
  with pytest.raises(ValueError, match="unknown search method 'dartz'"):
    run.run_search("dartz", CFG, [0], w, a)
  with pytest.raises(ValueError, match="takes a GDASConfig"):
    run.run_search("gdas", CFG, [0], w, a)
  with pytest.raises(ValueError, match="seed_batching"):
    run.make_epoch_fns(METHODS["darts"](CFG, 4).stage(0, None).method, 8, mean=ds.mean, std=ds.std,
                       seed_batching="pmap")


def test_cli_writes_a_run_and_resumes(batched_run, tmp_path, capsys):
  """``python -m experiments.darts_cifar`` on an .npz dataset, then --resume of the finished run."""
  from experiments import darts_cifar
  ds, _, _ = _data()
  npz = str(tmp_path / "digits8.npz")
  np.savez(npz, images=ds.train.images, labels=ds.train.labels, test_images=ds.test.images,
           test_labels=ds.test.labels)
  out = str(tmp_path / "cli")
  argv = ["--dataset", npz, "--subset", "64", "--split-seed", "0", "--epochs", "2", "--layers", "3",
          "--channels", "4", "--set", "steps=1", "--set", "primitives=" + ",".join(OPS), "--batch-size", "8",
          "--order", "first", "--set", "conv_impl=xla", "--seeds", "0..1", "--eval-images", "16", "--out", out,
          "--quiet", "--compile-cache", ""]
  res = darts_cifar.main(argv)
  assert set(res["genotypes"]) == {0, 1}
  printed = capsys.readouterr().out
  assert "seed 0:" in printed and "Genotype(normal=" in printed
  assert "traces.png" in printed and os.path.getsize(os.path.join(out, "traces.png")) > 1000  # the figure
  loaded = run.load_search(out)
  assert loaded["config"]["dataset"] == npz and loaded["genotypes"][1] == res["genotypes"][1]
  from experiments import cli
  capsys.readouterr()
  with pytest.raises(SystemExit) as stop:
    cli.entry("darts_cifar", darts_cifar.main, argv)
  assert stop.value.code == 2 and "already holds a run; pass --resume" in capsys.readouterr().err
  again = darts_cifar.main(argv + ["--resume"])  # nothing left to do: same result
  assert again["genotypes"] == res["genotypes"]


def test_cli_seed_parsing_and_errors(capsys):
  from experiments import cli, darts_cifar
  assert cli.parse_seeds("0..3,8") == [0, 1, 2, 3, 8]
  with pytest.raises(Exception, match="bad seed list"):
    cli.parse_seeds("a..b")
  for argv, message in ((["--set", "primitives=none,conv_9x9"], "unknown op(s) ['conv_9x9']"),
                        (["--set", "tau=3"], "method 'darts' has no setting 'tau'"),
                        (["--method", "gdas", "--set", "order=third"], "unknown order 'third'"),
                        (["--method", "nope"], "unknown method 'nope'")):
    with pytest.raises(SystemExit):
      darts_cifar.main(["--dataset", "digits", "--compile-cache", ""] + argv)
    assert message in capsys.readouterr().err, argv
  darts_cifar.main(["--list-methods"])
  listed = capsys.readouterr().out
  assert all(name in listed for name in METHODS)


def test_damaged_checkpoint_falls_back_to_the_previous_one(batched_run, tmp_path, capsys):
  """A truncated array file in the newest checkpoint: resume warns, moves it aside and continues
  from the one before, to the same result; with every checkpoint damaged it says what to do."""
  from jnas.rundir import CheckpointDamagedError
  _, res = batched_run
  ds, w, a = _data()
  out = str(tmp_path / "damaged")
  kw = dict(quiet=True, mean=ds.mean, std=ds.std, eval_images=16)
  with pytest.raises(Interrupted):
    _run([0, 1], w, a, out=out, stop_at=6, **kw)
  ckpt = os.path.join(out, "checkpoints")
  assert sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) == [4, 6]

  def damage(step):
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(ckpt, str(step))) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
      f.truncate(os.path.getsize(biggest) // 3)

  damage(6)
  capsys.readouterr()
  resumed = _run([0, 1], w, a, out=out, resume=True, **kw)
  err = capsys.readouterr().err
  assert "checkpoints/6 is damaged" in err and "previous checkpoint, 4" in err
  assert os.path.isdir(os.path.join(out, "damaged-checkpoints", "6"))
  for s in (0, 1):
    np.testing.assert_array_equal(resumed["arch"][s]["normal"], res["arch"][s]["normal"])
  out2 = str(tmp_path / "all-damaged")
  with pytest.raises(Interrupted):
    _run([0, 1], w, a, out=out2, stop_at=2, **kw)
  ckpt = os.path.join(out2, "checkpoints")
  for n in os.listdir(ckpt):
    if n.isdigit():
      damage(int(n))
  with pytest.raises(CheckpointDamagedError, match="no intact checkpoint is left.*--overwrite"):
    _run([0, 1], w, a, out=out2, resume=True, **kw)


def test_sigint_mid_epoch_checkpoints_and_resumes(batched_run, tmp_path):
  """A real SIGINT after the first step: checkpoint at that step, exit code 130, resume equal."""
  import signal
  import threading
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signal handlers need the main thread")
  _, res = batched_run
  ds, w, a = _data()
  out = str(tmp_path / "sigint")

  class Stream(io.StringIO):  # sends SIGINT once the first step has run ("compiled in ...")
    sent = False

    def write(self, text):
      if "compiled in" in text and not self.sent:
        Stream.sent = True
        os.kill(os.getpid(), signal.SIGINT)
      return super().write(text)

  stream = Stream()
  with pytest.raises(Interrupted) as stop:
    _run([0, 1], w, a, out=out, mean=ds.mean, std=ds.std, eval_images=16, progress_stream=stream)
  assert stop.value.signal_name == "SIGINT" and stop.value.exit_code == 130 and stop.value.position == 1
  assert "compiling" in stream.getvalue()
  resumed = _run([0, 1], w, a, out=out, resume=True, quiet=True, mean=ds.mean, std=ds.std, eval_images=16)
  for s in (0, 1):
    np.testing.assert_array_equal(resumed["arch"][s]["normal"], res["arch"][s]["normal"])


def test_one_seed_diverges_the_other_goes_on(batched_run):
  """Per-seed learning rates in one vmapped program: seed 1 at 1e30 x the rate diverges and stops
  with a finite state; seed 0 follows, bit for bit, its trajectory of the batched run (a NaN in one
  seed must not reach the others: XLA:CPU's batched 1x1-conv gradients mix seeds, 0 * NaN)."""
  _, res = batched_run
  ds, w, a = _data()
  stream = io.StringIO()
  got = _run([0, 1], w, a, mean=ds.mean, std=ds.std, eval_images=16, seed_lr_scale={1: 1e30},
             progress_stream=stream)
  assert got["alive"] == {0: True, 1: False}
  for k in ("normal", "reduce"):
    np.testing.assert_array_equal(got["arch"][0][k], res["arch"][0][k])
    assert np.all(np.isfinite(got["arch"][1][k]))
  assert "1 seed(s) go on" in stream.getvalue()
  with pytest.raises(ValueError, match="seed_lr_scale"):
    _run([0, 1], w, a, quiet=True, seed_lr_scale={5: 2.0})
