"""NSGA-Net, micro space (Lu, Whalen, Boddeti, Dhebar, Deb, Goodman, Banzhaf. NSGA-Net: Neural
Architecture Search using Multi-Objective Genetic Algorithm. GECCO 2019), as NAS-Benchmark ran it.

NSGA-II (``jnas.search.nsga_ga``, on pymoo) over the 40-int micro encoding (5 blocks x (op, input,
op, input) per cell, 9 ops), minimising f_1 = 100 - valid accuracy (%) and f_2 = the network's
parameters in millions; population 40, 20 offspring per generation, 30 generations
(40 + 29 x 20 = 620 candidates) [other_spaces.md §3.4]. Every candidate is trained *from
scratch* for ``candidate_epochs`` (20; batch 128, SGD 0.025 cosine to 0, momentum 0.9, wd 3e-4,
clip 5; no aux, cutout or drop path) in the DARTS search network (8 cells, C 16; the NSGA-Net
cell is a DARTS cell whose output concatenates the unused nodes, ``SpaceGenotype.to_darts()``),
and scored once on the validation split after its last epoch.

A generation's candidates are trained by one ``jnas.train.train_genotypes`` call, in one of two ways
(``share_program``): 'on': one compiled program for the whole search (``jnas.arc_network.ArcNetwork``
over the 9 NSGA-Net ops, the genotype as data; a candidate's numbers are a draw of the same
distribution as its own program's), 'off': a program per concat pattern (``pack_size``: genotypes
of one pattern side by side, ``jnas.packed``; None: the backend's measured default, 1 on CPU).
The shared program saves a compile per candidate but its steps are slower
(``benchmarks/results/arc_network.md``), so 'auto' (the default) shares when a candidate trains
for at most ``SHARE_MAX_STEPS`` steps (the measured CPU break-even) and compiles per candidate
otherwise (NSGA-Net's own 20 epochs of 20k images). GPUs are not measured.

Departures and choices: f_2 is the parameter count, not NSGA-Net's FLOPs counter (the issue allows
either; FLOPs are not implemented); a search seed s runs the GA with seed s and trains every
candidate with seed s (NSGA-Net: ``torch.manual_seed(0)`` for each); the retrained architecture
is the front's most accurate (``pick_rule='accuracy'``; NB's rule is not documented [not found]);
the split is this run's weights / architecture split (NB: 20k / 20k on CIFAR-10, the validation
loader with training augmentation), and candidates are scored without augmentation.

The run directory holds ``history_<seed>.json`` after every generation (a killed search resumes
without retraining finished candidates), ``seed_<s>/genotype.json`` and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from jnas import cellspace, checkpoint
from jnas.search import base, nsga_ga
from jnas.search.registry import MethodSpec

__all__ = ["NSGANetConfig", "search", "SPEC", "to_genotype", "candidate_protocol", "shares_program"]


@dataclasses.dataclass(frozen=True)
class NSGANetConfig(base.SearchConfig):
  """NSGA-Net's settings (defaults: NB's README; ``C``, ``layers``: the candidates' network)."""

  C: int = 16
  layers: int = 8
  batch_size: int = 128
  train_portion: float = 0.5
  pop_size: int = 40
  n_gens: int = 30
  n_offspring: int = 20
  n_blocks: int = 5
  candidate_epochs: int = 20
  candidate_lr: float = 0.025
  pick_rule: str = "accuracy"
  pack_size: int | None = None
  share_program: str = "auto"

  def __post_init__(self):
    super().__post_init__()
    if self.pick_rule not in ("accuracy", "knee"):
      raise ValueError(f"pick_rule must be 'accuracy' or 'knee', got {self.pick_rule!r}")
    if self.share_program not in ("auto", "on", "off"):
      raise ValueError(f"share_program must be 'auto', 'on' or 'off', got {self.share_program!r}")
    for f in ("pop_size", "n_gens", "n_offspring", "n_blocks", "candidate_epochs"):
      if getattr(self, f) < 1:
        raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")


SHARE_MAX_STEPS = 80  # 'auto': share one program when a candidate trains for at most this many steps


def shares_program(c: NSGANetConfig, n_train: int) -> bool:
  """Whether the candidates train through one shared program (``share_program``, module docstring)."""
  if c.share_program != "auto":
    return c.share_program == "on"
  from jnas.data import num_batches
  return c.candidate_epochs * num_batches(n_train, c.batch_size) <= SHARE_MAX_STEPS


def ga_config(c: NSGANetConfig, seed: int) -> nsga_ga.NSGAConfig:
  return nsga_ga.NSGAConfig(pop_size=c.pop_size, n_gens=c.n_gens, n_offspring=c.n_offspring, n_blocks=c.n_blocks,
                            seed=int(seed))


