"""Compile time, step time and peak memory of one training step of the DARTS networks.

    python -m benchmarks.model_step                      # both models at paper size
    python -m benchmarks.model_step --model supernet --reps 3 --impl xla

One step = forward + backward + SGD-momentum update of the weights (alphas fixed for the
supernet, as in a DARTS weight step): SearchNetwork(C=16, 8 cells) on 64 x 32x32 images and
Network(DARTS_V2, C=36, 20 cells, auxiliary head weight 0.4, drop path 0.2) on 96 images.
Reference, PyTorch quark0/darts on this 2-core machine: 10.4 s (supernet weight step), 9.0 s
(DARTS_V2 retraining step), 9.8 GB peak for the supernet step.

Prints a table and writes ``benchmarks/results/model_step.json``. Compile time is reported apart
from step time (median over ``--reps`` steps after one warm-up). The other processes' CPU load is
recorded, since timings on a shared 2-core machine lie under load.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import jnas  # sets the XLA:CPU flag before JAX starts
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnas import checkpoint, genotypes
from jnas.compile_options import step_jit
from jnas.network import Network, count_params
from jnas.supernet import SearchNetwork, init_alphas

PYTORCH_SECONDS = {"supernet": 10.4, "network": 9.0}


def other_cpu_load(seconds: float = 1.0) -> float:
  """CPU share (in cores) used by other processes over ``seconds``."""
  try:
    import psutil
  except ImportError:
    return float("nan")
  me = psutil.Process()
  total0, mine0 = psutil.cpu_times(), me.cpu_times()
  time.sleep(seconds)
  total1, mine1 = psutil.cpu_times(), me.cpu_times()
  busy = lambda t: t.user + t.system + getattr(t, "nice", 0.0)
  used = busy(total1) - busy(total0) - ((mine1.user + mine1.system) - (mine0.user + mine0.system))
  return max(used, 0.0) / seconds


def peak_device_gb() -> float | None:
  """Peak memory in use on the first accelerator so far in this process (GB); None on CPU."""
  if jax.default_backend() == "cpu":
    return None
  stats = jax.devices()[0].memory_stats() or {}
  return round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None


def _xent(logits, labels):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def build(model: str, impl: str, batch: int | None):
  key = jax.random.key(0)
  tx = optax.chain(optax.clip_by_global_norm(5.0), optax.add_decayed_weights(3e-4), optax.sgd(0.025, momentum=0.9))
  if model == "supernet":
    net = SearchNetwork(C=16, layers=8, num_classes=10, conv_impl=impl)
    batch = batch or 64
    alphas = init_alphas(jax.random.key(1))
    weights = {k: jax.nn.softmax(a, axis=-1) for k, a in alphas.items()}

    def loss_fn(params, stats, x, y, key):
      del key
      logits, new = net.forward(params, stats, x, weights, train=True)
      return _xent(logits, y), new
  else:
    net = Network(genotypes.DARTS_V2, C=36, layers=20, num_classes=10, auxiliary=True, conv_impl=impl)
    batch = batch or 96

    def loss_fn(params, stats, x, y, key):
      logits, aux, new = net.forward(params, stats, x, train=True, key=key, drop_path_prob=0.2)
      return _xent(logits, y) + 0.4 * _xent(aux, y), new

  variables = net.init_variables(key)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

  def step(state, x, y, key):
    params, stats, opt = state
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y, key)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), new_stats, opt), loss

  x = jax.random.normal(jax.random.key(2), (batch, 32, 32, 3))
  y = jax.random.randint(jax.random.key(3), (batch,), 0, 10)
  # The library's per-step compiler options (``jnas.compile_options``), as its training and search
  # programs use them.
  return step_jit(step, donate_argnums=0), state, x, y, count_params(variables["params"]), batch


def run(model: str, impl: str, reps: int, batch: int | None) -> dict:
  step, state, x, y, n_params, batch = build(model, impl, batch)
  load_before = other_cpu_load()
  t0 = time.perf_counter()
  compiled = step.lower(state, x, y, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(reps + 1):
    t0 = time.perf_counter()
    state, loss = compiled(state, x, y, jax.random.key(i))
    loss.block_until_ready()
    if i:  # the first call is a warm-up
      times.append(time.perf_counter() - t0)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"{model}: loss is {float(loss)}")
  mem = compiled.memory_analysis()
  on_cpu = jax.default_backend() == "cpu"
  return {
      "model": model, "impl": impl, "batch": batch, "params": n_params,
      "compile_s": round(compile_s, 2), "step_median_s": round(float(np.median(times)), 4),
      "step_min_s": round(min(times), 4), "reps": reps,
      "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      # On an accelerator: peak device memory of the process (so far, all models run in it).
      "peak_device_gb": peak_device_gb(),
      "other_cpu_load_cores": round(load_before, 2),
      # The PyTorch figures are this 2-core CPU machine's; on a GPU run benchmarks.pytorch_reference --device cuda.
      "pytorch_reference_s": PYTORCH_SECONDS[model] if on_cpu else None,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=("supernet", "network", "both"), default="both")
  parser.add_argument("--impl", choices=("auto", "shift", "xla"), default="auto")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "model_step.json"))
  args = parser.parse_args()
  models = ("supernet", "network") if args.model == "both" else (args.model,)
  rows = []
  for m in models:
    rows.append(run(m, args.impl, args.reps, args.batch))
    r = rows[-1]
    print(f"{m}: compile {r['compile_s']} s, step {r['step_median_s']} s (PyTorch {r['pytorch_reference_s'] or '-'} s)",
          flush=True)
  header = (f"{'model':9} {'impl':5} {'batch':>5} {'params':>10} {'compile s':>9} {'step s':>7} {'PyTorch s':>9} "
            f"{'XLA temp GB':>11} {'peak dev GB':>11} {'load':>5}")
  print(header)
  for r in rows:
    temp = (r["temp_bytes"] or 0) / 2**30
    print(f"{r['model']:9} {r['impl']:5} {r['batch']:>5} {r['params']:>10,} {r['compile_s']:>9} "
          f"{r['step_median_s']:>7} {r['pytorch_reference_s'] or '-':>9} {temp:>11.2f} "
          f"{r['peak_device_gb'] or '-':>11} {r['other_cpu_load_cores']:>5}")
  checkpoint.atomic_write_json(args.out, {
      "benchmark": "model_step", "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "jax": jax.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "rows": rows})
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
