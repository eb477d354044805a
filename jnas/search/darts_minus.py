"""DARTS- (Chu, Wang, Zhang, Zhang, Wei, ICLR 2021: "DARTS-: Robustly Stepping out of Performance
Collapse Without Indicators") and the single-level variant LHD's code calls SurgeNAS.

DARTS-: an auxiliary skip connection beside every mixed op, with a coefficient beta that decays
to zero, takes over the unfair advantage skip-connects have while the supernet trains, so the
alphas of the real ops need not collapse onto skip:

  o_bar(x) = sum_o softmax(alpha)_o o(x) + beta_e aux(x),   beta_e = beta_0 (E - e) / E

aux is the identity on stride-1 edges and a FactorizedReduce with its own weights on stride-2
ones; beta is not weighted by alpha (no gradient reaches the alphas through it) and is constant
within an epoch (1.0, 0.98, ..., 0.02 over 50 epochs). The rest is DARTS first order. This follows
[LHD ``search/DARTS-/train_search_darts_minus.py``, ``concate_sum_five_sig_darts_minus.py``,
``utils_minus.py`` ``DecayScheduler``]; ``aux_decay`` 'cosine' (beta_0 (1 + cos(pi e / E)) / 2),
'slow_cosine' (beta_0 cos(pi e / (2E))) and 'none' are the scheduler's other options. As the code
does at the end, eval-mode validation runs without the auxiliary skip (beta = 0).

SurgeNAS (``surgenas``), as [LHD ``search/SurgeNAS/train_search_surgenas.py``] implements it:
single-level DARTS (one backward of the training loss for the weights and the alphas, on the
whole training set: ``train_portion`` 1.0), batch 160, with the auxiliary skip *inside* every op,
sum_o w_o (o(x) + beta_e aux(x)) = o_bar(x) + beta_e (sum_o w_o) aux(x). With DARTS's per-edge
softmax sum_o w_o = 1 (on LHD's per-node joint softmax it is the edge's share, and the alphas get
a gradient through it). The published SurgeNAS (hardware-aware search) has latency terms this
code does not; jnas reproduces the code and keeps the name it uses.

jnas runs the auxiliary skip as one more column of the mixing weights, on an op ``aux_skip`` (the
skip_connect op with its own parameters) that the supernet gets beside the searched ops; the
alphas, the derived genotype and ``op_magnitude`` cover the searched ops (plus the aux column).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from jnas.search import base, darts
from jnas.search.registry import MethodSpec

__all__ = ["DartsMinusConfig", "SurgeNASConfig", "aux_coefficient", "parts", "build_minus", "build_surgenas",
           "SPEC", "SPEC_SURGENAS"]

AUX_DECAYS = ("linear", "cosine", "slow_cosine", "none")
AUX_OP = "aux_skip"


@dataclasses.dataclass(frozen=True)
class DartsMinusConfig(base.SearchConfig):
  """DARTS- [LHD ``search/DARTS-/``]: DARTS first order, alpha weight decay 0 (as every LHD baseline;
  DARTS's 1e-3: ``--set a_weight_decay=1e-3``), aux_beta = beta_0, aux_decay its schedule."""

  order: str = "first"
  a_weight_decay: float = 0.0
  aux_beta: float = 1.0
  aux_decay: str = "linear"

  def __post_init__(self):
    super().__post_init__()
    if self.aux_decay not in AUX_DECAYS:
      raise ValueError(f"unknown aux_decay {self.aux_decay!r}; use one of {AUX_DECAYS}")
    if self.aux_beta < 0:
      raise ValueError(f"aux_beta must be >= 0, got {self.aux_beta}")
    if AUX_OP in self.primitives:
      raise ValueError(f"{AUX_OP!r} is the auxiliary skip; it cannot be a searched op")


@dataclasses.dataclass(frozen=True)
class SurgeNASConfig(DartsMinusConfig):
  """SurgeNAS as LHD's code runs it: single level on the whole training set, batch 160."""

  train_portion: float = 1.0
  batch_size: int = 160


def aux_coefficient(epoch, epochs: int, beta0: float = 1.0, decay: str = "linear"):
  """beta_e of the auxiliary skip at ``epoch`` (traced or not)."""
  e = jnp.asarray(epoch, jnp.float32)
  if decay == "linear":
    return beta0 * jnp.maximum(epochs - e, 0.0) / epochs
  if decay == "cosine":
    return beta0 * 0.5 * (1.0 + jnp.cos(math.pi * jnp.minimum(e, epochs) / epochs))
  if decay == "slow_cosine":
    return beta0 * jnp.cos(math.pi * jnp.minimum(e, epochs) / (2 * epochs))
  return jnp.asarray(beta0, jnp.float32)


def parts(config: DartsMinusConfig, steps_per_epoch: int, weighted: bool = False) -> base.Parts:
  """DARTS's parts with the auxiliary skip column; ``weighted``: SurgeNAS's beta sum_o w_o."""
  c = config
  p = darts.parts(c, steps_per_epoch)
  net = base.network(c, primitives=tuple(c.primitives) + (AUX_OP,))

  def with_aux(weights, beta):
    out = dict(weights)
    for t, w in weights.items():
      if t not in ("normal", "reduce"):
        continue
      col = beta * (jnp.sum(w, axis=-1, keepdims=True) if weighted else jnp.ones(w.shape[:-1] + (1,), w.dtype))
      out[t] = jnp.concatenate([w, col.astype(w.dtype)], axis=-1)
    return out

  def columns(weights, step):
    beta = 0.0 if step is None else aux_coefficient(step // steps_per_epoch, c.epochs, c.aux_beta, c.aux_decay)
    return with_aux(weights, beta)

  def metrics(arch, step):
    return {**p.metrics(arch, step), "aux_beta": aux_coefficient(step // steps_per_epoch, c.epochs, c.aux_beta,
                                                                 c.aux_decay)}

  return p._replace(net=net, columns=columns, metrics=metrics)


def build_minus(config: DartsMinusConfig, steps_per_epoch: int) -> base.Search:
  method = base.compose(parts(config, steps_per_epoch), config, steps_per_epoch)
  return base.single_stage("darts-minus", config, method)


def build_surgenas(config: SurgeNASConfig, steps_per_epoch: int) -> base.Search:
  method = base.compose(parts(config, steps_per_epoch, weighted=True), config, steps_per_epoch, order="single_level")
  return base.single_stage("surgenas", config, method)


SPEC = MethodSpec(
    name="darts-minus", config=DartsMinusConfig, build=build_minus,
    paper="Chu, Wang, Zhang, Zhang, Wei. DARTS-: Robustly Stepping out of Performance Collapse Without "
          "Indicators. ICLR 2021 (as LHD's baseline code runs it)",
    changes="DARTS first order with an auxiliary skip beside every mixed op, weight 1 -> 0 over the epochs")
SPEC_SURGENAS = MethodSpec(
    name="surgenas", config=SurgeNASConfig, build=build_surgenas,
    paper="'SurgeNAS' as LHD's baseline code implements it (chaoji90/LHD search/SurgeNAS; not the hardware-aware "
          "paper of that name)",
    changes="single-level DARTS on all training data with DARTS-'s decaying auxiliary skip inside every op",
    cpu={"batch_size": 32})
