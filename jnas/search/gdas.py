"""GDAS (Dong & Yang, CVPR 2019: "Searching for a Robust Neural Architecture in Four GPU Hours")
and GDAS-FRC (its fixed reduction cell), as xautodl runs them in the NASNet/DARTS space.

Per forward and cell type (one draw shared by the cells of that type), on each edge e [xautodl
``search_model_gdas_nasnet.py`` ``get_gumbel_prob``]:

  p_e = softmax((log_softmax(alpha_e) + G_e) / tau),  k_e = argmax p_e,
  h_e = onehot(k_e) - sg(p_e) + p_e,                    edge output  h_{e,k_e} o_{k_e}(x)

Only the sampled op runs (a single-path supernet, ``SearchNetwork(single_path=True)``), so
d/dalpha reaches p_{e,k_e} alone: the form "every op times h" has the same value and a wrong
alpha gradient (``jnas.search.edge_weights.gumbel_hard``). tau falls linearly per epoch,
tau_e = tau_max - (tau_max - tau_min) e / (E - 1), 10 -> 0.1 (a traced scalar).

One step, weights first [xautodl ``exps/NAS-Bench-201-algos/GDAS.py``]:
  1. w <- SGD-Nesterov(clip_5(grad_w CE(train))) with the clip's norm over the weights *and* the
     alphas' train-loss gradient (xautodl clips ``network.parameters()``, which holds the
     alphas; ``clip_with_arch=False`` clips the weights alone);
  2. alpha <- Adam(grad_alpha CE(val)) with a new Gumbel draw, at the new weights.

Derivation: per node the 2 largest (op, input) pairs of softmax(alpha) over all incoming edges and
non-``none`` ops (both may come from one input) [xautodl ``genotype``]; retraining uses the last
epoch's genotype (xautodl also logs a "best" one by arch-batch accuracy; not kept here).

Defaults, xautodl ``configs/search-opts/GDAS-NASNet-CIFAR.config`` and the search script: 250
epochs, batch 256, C=16, N=2 (6 cells: n n r n r n), lr 0.025 -> 0.001 cosine, Nesterov momentum
0.9, weight decay 5e-4, clip 5; alpha Adam 3e-4, betas (0.5, 0.999), wd 1e-3; pools without BN
and a final BN + ReLU (``lastact``). The paper's own values: not found (its text was not
available). Not reproduced: xautodl's search supernet gives its 1x1 convolutions a bias
(``bias = not affine``); jnas's do not.

GDAS-FRC (``fixed_reduce='gdas_frc'``, registry name ``gdas-frc``): the reduction cells are the
fixed cell of ``jnas.frc``; alphas exist for the normal cell only, and the genotype records the
fixed cell.

Vmapped seeds: under ``jax.vmap`` each edge's ``lax.switch`` becomes a select that computes every
op, so S seeds cost S full supernets; ``seed_batching='loop'`` keeps one path per seed
(``benchmarks/search_step.py`` measures both).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jnas.search import base, edge_weights as ew, select
from jnas.search.darts import entropy_metrics
from jnas.search.registry import MethodSpec
from jnas.supernet import init_alphas

__all__ = ["GDASConfig", "GDASFRCConfig", "temperature", "parts", "build", "SPEC", "SPEC_FRC"]


@dataclasses.dataclass(frozen=True)
class GDASConfig(base.SearchConfig):
  """GDAS settings (xautodl defaults; see the module docstring)."""

  epochs: int = 250
  batch_size: int = 256
  layers: int = 6
  w_nesterov: bool = True
  w_weight_decay: float = 5e-4
  tau_max: float = 10.0
  tau_min: float = 0.1
  clip_with_arch: bool = True
  pool_bn: bool = False
  final_bn_relu: bool = True
  fixed_reduce: str | None = None

  def __post_init__(self):
    super().__post_init__()
    if self.order != "first":
      raise ValueError(f"GDAS steps the weights first, then the alphas by first order; got order={self.order!r}")
    if self.fixed_reduce not in (None, "gdas_frc"):
      raise ValueError(f"unknown fixed_reduce {self.fixed_reduce!r}; use None or 'gdas_frc'")


@dataclasses.dataclass(frozen=True)
class GDASFRCConfig(GDASConfig):
  """GDAS-FRC: GDAS with the fixed reduction cell."""

  fixed_reduce: str | None = "gdas_frc"


def temperature(config: GDASConfig, epoch):
  """tau_e = tau_max - (tau_max - tau_min) e / (E - 1) [xautodl GDAS.py]."""
  span = max(config.epochs - 1, 1)
  return config.tau_max - (config.tau_max - config.tau_min) * epoch / span


def parts(config: GDASConfig, steps_per_epoch: int) -> base.Parts:
  c = config
  types = ("normal",) if c.fixed_reduce else ("normal", "reduce")
  schedule = base.lr_schedule(c, steps_per_epoch)
  net = base.network(c, single_path=True, pool_bn=c.pool_bn, final_bn_relu=c.final_bn_relu,
                     reduce_cell=c.fixed_reduce or "searched")

  def init_arch(key):
    a = init_alphas(key, steps=c.steps, num_ops=len(c.primitives), scheme=c.alpha_init)
    return {t: a[t] for t in types}

  def tau(step):
    return temperature(c, (step // steps_per_epoch).astype(jnp.float32))

  def mix(arch, key, step):
    draw = lambda k, a: ew.gumbel_hard(k, a, tau(step))[0]
    return ew.per_cell_type(draw, arch, key, types)

  def eval_mix(arch):  # the argmax op of every edge (the single-path net needs one-hot weights)
    return {t: jax.nn.one_hot(jnp.argmax(arch[t], -1), arch[t].shape[-1]) for t in types}

  def derive(arch, data=None):
    probs = {t: jax.nn.softmax(jnp.asarray(arch[t]), -1) for t in types}
    return select.top2_pairs(jax.device_get(probs), c.primitives, fixed_reduce=c.fixed_reduce)

  def metrics(arch, step):
    return {"tau": tau(step), **entropy_metrics(ew.per_cell_type(ew.softmax, arch, cell_types=types))}

  return base.Parts(net=net, init_arch=init_arch, mix=mix, eval_mix=eval_mix, derive=derive,
                    w_tx=base.weight_tx(c, schedule, clip=not c.clip_with_arch), a_tx=base.arch_tx(c),
                    schedule=schedule, metrics=metrics)


def build(config: GDASConfig, steps_per_epoch: int) -> base.Search:
  method = base.compose(parts(config, steps_per_epoch), config, steps_per_epoch, order="weight_then_arch",
                        clip_with_arch=config.clip_with_arch)
  return base.single_stage("gdas-frc" if config.fixed_reduce else "gdas", config, method)


SPEC = MethodSpec(
    name="gdas", config=GDASConfig, build=build,
    paper="Dong, Yang. Searching for a Robust Neural Architecture in Four GPU Hours (GDAS). CVPR 2019",
    changes="hard Gumbel-softmax with straight-through gradient, one op per edge; weights then alphas; tau 10 -> 0.1",
    cpu={})

SPEC_FRC = MethodSpec(
    name="gdas-frc", config=GDASFRCConfig, build=build,
    paper="Dong, Yang. GDAS, CVPR 2019 (GDAS-FRC: fixed reduction cell)",
    changes="GDAS on the normal cell only; the reduction cells are a fixed hand-designed cell",
    cpu={})