def to_genotype(x, n_blocks: int) -> cellspace.SpaceGenotype:
  """The ``SpaceGenotype`` of an encoding vector (``o1 i1 o2 i2`` per block)."""
  return cellspace.from_native("nsganet", [int(v) for v in np.asarray(x).reshape(-1)])


def candidate_protocol(c: NSGANetConfig):
  """How each candidate is trained (NSGA-Net's ``train_search.py``)."""
  from jnas.protocols import Protocol
  return Protocol(name="nsganet-candidate", epochs=c.candidate_epochs, C=c.C, layers=c.layers,
                  batch_size=c.batch_size, lr=c.candidate_lr, cutout_length=0, drop_path_prob=0.0,
                  auxiliary_weight=0.0)


def search(config: NSGANetConfig, seeds, weights_split, valid_split, *, out: str | None = None, resume: bool = False,
           quiet: bool = False, mean=None, std=None) -> dict:
  """Runs one NSGA-Net search per seed; returns ``{'method', 'genotypes': {seed: SpaceGenotype},
  'fronts': {seed: [(genotype text, valid acc, MParams)]}}``."""
  from jnas.train import train_genotypes
  c = config
  proto = candidate_protocol(c)
  share = shares_program(c, len(weights_split.labels))
  result = {"method": "nsganet", "genotypes": {}, "fronts": {}, "alive": {}, "history": []}
  summary = []
  for seed in seeds:
    path = os.path.join(out, f"history_{seed}.json") if out else None
    history = None
    if resume and path and os.path.isfile(path):
      with open(path) as f:
        history = json.load(f)

    def evaluate_batch(X, seed=seed):
      gs = [to_genotype(x, c.n_blocks).to_darts() for x in X]
      t0 = time.perf_counter()
      res = train_genotypes(gs, [seed], proto, weights_split, valid_split, num_classes=c.num_classes, quiet=True,
                            mean=mean, std=std, pack_size=c.pack_size,
                            share_program=cellspace.NSGA_OPS if share else False)
      F = np.array([[100.0 - r["final_acc"] if np.isfinite(r["final_acc"]) else 100.0, r["params"] / 1e6]
                    for r in res])
      if not quiet:
        print(f"nsganet seed {seed}: trained {len(X)} candidates in {time.perf_counter() - t0:.0f} s; best valid "
              f"acc {100 - F[:, 0].min():.2f} %", file=sys.stderr)
      return F

    def callback(gen, hist, seed=seed):
      if path:
        checkpoint.atomic_write_json(path, hist.as_dict())
      if not quiet:
        print(f"nsganet seed {seed}: generation {gen}/{c.n_gens} done ({len(hist)} candidates)", file=sys.stderr)

    run = nsga_ga.run_nsga(evaluate_batch, ga_config(c, seed), history=history, callback=callback)
    H = run.history
    best = nsga_ga.pick(run.front, H.F, c.pick_rule)
    g = to_genotype(H.X[best], c.n_blocks)
    result["genotypes"][seed], result["alive"][seed] = g, True
    result["fronts"][seed] = [(str(to_genotype(H.X[i], c.n_blocks)), 100.0 - float(H.F[i, 0]), float(H.F[i, 1]))
                              for i in run.front]
    for i in range(len(H)):
      result["history"].append({"seed": seed, "generation": int(H.generation[i]), "valid_acc": 100 - float(H.F[i, 0]),
                                "mparams": float(H.F[i, 1]), "genotype": str(to_genotype(H.X[i], c.n_blocks))})
    if out:
      os.makedirs(os.path.join(out, f"seed_{seed}"), exist_ok=True)
      checkpoint.atomic_write_json(os.path.join(out, f"seed_{seed}", "genotype.json"), g.to_dict())
    summary.append({"seed": seed, "alive": True, "genotype": str(g), "valid_acc": 100.0 - float(H.F[best, 0]),
                    "front": result["fronts"][seed]})
  if out:
    checkpoint.atomic_write_json(os.path.join(out, "results.json"), {"method": "nsganet", "seeds": summary,
                                                                      "config": c.to_dict()})
  return result


def build(config: NSGANetConfig, steps_per_epoch: int) -> base.Search:
  def stage(index, context):
    raise ValueError("NSGA-Net trains every candidate from scratch and has no supernet step; run it with "
                     "jnas.search.nsganet.search or python -m experiments.darts_cifar --method nsganet")
  return base.Search("nsganet", config, 1, stage)


SPEC = MethodSpec(
    name="nsganet", config=NSGANetConfig, build=build,
    paper="Lu et al. NSGA-Net: Neural Architecture Search using Multi-Objective Genetic Algorithm. GECCO 2019",
    changes="no weight sharing: NSGA-II (pymoo) over the micro encoding, each candidate trained from scratch, "
            "objectives valid error and parameters",
    cpu={"C": 8, "layers": 3, "batch_size": 32, "pop_size": 6, "n_gens": 2, "n_offspring": 4, "candidate_epochs": 1})
