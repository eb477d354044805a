"""DARTS (Liu, Simonyan, Yang, ICLR 2019): softmax-relaxed edges, bilevel gradient descent.

Mixed op on edge (i, j) [DARTS-P Eq. 2]: o(x) = sum_o softmax(alpha^{(i,j)})_o o(x). One step [quark0
``train_search.py``]:

  1. alpha <- Adam(grad_alpha L_val(w, alpha))  on a val batch        (first order, xi = 0)
     or grad_alpha L_val(w - xi grad_w L_train(w, alpha), alpha)       (second order, DARTS-P Eq. 6-7)
  2. w <- SGD(grad_w L_train(w, alpha))          on a train batch, at the new alpha

``order``: 'second' (default, the paper's DARTS (2nd order); exact autodiff through the optax
update), 'second-fd' (DARTS's finite-difference estimate, for parity with the PyTorch codes) or
'first' (``jnas.search.estimators``). Defaults are quark0's (paper_protocol.md §2): 50 epochs,
C=16, 8 cells, batch 64, lr 0.025 -> 0.001 cosine, momentum 0.9, wd 3e-4, clip 5; alpha Adam 3e-4,
betas (0.5, 0.999), wd 1e-3, alpha init 1e-3 N(0, 1) (``alpha_init='zeros'``: the paper's text).
Derivation: top-2 edges per node by their strongest non-``none`` op [DARTS-P §2.4].

Batch norm in the supernet has no affine parameters and uses batch statistics; its running
statistics (used only by eval-mode validation) are updated by the weight step alone (quark0 updates
them in the alpha step's forward too; they never enter the search's gradients).

  method = jnas.search.METHODS['darts'](DartsConfig(order='first'), steps_per_epoch=390)
  m = method.stage(0, None).method            # a SearchMethod: init, step, derive, evaluate
  state = jax.vmap(m.init)(keys)               # many seeds
  state, metrics = jax.jit(jax.vmap(m.step))(state, train_batches, val_batches)
"""

from __future__ import annotations

import dataclasses

from jnas.genotype import derive_genotype
from jnas.search import base, edge_weights as ew
from jnas.search.registry import MethodSpec
from jnas.supernet import init_alphas

__all__ = ["DartsConfig", "parts", "build", "SPEC"]


@dataclasses.dataclass(frozen=True)
class DartsConfig(base.SearchConfig):
  """DARTS: the shared settings with second order as the default (DARTS (2nd order))."""

  order: str = "second"


def init_arch(config: base.SearchConfig):
  def init(key):
    return init_alphas(key, steps=config.steps, num_ops=len(config.primitives), scheme=config.alpha_init)
  return init


def entropy_metrics(weights: dict) -> dict:
  """Mean entropy (nats) of each cell type's edge weights: log(n_ops) when uniform, 0 when one-hot."""
  import jax.numpy as jnp
  out = {}
  for t, w in weights.items():
    if t in ("normal", "reduce"):
      out[f"entropy_{t}"] = -jnp.mean(jnp.sum(w * jnp.log(jnp.clip(w, 1e-30, None)), axis=-1))
  return out


def parts(config: base.SearchConfig, steps_per_epoch: int) -> base.Parts:
  schedule = base.lr_schedule(config, steps_per_epoch)
  mix = lambda arch, key, step: ew.per_cell_type(ew.softmax, arch)
  return base.Parts(
      net=base.network(config), init_arch=init_arch(config), mix=mix,
      eval_mix=lambda arch: mix(arch, None, 0),
      derive=lambda arch, data=None: derive_genotype(arch, rule=config.derive_rule, primitives=config.primitives,
                                                     steps=config.steps),
      w_tx=base.weight_tx(config, schedule), a_tx=base.arch_tx(config), schedule=schedule,
      metrics=lambda arch, step: entropy_metrics(mix(arch, None, step)))


def build(config: DartsConfig, steps_per_epoch: int) -> base.Search:
  return base.single_stage("darts", config, base.compose(parts(config, steps_per_epoch), config, steps_per_epoch))


SPEC = MethodSpec(
    name="darts", config=DartsConfig, build=build,
    paper="Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019",
    changes="the baseline: softmax over ops, bilevel (order first / second exact / second-fd)",
    cpu={"order": "first"})
