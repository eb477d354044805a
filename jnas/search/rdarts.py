"""R-DARTS (Zela, Elsken, Saikia, Marrakchi, Brox, Hutter, ICLR 2020: "Understanding and Robustifying
Differentiable Architecture Search"; code automl/RobustDARTS).

When DARTS degenerates (parameter-free ops take over), the dominant eigenvalue lambda_max of the
Hessian of the validation loss with respect to the alphas grows. Two answers, each a small delta on
DARTS (second order, as the authors' scripts run it: ``--unrolled``):

* **DARTS-ES** (``darts-es``): stop early when lambda_max rises. ``lambda_max`` is the monitor of
  ``jnas.search.hessian`` (Lanczos on Hessian-vector products of the train-mode loss on the
  epoch's last architecture batch; the code takes ``max(eigvals(H))`` of the full 224 x 224 Hessian
  of the last val batch, with the alphas' L2 term, 1e-3 I, inside: a shift of 1e-3 that jnas leaves
  out), computed every ``ev_freq`` = 2 epochs (e % 2 == 0, 0-based, and the last). The stop rule is
  ``EVLocalAvg`` of [RD:src/utils.py] (``es_stop_epoch``): local averages lambda_bar over a window
  of ``window`` = 5 evaluations (the mean of all values until the window fills, from the 3rd value
  on), lambda_bar attributed to epoch e - ev_freq floor(window / 2) = e - 4; at an evaluation epoch e
  before the last, if (e - 4) - ev_freq delta >= es_start_epoch (delta 4, start 10: e >= 22) and
  lambda_bar(e - 4) / lambda_bar(e - 12) > factor (1.3), the search stops and its result is the
  genotype of epoch stop = e - 12. The paper states the rule only in words (its text was not
  available to us); this is the code's rule. With many seeds in one program a seed that has
  stopped keeps training until every seed has stopped (its result is fixed: the genotype of its
  stop epoch); the run ends then. The rule is a function of the logged eigenvalue trace, so the
  early-stop state lives in ``metrics.jsonl`` and a resumed run decides as an uninterrupted one.
* **R-DARTS(L2)** (``rdarts-l2``): DARTS with a larger weight decay on the network weights. The
  authors' grid is 3e-4 3^i <= 0.0243 [RD:scripts/start_search.sh]; which value the paper's row
  uses is not stated anywhere we found: the default 0.0243 follows ``max_weight_decay`` of the
  args (an inference); ``--set w_weight_decay=...`` picks another.
* **R-DARTS(DP)** (``rdarts-dp``): ScheduledDropPath in the search: drop path on every mixed-op
  output (``SearchNetwork(edge_drop_path=True)``) at p_e = dp e / (E - 1) in epoch e. Grid
  dp in {0, 0.2, 0.4, 0.6}; the default 0.2 is the args default (which value the paper's row uses
  was not found). The code ramps the cutout probability the same way when cutout is on in the
  search; jnas's search cutout (``cutout_length``, off by default as in DARTS) is not ramped.
* **DARTS-ADA** (``darts-ada``): when the DARTS-ES rule holds at evaluation epoch e, go back to
  the state at the end of the stop epoch e - 12 (minus ``extra_rollback_epochs``, 0), multiply the
  weight decay by ``mul_factor`` and train the epochs after it again, until the weight decay reaches
  ``max_weight_decay``; the ADA script's values: 3e-4 -> 3e-3 -> 3e-2 (at most two rollbacks). The
  result is the genotype at the end of the last epoch. As in the code the restored state includes
  the momentum, the alphas and their Adam moments and the position of the cosine schedule, and
  the rule's history is the eigenvalue trace up to the epoch gone back to. Each seed rolls back on
  its own inside the vmapped job (``jnas.search.base.Search.adapt``): the weight decay is a value
  in the optimiser state (``optax.inject_hyperparams``; no recompile), a seed's records carry its
  own epoch, and a seed that has finished its epochs trains on (its result fixed) until the others
  have (at most 24 extra epochs). Data order differs from the code's after a rollback (a seed draws
  the permutation of the run's epoch). One difference: the code builds the new ``Architect``
  before raising the weight decay, so its second-order virtual step keeps the previous
  iteration's value; jnas's virtual step uses the current one. DARTS-ADA's results in the DARTS
  space were not found (spec §7.4).

All of them run with ``--monitor hessian`` traces for plots; DARTS-ES adds the monitor itself.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from jnas import optim
from jnas.search import base, darts
from jnas.search.registry import MethodSpec

__all__ = ["RDartsConfig", "DartsESConfig", "DartsADAConfig", "RDartsL2Config", "RDartsDPConfig", "local_averages",
           "es_firings", "es_stop_epoch", "ada_weight_decays", "build_es", "build_ada", "build_l2", "build_dp", "SPEC_ES",
           "SPEC_ADA", "SPEC_L2", "SPEC_DP"]


@dataclasses.dataclass(frozen=True)
class RDartsConfig(darts.DartsConfig):
  """DARTS (second order, quark0's settings) with R-DARTS's knobs [RD:src/search/args.py].

  drop_path: ScheduledDropPath's final rate dp (0: off). early_stop: apply the DARTS-ES rule.
  ev_freq, window, es_start_epoch, delta, factor: the rule's constants (``es_stop_epoch``).
  """

  drop_path: float = 0.0
  early_stop: bool = False
  ev_freq: int = 2
  window: int = 5
  es_start_epoch: int = 10
  delta: int = 4
  factor: float = 1.3

  def __post_init__(self):
    super().__post_init__()
    if not 0 <= self.drop_path < 1:
      raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
    for name in ("ev_freq", "window", "delta"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.factor <= 0:
      raise ValueError(f"factor must be > 0, got {self.factor}")


def local_averages(evs, epochs: int, window: int = 5, ev_freq: int = 2):
  """``[(epoch of the evaluation, its local average, the epoch the average is attributed to)]``
  for the eigenvalues ``evs = [(epoch, lambda), ...]`` of a run of ``epochs`` epochs, as
  ``EVLocalAvg.update`` computes them before the last epoch: from the ceil(window / 2)-th value on,
  the mean of all values while fewer than ``window``, then of a sliding window of ``window``."""
  out, values, lo = [], [], 0
  half = math.ceil(window / 2)
  for epoch, ev in evs:
    values.append(float(ev))
    if len(values) >= half and epoch < epochs - 1:
      if len(values) < window:
        avg = float(np.mean(values))
      else:
        avg = float(np.mean(values[lo:lo + window]))
        lo += 1
      out.append((epoch, avg, int(epoch - ev_freq * (window // 2))))
  return out


def es_firings(evs, epochs: int, *, window: int = 5, ev_freq: int = 2, es_start_epoch: int = 10,
               delta: int = 4, factor: float = 1.3) -> list[tuple[int, int]]:
  """``[(evaluation epoch e, stop epoch), ...]``: every evaluation of the eigenvalue trace ``evs =
  [(epoch, lambda_max), ...]`` (in epoch order) at which DARTS-ES's rule holds: at e < epochs - 1
  with a local average attributed to a = e - ev_freq floor(window / 2), if a - ev_freq delta >=
  es_start_epoch and lambda_bar[-1] / lambda_bar[-1 - delta] > factor, the stop epoch is
  a - ev_freq delta [RD:src/utils.py ``EVLocalAvg.early_stop``]."""
  avgs, out = [], []
  for epoch, avg, attributed in local_averages(evs, epochs, window, ev_freq):
    avgs.append(avg)
    stop = attributed - ev_freq * delta
    if stop >= es_start_epoch and len(avgs) > delta:
      previous = avgs[-1 - delta]
      if previous != 0 and avg / previous > factor:
        out.append((int(epoch), int(stop)))
  return out


def es_stop_epoch(evs, epochs: int, **rule) -> int | None:
  """DARTS-ES's stop epoch for the eigenvalue trace ``evs`` (the first of ``es_firings``), or None
  if the rule never fires."""
  firings = es_firings(evs, epochs, **rule)
  return firings[0][1] if firings else None


def ada_weight_decays(config: "DartsADAConfig") -> list[float]:
  """The weight decays of DARTS-ADA's iterations: lambda_0 mul^k, up to the first k at which the
  code's test ``round(log(max_weight_decay) / log(lambda_k), 1) == 1`` says the maximum is reached
  (no rollback after it) [RD:src/search/train_search.py]. 3e-4, 3e-3, 3e-2 by default."""
  c, out = config, []
  for k in range(32):
    wd = c.w_weight_decay * c.mul_factor ** k
    out.append(wd)
    if round(math.log(c.max_weight_decay) / math.log(wd), 1) == 1.0:
      return out
  raise ValueError(f"DARTS-ADA: weight decay {c.w_weight_decay:g} times {c.mul_factor:g}^k never reaches "
                   f"max_weight_decay {c.max_weight_decay:g} (round(log(max) / log(wd), 1) == 1 for no k < 32)")


def _trace(records) -> list:
  return [(r["epoch"], r["hessian_max"]) for r in records if r.get("hessian_max") is not None]


def _rules(config: RDartsConfig) -> dict:
  c = config

  def stop_epoch(records):
    return es_stop_epoch(_trace(records), c.epochs, window=c.window, ev_freq=c.ev_freq,
                         es_start_epoch=c.es_start_epoch, delta=c.delta, factor=c.factor)

  return dict(stop=lambda records: stop_epoch(records) is not None, select=stop_epoch, monitor=("hessian",),
              monitor_every=c.ev_freq)


def _ada_rules(config: "DartsADAConfig") -> dict:
  """DARTS-ADA's rules over a seed's trajectory (``jnas.search.base.Search.adapt``)."""
  c, E = config, config.epochs
  decays = ada_weight_decays(c)
  shift = c.ev_freq * (c.window // 2 + c.delta)  # evaluation epoch - stop epoch
  rule = dict(window=c.window, ev_freq=c.ev_freq, es_start_epoch=c.es_start_epoch, delta=c.delta, factor=c.factor)

  def adapt(records):
    last = records[-1]
    k = last.get("rollbacks", 0)
    if last["epoch"] >= E - 1 or k >= len(decays) - 1:  # the last epoch, or the maximum reached
      return None
    firings = es_firings(_trace(records), E, **rule)
    if not firings or firings[-1][0] != last["epoch"]:  # the rule holds now, not at an earlier epoch
      return None
    to = max(firings[-1][1] - c.extra_rollback_epochs, 0)
    new = decays[k + 1]
    update = lambda state: state._replace(w_opt=optim.with_weight_decay(state.w_opt, new))
    return to, update, f"the weight decay goes from {decays[k]:g} to {new:g} (iteration {k + 2})"

  def snapshot_at(epoch):  # the epochs a rollback can go to
    hi = E - 2 - shift - c.extra_rollback_epochs
    lo = max(c.es_start_epoch - c.extra_rollback_epochs, 0)
    return lo <= epoch <= hi and (epoch + c.extra_rollback_epochs) % c.ev_freq == 0

  def finished(records):
    return any(r["epoch"] >= E - 1 for r in records)

  def select(records):
    return E - 1 if any(r["epoch"] == E - 1 for r in records) else None

  return dict(adapt=adapt, snapshot_at=snapshot_at, stop=finished, select=select, monitor=("hessian",),
              monitor_every=c.ev_freq, extra_epochs=(len(decays) - 1) * (shift + c.extra_rollback_epochs))


def _parts(config: RDartsConfig, steps_per_epoch: int) -> base.Parts:
  parts = darts.parts(config, steps_per_epoch)
  if isinstance(config, DartsADAConfig):  # the weight decay is a value in the optimiser state
    c = config
    parts = parts._replace(
        w_tx=base.weight_tx(c, parts.schedule, traced_weight_decay=True),
        virtual_tx=optim.virtual_step_optimizer(parts.schedule, c.w_momentum, c.w_weight_decay,
                                                nesterov=c.w_nesterov, traced_weight_decay=True))
  if config.drop_path <= 0:
    return parts
  c, E = config, config.epochs

  def rates(step):  # p_e = dp e / (E - 1), e the epoch of the step
    e = jnp.asarray(step // steps_per_epoch, jnp.float32)
    return {"drop_path_rate": c.drop_path * e / max(E - 1, 1)}

  metrics = parts.metrics
  return parts._replace(net=base.network(c, edge_drop_path=True), rates=rates,
                        metrics=lambda arch, step: {**metrics(arch, step), **rates(step)})


def _build(name: str):
  def build(config: RDartsConfig, steps_per_epoch: int) -> base.Search:
    method = base.compose(_parts(config, steps_per_epoch), config, steps_per_epoch)
    rules = _ada_rules(config) if isinstance(config, DartsADAConfig) else _rules(config) if config.early_stop else {}
    return base.single_stage(name, config, method, **rules)
  return build


build_es, build_l2, build_dp, build_ada = _build("darts-es"), _build("rdarts-l2"), _build("rdarts-dp"), _build("darts-ada")


@dataclasses.dataclass(frozen=True)
class DartsESConfig(RDartsConfig):
  early_stop: bool = True


@dataclasses.dataclass(frozen=True)
class DartsADAConfig(RDartsConfig):
  """DARTS-ADA as the authors' ADA script runs it: weight decay 3e-4, times ``mul_factor`` = 10 at
  each rollback, until ``max_weight_decay`` = 3e-2 (the args defaults are 3 and 0.0243), drop path
  off; ``extra_rollback_epochs``: go back this many epochs before the stop epoch (0)."""

  mul_factor: float = 10.0
  max_weight_decay: float = 0.03
  extra_rollback_epochs: int = 0

  def __post_init__(self):
    super().__post_init__()
    if self.mul_factor <= 1:
      raise ValueError(f"mul_factor must be > 1, got {self.mul_factor}")
    if self.extra_rollback_epochs < 0 or self.extra_rollback_epochs % self.ev_freq:
      raise ValueError(f"extra_rollback_epochs must be a multiple >= 0 of ev_freq ({self.ev_freq}; the eigenvalue "
                       f"is computed on every ev_freq-th epoch of the run), got {self.extra_rollback_epochs}")
    if not 0 < self.w_weight_decay < self.max_weight_decay < 1:
      raise ValueError(f"DARTS-ADA needs 0 < w_weight_decay < max_weight_decay < 1, got {self.w_weight_decay:g} "
                       f"and {self.max_weight_decay:g}")
    ada_weight_decays(self)  # (raises if the maximum is never reached)


@dataclasses.dataclass(frozen=True)
class RDartsL2Config(RDartsConfig):
  w_weight_decay: float = 0.0243


@dataclasses.dataclass(frozen=True)
class RDartsDPConfig(RDartsConfig):
  drop_path: float = 0.2


_PAPER = ("Zela, Elsken, Saikia, Marrakchi, Brox, Hutter. Understanding and Robustifying Differentiable "
          "Architecture Search (R-DARTS). ICLR 2020")
SPEC_ES = MethodSpec(
    name="darts-es", config=DartsESConfig, build=build_es, paper=_PAPER,
    changes="DARTS stopped early when the local average of the arch-Hessian's lambda_max rises by 1.3x",
    # (a rule that can fire within the demonstration's 3 epochs: lambda(1) / lambda(0) > 1.3 stops at 0)
    cpu={"order": "first", "es_start_epoch": 0, "delta": 1, "window": 1, "ev_freq": 1})
SPEC_ADA = MethodSpec(
    name="darts-ada", config=DartsADAConfig, build=build_ada, paper=_PAPER,
    changes="DARTS rolled back to the DARTS-ES stop epoch with 10x the weight decay (3e-4 -> 3e-3 -> 3e-2)",
    cpu={"order": "first", "es_start_epoch": 0, "delta": 1, "window": 1, "ev_freq": 1})
SPEC_L2 = MethodSpec(
    name="rdarts-l2", config=RDartsL2Config, build=build_l2, paper=_PAPER,
    changes="DARTS with weight decay 0.0243 on the network weights (81x)", cpu={"order": "first"})
SPEC_DP = MethodSpec(
    name="rdarts-dp", config=RDartsDPConfig, build=build_dp, paper=_PAPER,
    changes="DARTS with ScheduledDropPath on every mixed-op output, dp 0.2 e / (E - 1)", cpu={"order": "first"})
