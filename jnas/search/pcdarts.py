"""PC-DARTS (Xu et al., ICLR 2020: "PC-DARTS: Partial Channel Connections for Memory-Efficient
Architecture Search").

Partial channels [PC-DARTS ``model_search.py`` ``MixedOp``]: on edge e with input x of C channels,

  y_e = shuffle_K( concat[ sum_k softmax(alpha_e)_k o_k(x[..., :C/K]),  x[..., C/K:] ] )

(the ops are built for C/K channels; on strided edges the bypass is a 2x2 max pool; shuffle_K
views the channels as (K, C/K) and transposes). Edge normalisation: node_j = sum_{e into j}
softmax(beta_{.->j})_e y_e, beta one weight per edge, softmax over each node's incoming edges.
The first 15 epochs train the weights only (``warmup_epochs``); then each step is DARTS's
(alpha and beta by Adam on a val batch, first order, then the weights). Derivation: the DARTS rule
on softmax(alpha) * softmax(beta) [``genotype``].

Defaults, PC-DARTS ``train_search.py``: K = 4, batch 256, lr 0.1 cosine over 50 epochs to 0 (the
main branch; NAS-Benchmark's copy and the V100 branch anneal to 0.001: ``w_lr_min=0.001``),
momentum 0.9, wd 3e-4, clip 5; alpha and beta Adam 6e-4, betas (0.5, 0.999), wd 1e-3, no clip;
C=16, 8 cells. The paper calls the channel subset "randomly sampled"; the code slices the first
C/K channels and relies on the shuffle, which is what is done here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jnas import space
from jnas.search import base, edge_weights as ew, select
from jnas.search.darts import entropy_metrics
from jnas.search.registry import MethodSpec
from jnas.supernet import init_alphas

__all__ = ["PCDARTSConfig", "parts", "build", "SPEC", "ranking_weights"]


@dataclasses.dataclass(frozen=True)
class PCDARTSConfig(base.SearchConfig):
  """PC-DARTS settings (authors' code; see the module docstring)."""

  batch_size: int = 256
  w_lr: float = 0.1
  w_lr_min: float = 0.0
  a_lr: float = 6e-4
  warmup_epochs: int = 15
  partial_channels: int = 4


def ranking_weights(arch, steps: int) -> dict:
  """softmax(alpha) * softmax(beta) per cell type: what PC-DARTS ranks edges and ops by."""
  out = {}
  for t in ("normal", "reduce"):
    w = jax.nn.softmax(jnp.asarray(arch[t]), -1)
    out[t] = w * ew.edge_normalization(jnp.asarray(arch[f"{t}_beta"]), steps)[:, None]
  return out


def parts(config: PCDARTSConfig, steps_per_epoch: int) -> base.Parts:
  c = config
  schedule = base.lr_schedule(c, steps_per_epoch)
  net = base.network(c, partial_channels=c.partial_channels)

  def init_arch(key):
    k_a, k_b = jax.random.split(key)
    arch = init_alphas(k_a, steps=c.steps, num_ops=len(c.primitives), scheme=c.alpha_init)
    scale = 0.0 if c.alpha_init == "zeros" else 1e-3
    for i, t in enumerate(("normal", "reduce")):
      arch[f"{t}_beta"] = scale * jax.random.normal(jax.random.fold_in(k_b, i), (space.num_edges(c.steps),))
    return arch

  def mix(arch, key, step):
    w = {t: ew.softmax(arch[t]) for t in ("normal", "reduce")}
    w.update({f"{t}_edges": ew.edge_normalization(arch[f"{t}_beta"], c.steps) for t in ("normal", "reduce")})
    return w

  def derive(arch, data=None):
    return select.darts_top2({t: np.asarray(v) for t, v in ranking_weights(arch, c.steps).items()}, c.primitives)

  return base.Parts(net=net, init_arch=init_arch, mix=mix, eval_mix=lambda arch: mix(arch, None, 0), derive=derive,
                    w_tx=base.weight_tx(c, schedule), a_tx=base.arch_tx(c), schedule=schedule,
                    metrics=lambda arch, step: entropy_metrics(mix(arch, None, step)))


def build(config: PCDARTSConfig, steps_per_epoch: int) -> base.Search:
  return base.single_stage("pcdarts", config, base.compose(parts(config, steps_per_epoch), config, steps_per_epoch))


SPEC = MethodSpec(
    name="pcdarts", config=PCDARTSConfig, build=build,
    paper="Xu et al. PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search. ICLR 2020",
    changes="ops see 1/K of the channels (K=4, shuffle), edge normalisation beta; 15 weight-only epochs; "
            "batch 256, lr 0.1",
    cpu={"warmup_epochs": 1})
