"""GAEA (Li, Khodak, Balcan, Talwalkar, ICLR 2021: "Geometry-Aware Gradient Algorithms for Neural
Architecture Search"): exponentiated-gradient architecture updates, bilevel and single level.

The architecture parameters live on the simplex of each edge and take mirror-descent steps with
the entropic mirror map, which favours sparse solutions:

  p_e <- normalise(p_e * exp(-eta grad_{p_e} L)),   normalise(x) = max(x, 1e-5) / sum max(x, 1e-5)

(``exponentiated_gradient``, an optax transformation; eta = ``a_lr`` = 0.1, no momentum, no
weight decay), p starting uniform. The supernet mixes with p itself (``mix='simplex'``, the
paper's); LHD's port [LHD ``search/GAEA/architect_gaea.py``, ``concate_sum_five_gaea_sig.py``]
still applies its softmax to p (``mix='softmax'``), which keeps every edge near uniform.
``gaea``: bilevel, alpha step on a val batch then the weight step (DARTS first order, 50/50 split)
[LHD ``train_search_gaea_bilevel.py``]; ``gaea-erm``: single level, one backward of the training
loss on the whole training set for both [LHD ``train_search_gaea_erm.py``]. The genotype is
DARTS's rule on the mixing weights.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnas.search import base, darts, select
from jnas.search.registry import MethodSpec

__all__ = ["GAEAConfig", "GAEAERMConfig", "exponentiated_gradient", "parts", "build", "build_erm", "SPEC", "SPEC_ERM"]

MIXES = ("simplex", "softmax")


@dataclasses.dataclass(frozen=True)
class GAEAConfig(base.SearchConfig):
  """a_lr: the exponentiated-gradient step eta; eg_floor: the clamp before renormalising; mix."""

  order: str = "first"
  a_lr: float = 0.1
  eg_floor: float = 1e-5
  mix: str = "simplex"

  def __post_init__(self):
    super().__post_init__()
    if self.mix not in MIXES:
      raise ValueError(f"unknown mix {self.mix!r}; use one of {MIXES}")
    if self.order != "first":
      raise ValueError("GAEA's updates are first order (order='first')")


@dataclasses.dataclass(frozen=True)
class GAEAERMConfig(GAEAConfig):
  """GAEA single level (ERM): one loss on all the training data."""

  train_portion: float = 1.0


def exponentiated_gradient(lr: float, floor: float = 1e-5) -> optax.GradientTransformation:
  """p <- normalise(p exp(-lr g)) over each leaf's last axis, as updates (new p - p)."""
  def update(grads, state, params):
    def one(p, g):
      q = jnp.maximum(p * jnp.exp(-lr * g), floor)
      return q / jnp.sum(q, axis=-1, keepdims=True) - p
    return jax.tree.map(one, params, grads), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def parts(config: GAEAConfig, steps_per_epoch: int) -> base.Parts:
  c = config
  p = darts.parts(c, steps_per_epoch)
  K = len(c.primitives)
  weights = (lambda a: a) if c.mix == "simplex" else (lambda a: jax.nn.softmax(a, axis=-1))
  mix = lambda arch, key=None, step=0: {t: weights(arch[t]) for t in ("normal", "reduce")}

  def init_arch(key):
    shape = p.init_arch(key)["normal"].shape
    return {t: jnp.full(shape, 1.0 / K, jnp.float32) for t in ("normal", "reduce")}

  def derive(arch, data=None):
    return select.darts_top2({t: np.asarray(v) for t, v in mix(arch).items()}, c.primitives)

  return p._replace(init_arch=init_arch, mix=mix, eval_mix=lambda arch: mix(arch), derive=derive,
                    a_tx=exponentiated_gradient(c.a_lr, c.eg_floor),
                    metrics=lambda arch, step: darts.entropy_metrics(mix(arch)))


def build(config: GAEAConfig, steps_per_epoch: int) -> base.Search:
  return base.single_stage("gaea", config, base.compose(parts(config, steps_per_epoch), config, steps_per_epoch))


def build_erm(config: GAEAERMConfig, steps_per_epoch: int) -> base.Search:
  method = base.compose(parts(config, steps_per_epoch), config, steps_per_epoch, order="single_level")
  return base.single_stage("gaea-erm", config, method)


_PAPER = ("Li, Khodak, Balcan, Talwalkar. Geometry-Aware Gradient Algorithms for Neural Architecture Search "
          "(GAEA). ICLR 2021")
SPEC = MethodSpec(name="gaea", config=GAEAConfig, build=build, paper=_PAPER,
                  changes="architecture on the simplex, exponentiated-gradient steps (lr 0.1); bilevel first order")
SPEC_ERM = MethodSpec(name="gaea-erm", config=GAEAERMConfig, build=build_erm, paper=_PAPER,
                      changes="GAEA single level: one backward of the training loss on all the data for both")
