"""Seeds and batches over devices (``jnas.parallel``): two fake CPU devices in a subprocess (the
XLA flag must be set before JAX starts). Results equal the one-device run: exactly for seeds
(each device runs the same per-seed program), to float tolerance for data parallelism (batch-norm
statistics and gradient sums over the split batch add in another order)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def child():
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"),
             JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(HERE))
  proc = subprocess.run([sys.executable, os.path.join(HERE, "helpers", "parallel_child.py")], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout)


@pytest.mark.parametrize("mode", ["seeds", "data"])
def test_one_step_on_two_devices_equals_one_device(child, mode):
  one, two = child["step_one"], child[f"step_{mode}"]
  for k in ("arch", "val_loss", "w"):
    np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-7)


def test_search_on_two_devices_equals_one_device(child):
  """Whole runs: the same genotypes; the alphas after 8 steps agree to float drift (each step
  agrees to the last bits, then the weights' trajectories amplify it)."""
  one, two = child["search_one"], child["search_seeds"]
  assert one["genotypes"] == two["genotypes"]
  for s in one["arch"]:
    np.testing.assert_allclose(two["arch"][s], one["arch"][s], rtol=0, atol=2e-3)
  np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=1e-4)


def test_sharded_state_is_split_over_the_devices(child):
  sh = child["sharding"]
  assert sh["spec"] == ["seeds"]
  assert sh["shards"] == [[1] + sh["shape"][1:]] * 2 and len(set(sh["devices"])) == 2



def test_train_genotypes_over_two_devices(child):
  one = np.asarray(child["train_one"])
  np.testing.assert_allclose(np.asarray(child["train_seeds"]), one, rtol=1e-5)
  packed = np.asarray(child["train_packed_seeds"])  # genotype-major: (g0, s0), (g0, s1), (g1, s0), (g1, s1)
  np.testing.assert_allclose(packed[:, 0], np.concatenate([one, one])[:, 0], rtol=1e-5)
  np.testing.assert_allclose(packed[:, 1:], np.concatenate([one, one])[:, 1:], atol=100 / 32 + 1e-9)


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _two_processes(out, mode=""):
  """Both processes of a 2-process job (jax.distributed on localhost, gloo CPU collectives), each
  bounded by a timeout and killed if the other fails; their last JSON lines. Their output goes to
  files, not pipes: a pipe read only after the other process ends fills up and blocks its writer
  before the shutdown barrier, which then times out in the process that is waiting there."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(HERE))
  env.pop("XLA_FLAGS", None)
  # The two processes compile for themselves: no persistent compilation cache shared between the
  # processes of one job (a setting this test does not cover).
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  port = str(_free_port())
  script = os.path.join(HERE, "helpers", "multiprocess_child.py")
  logs = tempfile.mkdtemp(prefix="jnas-two-processes-")
  files = [(open(os.path.join(logs, f"{pid}.out"), "w+"), open(os.path.join(logs, f"{pid}.err"), "w+"))
           for pid in (0, 1)]
  procs = [subprocess.Popen([sys.executable, script, port, str(pid), out] + ([mode] if mode else []), env=env,
                            stdout=o, stderr=e, text=True) for pid, (o, e) in zip((0, 1), files)]
  outs = []
  try:
    for p in procs:
      p.wait(timeout=900)
    errs = []
    for pid, (p, (o, e)) in enumerate(zip(procs, files)):
      o.seek(0)
      e.seek(0)
      errs.append(f"process {pid} (exit {p.returncode}):\n{e.read()[-2500:]}")
      outs.append([line for line in o.read().splitlines() if line.startswith("{")])
    assert [p.returncode for p in procs] == [0, 0], "\n".join(errs)  # (both logs: the first to fail shows why)
    outs = [json.loads(lines[-1]) for lines in outs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for o, e in files:
      o.close()
      e.close()
    shutil.rmtree(logs, ignore_errors=True)
  return outs


def test_two_processes_stop_resume_and_equal_one_process(child, tmp_path):
  """A 2-seed search over 2 processes (one seed and device each), stopped at step 6 in both and
  resumed in both, writes one run directory (files by process 0, checkpoints by both) and ends
  with the genotypes of the single-process run (the child's ``search_one``: same settings)."""
  one = child["search_one"]
  out = str(tmp_path / "two")
  stopped = _two_processes(out, "6")
  assert [s["interrupted"] for s in stopped] == [6, 6] and stopped[0]["devices"] == 2
  first, second = _two_processes(out, "resume")
  assert first["processes"] == 2 and first["devices"] == 2
  assert first["genotypes"] == second["genotypes"] == one["genotypes"]
  for s in one["arch"]:
    np.testing.assert_allclose(first["arch"][s], one["arch"][s], rtol=0, atol=2e-3)
  names = sorted(os.listdir(out))
  assert names == sorted([".jnas-run.json", "checkpoints", "config.json", "metrics.jsonl", "results.json", "seed_0",
                          "seed_1", "stages.json"]), names
  with open(os.path.join(out, "metrics.jsonl")) as f:
    assert [json.loads(line)["epoch"] for line in f] == [0, 0, 1, 1]  # written once, by process 0
