"""Step time and peak memory of the same DARTS training steps as ``benchmarks/model_step.py``, in PyTorch.

This is our own PyTorch re-implementation of the quark0/darts CIFAR models (``cnn/operations.py``,
``cnn/model_search.py``, ``cnn/model.py``), written only to time PyTorch next to jnas on the same
machine at the same time. The parameter counts are asserted equal to the published ones
(supernet 1,930,618; DARTS_V2 3,349,342 plus 476,426 in the auxiliary head), so both sides time the
same models:

  supernet: search SearchNetwork(C=16, 8 cells, BN affine off, BN after pooling in each mixed op),
            alphas fixed (1e-3 * randn, softmax per edge), 64 x 32x32 images.
  network:  NetworkCIFAR(DARTS_V2, C=36, 20 cells, auxiliary head weight 0.4, drop path 0.2), 96 images.

One step = forward + cross-entropy + backward + grad-norm clip 5 + SGD (lr 0.025, momentum 0.9,
weight decay 3e-4). One warm-up step, then the median of ``--reps`` steps. Peak RSS is that of the
whole process, so with ``--model both`` the second row's peak includes the first model's.
The other processes' CPU load is recorded before each model: with ``--threads 2`` on a busy 2-core
machine every OpenMP parallel region waits for a descheduled thread, and the supernet step (thousands
of small ops) slows down by up to 100x, so time it only on an otherwise idle machine.

torch is not a jnas dependency; install it into a separate environment:

    python3 -m venv /path/to/torchvenv && /path/to/torchvenv/bin/pip install torch numpy

and run from the repository root with that interpreter (this file imports only torch, numpy and the
standard library):

    python -m benchmarks.pytorch_reference                 # both models, 2 threads, 3 reps
    python -m benchmarks.pytorch_reference --model supernet --threads 2 --reps 5
    python -m benchmarks.pytorch_reference --device cuda --reps 50   # on a GPU (cudnn.benchmark on, as DARTS)

Prints a table and writes ``benchmarks/results/pytorch_reference.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

# quark0 format: pairs 2i, 2i+1 feed intermediate node i; index 0/1 = cell inputs, 2.. = nodes.
DARTS_V2 = dict(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])

PUBLISHED_PARAMS = {"supernet": 1_930_618, "network": 3_349_342, "aux_head": 476_426}


# ---------------------------------------------------------------------------------------------
# Operations (quark0 cnn/operations.py)

class ReLUConvBN(nn.Sequential):
  def __init__(self, C_in, C_out, k, stride, pad, affine=True):
    super().__init__(nn.ReLU(), nn.Conv2d(C_in, C_out, k, stride, pad, bias=False),
                     nn.BatchNorm2d(C_out, affine=affine))


class DilConv(nn.Sequential):
  """ReLU -> depthwise k x k (dilated) -> pointwise 1x1 -> BN."""

  def __init__(self, C_in, C_out, k, stride, pad, dilation, affine=True):
    super().__init__(nn.ReLU(), nn.Conv2d(C_in, C_in, k, stride, pad, dilation=dilation, groups=C_in, bias=False),
                     nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))


class SepConv(nn.Sequential):
  """Two DilConv(dilation 1) blocks; only the first carries the stride."""

  def __init__(self, C_in, C_out, k, stride, pad, affine=True):
    super().__init__(DilConv(C_in, C_in, k, stride, pad, 1, affine), DilConv(C_in, C_out, k, 1, pad, 1, affine))


class Zero(nn.Module):
  def __init__(self, stride):
    super().__init__()
    self.stride = stride

  def forward(self, x):
    return x * 0.0 if self.stride == 1 else x[:, :, ::self.stride, ::self.stride] * 0.0


class FactorizedReduce(nn.Module):
  """ReLU -> two 1x1 stride-2 convs (second on the input shifted by one pixel) -> concat -> BN."""

  def __init__(self, C_in, C_out, affine=True):
    super().__init__()
    assert C_out % 2 == 0
    self.conv_a = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
    self.conv_b = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
    self.bn = nn.BatchNorm2d(C_out, affine=affine)

  def forward(self, x):
    x = F.relu(x)
    return self.bn(torch.cat([self.conv_a(x), self.conv_b(x[:, :, 1:, 1:])], dim=1))


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
    "skip_connect": lambda C, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
}


def preprocess(C_prev_prev, C_prev, C, reduction_prev, affine):
  pre0 = FactorizedReduce(C_prev_prev, C, affine) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine)
  return pre0, ReLUConvBN(C_prev, C, 1, 1, 0, affine)


def stem(C_stem):
  return nn.Sequential(nn.Conv2d(3, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))


# ---------------------------------------------------------------------------------------------
# Search supernet (quark0 cnn/model_search.py)

class MixedOp(nn.Module):
  def __init__(self, C, stride):
    super().__init__()
    self.ops = nn.ModuleList()
    for name in PRIMITIVES:
      op = OPS[name](C, stride, False)
      if "pool" in name:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
      self.ops.append(op)

  def forward(self, x, weights):
    return sum(w * op(x) for w, op in zip(weights, self.ops))


class SearchCell(nn.Module):
  def __init__(self, steps, C_prev_prev, C_prev, C, reduction, reduction_prev):
    super().__init__()
    self.reduction, self.steps = reduction, steps
    self.pre0, self.pre1 = preprocess(C_prev_prev, C_prev, C, reduction_prev, affine=False)
    self.edges = nn.ModuleList(MixedOp(C, 2 if reduction and j < 2 else 1)
                               for i in range(steps) for j in range(2 + i))

  def forward(self, s0, s1, weights):
    states, e = [self.pre0(s0), self.pre1(s1)], 0
    for _ in range(self.steps):
      states.append(sum(self.edges[e + j](h, weights[e + j]) for j, h in enumerate(states)))
      e += len(states) - 1
    return torch.cat(states[2:], dim=1)


def cell_stack(C, layers, stem_multiplier, make_cell):
  """quark0's channel bookkeeping: (stem, cells, each cell's output channels); reductions at
  layers//3 and 2*layers//3. ``make_cell(C_pp, C_p, C, reduction, reduction_prev)`` returns
  (cell, number of concatenated nodes)."""
  C_cur = stem_multiplier * C
  stem_module = stem(C_cur)
  C_prev_prev, C_prev, C_cur = C_cur, C_cur, C
  cells, outs, reduction_prev = nn.ModuleList(), [], False
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    C_cur *= 2 if reduction else 1
    cell, multiplier = make_cell(C_prev_prev, C_prev, C_cur, reduction, reduction_prev)
    cells.append(cell)
    C_prev_prev, C_prev, reduction_prev = C_prev, multiplier * C_cur, reduction
    outs.append(C_prev)
  return stem_module, cells, outs


class SearchNetwork(nn.Module):
  def __init__(self, C=16, num_classes=10, layers=8, steps=4, multiplier=4, stem_multiplier=3):
    super().__init__()
    self.stem, self.cells, outs = cell_stack(
        C, layers, stem_multiplier, lambda pp, p, c, r, rp: (SearchCell(steps, pp, p, c, r, rp), multiplier))
    self.classifier = nn.Linear(outs[-1], num_classes)
    n_edges = sum(2 + i for i in range(steps))
    # Plain tensors, not Parameters: fixed during a weight step and left out of the count.
    self.alphas_normal = 1e-3 * torch.randn(n_edges, len(PRIMITIVES))
    self.alphas_reduce = 1e-3 * torch.randn(n_edges, len(PRIMITIVES))

  def forward(self, x):
    w_normal, w_reduce = F.softmax(self.alphas_normal, dim=-1), F.softmax(self.alphas_reduce, dim=-1)
    s0 = s1 = self.stem(x)
    for cell in self.cells:
      s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
    return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


# ---------------------------------------------------------------------------------------------
# Discrete network (quark0 cnn/model.py)

def drop_path(x, p):
  keep = 1.0 - p
  mask = torch.bernoulli(torch.full((x.shape[0], 1, 1, 1), keep, dtype=x.dtype, device=x.device))
  return x / keep * mask


class Cell(nn.Module):
  def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
    super().__init__()
    self.reduction = reduction
    ops, self.concat = (genotype["reduce"], genotype["reduce_concat"]) if reduction else \
        (genotype["normal"], genotype["normal_concat"])
    self.pre0, self.pre1 = preprocess(C_prev_prev, C_prev, C, reduction_prev, affine=True)
    self.indices = [index for _, index in ops]
    self.ops = nn.ModuleList(OPS[name](C, 2 if reduction and index < 2 else 1, True) for name, index in ops)

  def forward(self, s0, s1, drop_prob):
    states = [self.pre0(s0), self.pre1(s1)]
    for i in range(0, len(self.ops), 2):
      node = 0
      for op, index in zip(self.ops[i:i + 2], self.indices[i:i + 2]):
        h = op(states[index])
        if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
          h = drop_path(h, drop_prob)
        node = node + h
      states.append(node)
    return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
  """On the 8x8 map after the second reduction: ReLU -> avgpool 5/3 -> 1x1 conv 128 -> 2x2 conv 768 -> linear."""

  def __init__(self, C, num_classes):
    super().__init__()
    self.features = nn.Sequential(
        nn.ReLU(), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
        nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU())
    self.classifier = nn.Linear(768, num_classes)

  def forward(self, x):
    return self.classifier(self.features(x).flatten(1))


class NetworkCIFAR(nn.Module):
  def __init__(self, genotype, C=36, num_classes=10, layers=20, auxiliary=True, stem_multiplier=3):
    super().__init__()
    self.layers, self.drop_path_prob = layers, 0.0

    def make_cell(pp, p, c, r, rp):
      cell = Cell(genotype, pp, p, c, r, rp)
      return cell, len(cell.concat)

    self.stem, self.cells, outs = cell_stack(C, layers, stem_multiplier, make_cell)
    C_aux, C_prev = outs[2 * layers // 3], outs[-1]
    self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes) if auxiliary else None
    self.classifier = nn.Linear(C_prev, num_classes)

  def forward(self, x):
    logits_aux = None
    s0 = s1 = self.stem(x)
    for i, cell in enumerate(self.cells):
      s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
      if i == 2 * self.layers // 3 and self.auxiliary_head is not None and self.training:
        logits_aux = self.auxiliary_head(s1)
    return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1)), logits_aux


# ---------------------------------------------------------------------------------------------
# Benchmark

def other_cpu_load(seconds: float = 1.0) -> float:
  """CPU share (in cores) used by other processes over ``seconds``, from /proc (NaN elsewhere)."""
  def ticks():
    with open("/proc/stat") as f:
      user, nice, system = map(int, f.readline().split()[1:4])
    with open("/proc/self/stat") as f:
      utime, stime = map(int, f.read().rsplit(")", 1)[1].split()[11:13])
    return user + nice + system - utime - stime
  try:
    t0 = ticks()
    time.sleep(seconds)
    return max(ticks() - t0, 0) / os.sysconf("SC_CLK_TCK") / seconds
  except (OSError, ValueError):
    return float("nan")


def count_params(module: nn.Module, exclude: str | None = None) -> int:
  return sum(p.numel() for name, p in module.named_parameters() if not (exclude and name.startswith(exclude)))


def build(model: str, batch: int | None, device: str = "cpu"):
  if model == "supernet":
    net, batch = SearchNetwork(C=16, num_classes=10, layers=8), batch or 64
    n_params, n_aux = count_params(net), 0
    assert n_params == PUBLISHED_PARAMS["supernet"], f"supernet has {n_params:,} parameters"
    loss_fn = lambda x, y: F.cross_entropy(net(x), y)
  else:
    net, batch = NetworkCIFAR(DARTS_V2, C=36, num_classes=10, layers=20, auxiliary=True), batch or 96
    net.drop_path_prob = 0.2
    n_params, n_aux = count_params(net, exclude="auxiliary_head."), count_params(net.auxiliary_head)
    assert n_params == PUBLISHED_PARAMS["network"], f"DARTS_V2 has {n_params:,} parameters"
    assert n_aux == PUBLISHED_PARAMS["aux_head"], f"auxiliary head has {n_aux:,} parameters"

    def loss_fn(x, y):
      logits, logits_aux = net(x)
      return F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(logits_aux, y)

  net.to(device).train()
  opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)

  def step(x, y):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(x, y)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    return loss.detach()

  x = torch.randn(batch, 3, 32, 32).to(device)
  y = torch.randint(0, 10, (batch,)).to(device)
  return step, x, y, n_params, n_aux, batch


def run(model: str, reps: int, batch: int | None, device: str = "cpu") -> dict:
  torch.manual_seed(0)
  cuda = device.startswith("cuda")
  if cuda:
    torch.backends.cudnn.benchmark = True  # as quark0/darts' train_search.py and train.py set it
    torch.cuda.reset_peak_memory_stats()
  step, x, y, n_params, n_aux, batch = build(model, batch, device)
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  load_before = other_cpu_load()
  times = []
  for i in range(reps + 1 + cuda):  # warm-up: one step (CPU), two on CUDA (cudnn.benchmark tries kernels on the first)
    sync()
    t0 = time.perf_counter()
    loss = step(x, y)
    sync()
    if i > cuda:
      times.append(time.perf_counter() - t0)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"{model}: loss is {float(loss)}")
  return {
      "model": model, "batch": batch, "params": n_params, "aux_params": n_aux,
      "step_median_s": round(float(np.median(times)), 4), "step_min_s": round(min(times), 4), "reps": reps,
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      "peak_device_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
      "other_cpu_load_cores": round(load_before, 2),
  }


def atomic_write_json(path: str, obj) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=("supernet", "network", "both"), default="both")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU (then peak GPU memory is reported)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "pytorch_reference.json"))
  args = parser.parse_args()
  if args.device.startswith("cuda") and not torch.cuda.is_available():
    parser.error(f"--device {args.device}: this torch build sees no CUDA GPU")
  torch.set_num_threads(args.threads)
  models = ("supernet", "network") if args.model == "both" else (args.model,)
  rows = []
  for m in models:
    rows.append(run(m, args.reps, args.batch, args.device))
    r = rows[-1]
    print(f"{m}: step {r['step_median_s']} s (median of {r['reps']}), peak RSS {r['peak_rss_gb']} GB", flush=True)
  print(f"{'model':9} {'batch':>5} {'params':>10} {'step s':>7} {'min s':>7} {'RSS GB':>6} {'GPU GB':>6} {'load':>5}")
  for r in rows:
    gpu = "-" if r["peak_device_gb"] is None else r["peak_device_gb"]
    print(f"{r['model']:9} {r['batch']:>5} {r['params']:>10,} {r['step_median_s']:>7} {r['step_min_s']:>7} "
          f"{r['peak_rss_gb']:>6} {gpu:>6} {r['other_cpu_load_cores']:>5}")
  atomic_write_json(args.out, {
      "benchmark": "pytorch_reference", "torch": torch.__version__, "device": args.device,
      "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "threads": torch.get_num_threads(),
      "machine": platform.machine(), "cpus": os.cpu_count(), "rows": rows})
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
