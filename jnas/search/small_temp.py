"""Small-temperature DARTS ("Small Temperature is All You Need for Differentiable Architecture
Search", Zhang and Ding, arXiv 2306.06855), as the same authors' code chaoji90/PCDEDD implements it.

Sparsify the relaxed distribution during the search with a small softmax temperature, so that the
supernet trained is close to the pruned network [abstract]. The paper's full text was not
available: its three components are read from the abstract, and their definitions come from
[PCDEDD], whose link to this paper is jnas's inference (the code names no paper):

* the low-temperature relaxation p = softmax(alpha / T) in the alpha step and the weight step
  (``tempered_softmax``) [PCDEDD ``model_search_cyc.py``];
* "a sparse-noisy softmax to get around gradient saturation": read as the code's saturation
  bypass, which adds the T = 1 softmax's Jacobian to the normal cell's alpha gradient where
  T != 1 (``bypass_cells``, default the normal cell only, as the code's hook) [PCDEDD
  ``architect_cyc.py``]. The code has no noise term; what "noisy" refers to was not found;
* "an exponential temperature schedule": ``schedule='pcd'`` (default; ``train_search_cyc.py``),
  T_i = mu / ln(1 + d i), cycled down and up every 10 epochs until epoch 40, then falling
  (``jnas.search.temperature.pcd_temperatures``);
* "an entropy-based adaptive scheme": ``schedule='edd'`` (``train_search_pl.py``; d follows the
  normal cell's mean edge entropy, ``temperature.edd_update``). ``schedule='constant'``: T fixed
  at ``temperature``.

The rest is DARTS first order (alpha step on a val batch, then the weight step at the same T)
with the code's settings: 7 ops (no ``none``), 50 epochs, batch 80, a constant weight rate 0.025
(lr_min = lr), alpha Adam 3e-4 without weight decay. The genotype is DARTS's rule on
softmax(alpha / T) at the last T, rounded to ``round_decimals`` = 3 (ties, frequent at small T,
go to the lower input, as Python's stable sort). Eval-mode validation runs at the current T (the
code also logs it at T = 1e-4). The code draws a fresh random validation batch every step (jnas:
epoch passes over the validation split), and its seed is random in every run.
The temperature state lives in the architecture parameters (``arch['temperature']``; the alpha
optimiser leaves it alone) and moves inside the compiled step, so seeds vmap and a schedule never
recompiles; ``temperature`` is a per-epoch metric.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jnas import space
from jnas.search import base, darts, edge_weights as ew, select, temperature as tmp
from jnas.search.registry import MethodSpec

__all__ = ["SmallTempConfig", "parts", "build", "SPEC"]

SCHEDULES = ("pcd", "edd", "constant")


@dataclasses.dataclass(frozen=True)
class SmallTempConfig(base.SearchConfig):
  """[PCDEDD ``PCDEDD-DARTS/train_search_{cyc,pl}.py``]. decay, cycle, final_epoch, mu: the PCD
  schedule; edd_k (before / from final_epoch), edd_rho, edd_interval, edd_warmup: the EDD
  schedule; temperature: the constant schedule's T; bypass_cells: the cell types whose alpha
  gradient gets the T = 1 path; round_decimals: rounding before the DARTS rule (None: none)."""

  primitives: tuple[str, ...] = tuple(space.PRIMITIVES[1:])
  epochs: int = 50
  batch_size: int = 80
  w_lr: float = 0.025
  w_lr_min: float = 0.025
  a_weight_decay: float = 0.0
  order: str = "first"
  schedule: str = "pcd"
  decay: float = 0.11
  cycle: int = 10
  final_epoch: int = 40
  mu: float = tmp.MU
  edd_k: tuple[float, float] = (0.06, 0.12)
  edd_rho: float = 0.5
  edd_interval: int = 5
  edd_warmup: int = 5
  temperature: float = 1.0
  bypass_cells: tuple[str, ...] = ("normal",)
  round_decimals: int | None = 3

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "edd_k", tuple(self.edd_k))
    object.__setattr__(self, "bypass_cells", tuple(self.bypass_cells))
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
    if not set(self.bypass_cells) <= {"normal", "reduce"}:
      raise ValueError(f"bypass_cells must name 'normal' and/or 'reduce', got {self.bypass_cells}")
    if self.temperature <= 0 or self.mu <= 0 or self.decay <= 0:
      raise ValueError("temperature, mu and decay must be > 0")
    if self.edd_interval < 1 or len(self.edd_k) != 2:
      raise ValueError("edd_interval must be >= 1 and edd_k two numbers")


def _schedule_fns(c: SmallTempConfig, steps_per_epoch: int):
  """(initial state, next(state, alpha_normal, step) -> state) of the config's schedule."""
  if c.schedule == "pcd":
    table = jnp.asarray(tmp.pcd_temperatures(c.epochs, c.decay, c.cycle, c.final_epoch, c.mu))
    at = lambda step: table[jnp.minimum(step // steps_per_epoch, c.epochs - 1)]
    return (lambda: {"T": table[0]}), (lambda state, alpha_n, step: {"T": at(step)})
  if c.schedule == "edd":
    def nxt(state, alpha_n, step):
      new = tmp.edd_update(state, alpha_n, step // steps_per_epoch, warmup=c.edd_warmup, interval=c.edd_interval,
                           final_epoch=c.final_epoch, k=c.edd_k, rho=c.edd_rho, mu=c.mu)
      first = step % steps_per_epoch == 0  # (an epoch's temperature is set at its first step)
      return jax.tree.map(lambda n, o: jnp.where(first, n, o), new, state)
    return tmp.edd_init, nxt
  return (lambda: {"T": jnp.asarray(c.temperature, jnp.float32)}), (lambda state, alpha_n, step: state)


def parts(config: SmallTempConfig, steps_per_epoch: int) -> base.Parts:
  c = config
  p = darts.parts(c, steps_per_epoch)
  init_state, next_state = _schedule_fns(c, steps_per_epoch)
  cells = ("normal", "reduce")

  def init_arch(key):
    alphas = darts.init_arch(c)(key)
    return {**alphas, tmp.TEMPERATURE: next_state(init_state(), alphas["normal"], 0)}  # (epoch 0's)

  def mix(arch, key, step):
    T = tmp.current(arch)
    return {t: ew.tempered_softmax(arch[t], T, bypass=t in c.bypass_cells) for t in cells}

  def eval_mix(arch):
    return {t: ew.tempered_softmax(arch[t], tmp.current(arch)) for t in cells}

  def derive(arch, data=None):
    w = {t: jax.device_get(v) for t, v in eval_mix(arch).items()}
    return select.darts_top2(w, c.primitives, decimals=c.round_decimals)

  def post_step(arch, key, step):
    return {**arch, tmp.TEMPERATURE: next_state(arch[tmp.TEMPERATURE], jax.lax.stop_gradient(arch["normal"]), step)}

  def metrics(arch, step):
    return {**darts.entropy_metrics(eval_mix(arch)), "temperature": tmp.current(arch)}

  return p._replace(init_arch=init_arch, mix=mix, eval_mix=eval_mix, derive=derive, post_step=post_step,
                    metrics=metrics, a_tx=optax.masked(p.a_tx, tmp.frozen_leaves))


def build(config: SmallTempConfig, steps_per_epoch: int) -> base.Search:
  return base.single_stage("small-temp", config, base.compose(parts(config, steps_per_epoch), config, steps_per_epoch))


SPEC = MethodSpec(
    name="small-temp", config=SmallTempConfig, build=build,
    paper="Zhang, Ding. Small Temperature is All You Need for Differentiable Architecture Search. arXiv 2306.06855 "
          "(definitions from the authors' code chaoji90/PCDEDD)",
    changes="softmax(alpha / T) with a small, scheduled T (periodic or entropy-adaptive) and a T = 1 gradient "
            "path for the normal cell; constant weight lr; 7 ops")
