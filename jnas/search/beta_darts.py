"""beta-DARTS (Ye, Li, Liu, Yang, Zhang, Hong, Jin, CVPR 2022: "beta-DARTS: Beta-Decay
Regularization for Differentiable Architecture Search"; code Sunshine-Ye/Beta-DARTS).

The Beta-Decay regulariser keeps the softmax-ed architecture weights from growing apart early: it
penalises the log-sum-exp of every edge's alphas, whose gradient is the softmax itself,

  L_alpha = L_val(w, alpha) + lambda_e R(alpha),   R = mean over edges (both cell types) of
            logsumexp_o alpha_{e,o},   lambda_e = 0.5 e   (the code's ``0 + 50 * epoch / 100``)

on the alpha step only (R does not depend on the weights) [Beta-DARTS
``optimizers/darts/architect.py`` ``mlc_loss``, ``_backward_step``]; the rest is DARTS (first
order here, as LHD runs it; the authors' DARTS-space scripts run DARTS's defaults). LHD's copy
[LHD ``search/Beta-DARTS/concate_sum_five_sig_beta.py``] builds R with ``torch.tensor`` from the
per-node terms, which detaches it: as LHD ran it, beta-DARTS is DARTS at batch 128 (its script's
batch). ``beta_detached=True`` reproduces that; the default is the regulariser with its gradient.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jnas.search import base, darts
from jnas.search.registry import MethodSpec

__all__ = ["BetaDartsConfig", "beta_decay", "penalty", "build", "SPEC"]


@dataclasses.dataclass(frozen=True)
class BetaDartsConfig(base.SearchConfig):
  """beta_slope: lambda_e = beta_slope e; beta_detached: LHD's detached regulariser."""

  order: str = "first"
  beta_slope: float = 0.5
  beta_detached: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.beta_slope < 0:
      raise ValueError(f"beta_slope must be >= 0, got {self.beta_slope}")


def beta_decay(arch) -> jax.Array:
  """R = the mean over both cell types' edges of logsumexp over each edge's alphas."""
  return jnp.mean(jnp.concatenate([jax.nn.logsumexp(arch[t], axis=-1) for t in ("normal", "reduce")]))


def penalty(config: BetaDartsConfig, steps_per_epoch: int):
  """The alpha loss's extra term ``(arch, weights, step) -> lambda_e R(alpha)``."""
  c = config

  def term(arch, weights, step):
    r = beta_decay(arch)
    r = jax.lax.stop_gradient(r) if c.beta_detached else r
    return c.beta_slope * (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32) * r
  return term


def build(config: BetaDartsConfig, steps_per_epoch: int) -> base.Search:
  c = config
  p = darts.parts(c, steps_per_epoch)
  metrics = lambda arch, step: {**p.metrics(arch, step), "beta_decay": beta_decay(arch)}
  method = base.compose(p._replace(penalty=penalty(c, steps_per_epoch), metrics=metrics), c, steps_per_epoch)
  return base.single_stage("beta-darts", c, method)


SPEC = MethodSpec(
    name="beta-darts", config=BetaDartsConfig, build=build,
    paper="Ye et al. beta-DARTS: Beta-Decay Regularization for Differentiable Architecture Search. CVPR 2022",
    changes="DARTS with 0.5 e times the mean log-sum-exp of each edge's alphas added to the alpha loss")
