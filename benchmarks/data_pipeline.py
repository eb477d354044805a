"""Throughput of one training batch: gather + CIFAR augmentation on the device vs on the host.

  python -m benchmarks.data_pipeline                  # random uint8 images, about a minute on 2 CPU cores
  python -m benchmarks.data_pipeline --data DIR       # a cifar-10-batches-py folder (or its parent)
  python -m benchmarks.data_pipeline --data x.npz     # an .npz with `images` (N, 32, 32, 3) uint8

A batch is: gather from an epoch permutation -> random crop 32 (zero padding 4) -> flip ->
[AutoAugment, CIFAR-10 policy] -> normalise -> cutout 16, at batch 64 (DARTS search) and 96
(retraining). Device: `jnas.data.get_batch` + `jnas.data.cifar_augment` in one `jit`; compile
time is reported apart; each rep dispatches `--steps` batches back to back and blocks on the last.
Host: the same work in NumPy, vectorised over the batch, with AutoAugment through Pillow image by
image (`jnas.data.autoaugment.pillow_op`), as a PyTorch DataLoader worker does it, in one process.
Device and host reps alternate; the median over reps is reported, with the other processes' CPU
share during the run (a loaded machine slows both sides).

Prints a table and writes ``benchmarks/results/data_pipeline.json`` (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
import psutil

import jnas.data as D
from jnas.checkpoint import atomic_write_json
from jnas.data.autoaugment import CIFAR10_POLICY, MAGNITUDES, op_value, pillow_op
from jnas.data.dataset import as_images

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "data_pipeline.json")


def load_images(path: str | None, n: int) -> np.ndarray:
  if path is None:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      return as_images(f["images"], path)
  return D.load_cifar_python(path).train.images


# ------------------------------------------------------------------------------------------ device

def device_step(batch_size: int, autoaugment: bool):
  def step(key, images, labels, perm, i):
    x, y = D.get_batch(images, labels, perm, i, batch_size)
    return D.cifar_augment(jax.random.fold_in(key, i), x, cutout_length=16, autoaugment=autoaugment), y
  return jax.jit(step)


# -------------------------------------------------------------------------------------------- host

def host_step(rng, images, labels, perm, i, batch_size, autoaugment, mean, std):
  from PIL import Image
  idx = perm[i * batch_size:(i + 1) * batch_size]
  x = images[idx]
  b, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  oy, ox = rng.integers(0, 9, (2, b))
  x = padded[np.arange(b)[:, None, None], (oy[:, None] + np.arange(h))[:, :, None],
             (ox[:, None] + np.arange(w))[:, None, :]]
  flip = rng.random(b) < 0.5
  x[flip] = x[flip, :, ::-1]
  if autoaugment:
    for k in range(b):
      img = Image.fromarray(x[k])
      for p, op, m in CIFAR10_POLICY[rng.integers(len(CIFAR10_POLICY))]:
        if rng.random() < p:
          img = pillow_op(op, img, op_value(op, MAGNITUDES[op][m], rng.choice((-1, 1))))
      x[k] = np.asarray(img)
  x = (x.astype(np.float32) / 255.0 - mean) / std
  cy, cx = rng.integers(0, h, b), rng.integers(0, w, b)
  in_y = np.abs(np.arange(h)[None, :] - cy[:, None] + 0.5) < 8  # rows [cy - 8, cy + 8)
  in_x = np.abs(np.arange(w)[None, :] - cx[:, None] + 0.5) < 8
  x[in_y[:, :, None] & in_x[:, None, :]] = 0.0
  return x, labels[idx]


# ---------------------------------------------------------------------------------------- timing

class LoadMeter:
  """Share of all CPU time used by other processes between start() and stop()."""

  def start(self):
    self.t, self.sys, self.own = time.perf_counter(), psutil.cpu_times(), psutil.Process().cpu_times()

  def stop(self) -> float:
    wall = time.perf_counter() - self.t
    s, o = psutil.cpu_times(), psutil.Process().cpu_times()
    busy = sum(getattr(s, f) - getattr(self.sys, f) for f in ("user", "system", "nice", "irq", "softirq"))
    own = (o.user - self.own.user) + (o.system - self.own.system)
    return max(0.0, busy - own) / (wall * psutil.cpu_count())


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default=None, help="cifar-python folder or .npz (default: random uint8 images)")
  p.add_argument("--n", type=int, default=10_000, help="number of random images when --data is not given")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--steps", type=int, default=10, help="batches per rep")
  p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 96])
  p.add_argument("--out", default=RESULTS)
  a = p.parse_args()

  images = load_images(a.data, a.n)
  labels = np.zeros(len(images), np.int32)
  mean, std = np.array(D.CIFAR10_MEAN, np.float32), np.array(D.CIFAR10_STD, np.float32)
  dx, dy = jax.device_put(images), jax.device_put(labels)
  key = jax.random.key(0)
  dperm = D.epoch_permutation(key, len(images))
  hperm = np.asarray(dperm)
  rng = np.random.default_rng(0)
  meter = LoadMeter()
  rows = []
  for aa in (False, True):
    for bs in a.batch_sizes:
      steps = min(a.steps, D.num_batches(len(images), bs))
      t0 = time.perf_counter()
      compiled = device_step(bs, aa).lower(key, dx, dy, dperm, 0).compile()
      compile_s = time.perf_counter() - t0
      jax.block_until_ready(compiled(key, dx, dy, dperm, 0))  # warm-up
      host_step(rng, images, labels, hperm, 0, bs, aa, mean, std)
      dev, host, load = [], [], []
      for _ in range(a.reps):  # alternate device and host reps
        meter.start()
        t0 = time.perf_counter()
        for i in range(steps):
          out = compiled(key, dx, dy, dperm, i)
        jax.block_until_ready(out)
        dev.append(steps * bs / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(steps):
          host_step(rng, images, labels, hperm, i, bs, aa, mean, std)
        host.append(steps * bs / (time.perf_counter() - t0))
        load.append(meter.stop())
      rows.append(dict(autoaugment=aa, batch_size=bs, compile_s=compile_s, steps_per_rep=steps, reps=a.reps,
                       device_images_per_s=statistics.median(dev), host_images_per_s=statistics.median(host),
                       device_all=dev, host_all=host, other_cpu_share=statistics.median(load)))

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {psutil.cpu_count()} CPUs, "
        f"data: {a.data or 'random'} {images.shape}")
  print(f"{'AutoAugment':>11} {'batch':>5} {'compile s':>9} {'device img/s':>12} {'host img/s':>10} "
        f"{'device/host':>11} {'other CPU':>9}")
  for r in rows:
    print(f"{str(r['autoaugment']):>11} {r['batch_size']:>5} {r['compile_s']:>9.2f} "
          f"{r['device_images_per_s']:>12,.0f} {r['host_images_per_s']:>10,.0f} "
          f"{r['device_images_per_s'] / r['host_images_per_s']:>11.2f} {r['other_cpu_share']:>9.0%}")
  if max(r["other_cpu_share"] for r in rows) > 0.25:
    print("warning: other processes used over 25% of the CPU during timing; figures are pessimistic")
  atomic_write_json(a.out, dict(
      benchmark="data_pipeline", device=str(jax.devices()[0]), backend=jax.default_backend(),
      jax_version=jax.__version__, machine=platform.machine(), cpu_count=psutil.cpu_count(),
      data=a.data or "random", num_images=len(images), rows=rows))
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
