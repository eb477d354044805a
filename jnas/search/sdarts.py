"""SDARTS (Chen & Hsieh, ICML 2020): DARTS whose weights are trained at perturbed edge weights.

The derived architecture is a discretisation of alpha, so L_val should be flat around alpha; training
w against perturbed mixing weights penalises the curvature of L_val in alpha implicitly. One step
[SmoothDARTS ``sota/cnn/train_search.py``, ``attacker/perturb.py``, ``attacker/linf_sgd.py``]:

  1. alpha <- Adam(grad_alpha L_val(w, alpha))             (DARTS's alpha step; first order, as every
                                                             SDARTS experiment ran)
  2. a_bar = softmax(alpha) per edge, eps_e = 0.03 + (eps_max - 0.03) e / E   (eps_max 0.3, e the epoch)
  3. RS:  a_tilde = P(a_bar + U(-eps, eps))
     ADV: a_tilde = PGD on L_train(w, .) in the L_inf ball of radius eps around a_bar: random start
          U(-eps, eps), 7 steps of a <- P(clip(a + (2 eps / 7) sign(grad_a L_train), a_bar +- eps)),
          BN in eval mode (running statistics) during the attack; kept only if it raised the loss
  4. w <- SGD(clip(grad_w L_train(w, a_tilde)))            (a_tilde used as the mixing weights)

P (``project``) maps a row back to the simplex as the code does: clamp to [0, 1], a row that became
all zeros gets a one at its former argmax, then divide by the row sum. ``perturb`` picks RS or ADV;
the registered methods are ``sdarts-rs`` and ``sdarts-adv``. The paper's text was not available
(spec: "[not found]"); everything here follows the authors' code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jnas.search import base, darts
from jnas.search.registry import MethodSpec

__all__ = ["SdartsConfig", "project", "epsilon", "perturb_random", "perturb_pgd", "parts", "SPEC_RS", "SPEC_ADV"]

PERTURBATIONS = ("random", "pgd")


@dataclasses.dataclass(frozen=True)
class SdartsConfig(base.SearchConfig):
  """SDARTS: DARTS first order (the authors' runs) plus the perturbation of the weight step.

  perturb: 'random' (SDARTS-RS) or 'pgd' (SDARTS-ADV). epsilon_max: 0.3; epsilon_min: 0.03 (the
  ramp's start). pgd_steps: 7 (step size 2 eps / pgd_steps).
  """

  order: str = "first"
  perturb: str = "random"
  epsilon_max: float = 0.3
  epsilon_min: float = 0.03
  pgd_steps: int = 7

  def __post_init__(self):
    super().__post_init__()
    if self.perturb not in PERTURBATIONS:
      raise ValueError(f"unknown perturb {self.perturb!r}; use one of {PERTURBATIONS}")
    if not 0.0 <= self.epsilon_min <= self.epsilon_max:
      raise ValueError(f"need 0 <= epsilon_min <= epsilon_max, got {self.epsilon_min}, {self.epsilon_max}")
    if self.pgd_steps < 1:
      raise ValueError(f"pgd_steps must be >= 1, got {self.pgd_steps}")


def project(w):
  """Each row of ``w`` back onto the simplex, as SmoothDARTS's ``clip``: clamp to [0, 1]; a row with
  sum 0 gets 1 at the argmax it had; divide by the row sum."""
  top = jax.nn.one_hot(jnp.argmax(w, axis=-1), w.shape[-1], dtype=w.dtype)
  c = jnp.clip(w, 0.0, 1.0)
  total = jnp.sum(c, axis=-1, keepdims=True)
  c = jnp.where(total > 0, c, top)
  return c / jnp.sum(c, axis=-1, keepdims=True)


def epsilon(config: SdartsConfig, step, steps_per_epoch: int):
  """eps_e = eps_min + (eps_max - eps_min) e / E, e = the step's epoch (traced)."""
  e = base.epoch_of(step, steps_per_epoch).astype(jnp.float32)
  return config.epsilon_min + (config.epsilon_max - config.epsilon_min) * e / config.epochs


def _cells(weights):
  return {k: v for k, v in weights.items() if k in ("normal", "reduce")}


def perturb_random(clean: dict, key, eps) -> dict:
  """SDARTS-RS: P(a_bar + U(-eps, eps)) for each cell type's rows."""
  keys = dict(zip(sorted(clean), jax.random.split(key, len(clean))))
  return {k: project(v + jax.random.uniform(keys[k], v.shape, v.dtype, -eps, eps)) for k, v in clean.items()}


def perturb_pgd(clean: dict, key, eps, loss, steps: int) -> dict:
  """SDARTS-ADV: projected sign-gradient ascent of ``loss`` (mixing weights -> scalar) in the
  L_inf ball of radius ``eps`` around ``clean``, from a random start; ``clean`` if it did not raise
  the loss."""
  step_size = 2.0 * eps / steps
  w = perturb_random(clean, key, eps)
  grad = jax.grad(loss)

  def body(_, w):
    g = grad(w)
    w = {k: w[k] + step_size * jnp.sign(g[k]) for k in w}
    return {k: project(jnp.clip(w[k], clean[k] - eps, clean[k] + eps)) for k in w}

  w = jax.lax.fori_loop(0, steps, body, w)
  better = loss(w) > loss(clean)
  return {k: jnp.where(better, w[k], clean[k]) for k in w}


def parts(config: SdartsConfig, steps_per_epoch: int) -> base.Parts:
  p = darts.parts(config, steps_per_epoch)

  def weight_mix(arch, key, step, attack_loss):
    full = p.mix(arch, None, step)
    clean = jax.lax.stop_gradient(_cells(full))
    eps = epsilon(config, step, steps_per_epoch)
    if config.perturb == "random":
      new = perturb_random(clean, key, eps)
    else:
      new = perturb_pgd(clean, key, eps, lambda w: attack_loss({**full, **w}), config.pgd_steps)
    return {**full, **jax.lax.stop_gradient(new)}

  return p._replace(weight_mix=weight_mix)


def _build(name: str):
  def build(config: SdartsConfig, steps_per_epoch: int) -> base.Search:
    return base.single_stage(name, config, base.compose(parts(config, steps_per_epoch), config, steps_per_epoch))
  return build


@dataclasses.dataclass(frozen=True)
class SdartsAdvConfig(SdartsConfig):
  """SDARTS-ADV: ``perturb='pgd'``."""

  perturb: str = "pgd"


_PAPER = "Chen & Hsieh. Stabilizing Differentiable Architecture Search via Perturbation-based Regularization. ICML 2020"
SPEC_RS = MethodSpec(name="sdarts-rs", config=SdartsConfig, build=_build("sdarts-rs"), paper=_PAPER,
                     changes="DARTS (first order) with the weight step at softmax(alpha) + U(-eps, eps), eps 0.03 -> 0.3")
SPEC_ADV = MethodSpec(name="sdarts-adv", config=SdartsAdvConfig, build=_build("sdarts-adv"), paper=_PAPER,
                      changes="DARTS (first order) with the weight step at a 7-step PGD attack on softmax(alpha), "
                              "eps 0.03 -> 0.3")
