"""Seeds and batches over devices (``jnas.parallel``): two fake CPU devices in a subprocess (the
XLA flag must be set before JAX starts). Results equal the one-device run: exactly for seeds
(each device runs the same per-seed program), to float tolerance for data parallelism (batch-norm
statistics and gradient sums over the split batch add in another order)."""

import json
import os
import subprocess
import sys

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


@pytest.mark.parametrize("mode", ["seeds", "data"])
def test_search_on_two_devices_equals_one_device(child, mode):
  """Whole runs: the same genotypes; the alphas after 8 steps agree to float drift (each step
  agrees to the last bits, then the weights' trajectories amplify it)."""
  one, two = child["search_one"], child[f"search_{mode}"]
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
  np.testing.assert_allclose(np.asarray(child["train_data"]), one, rtol=1e-3)
