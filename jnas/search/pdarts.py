"""P-DARTS (Chen, Xie, Wu, Tian, ICCV 2019: "Progressive Differentiable Architecture Search:
Bridging the Depth Gap between Search and Evaluation").

Three stages of growing depth, 5 -> 11 -> 17 cells (``layers`` + ``add_layers``), each with a
fresh supernet, alphas and optimisers, the ops of every edge pruned between stages 8 -> 5 -> 3
[chenxin061/pdarts ``train_search.py``]:

* stage s: DARTS first order on the edge's active ops, softmax over them (``masked_softmax``:
  pruned ops get exactly 0); 25 epochs, the first 10 weights only; alpha Adam 6e-4, betas
  (0.5, 0.999), wd 1e-3, its gradient clipped to norm 5; weights lr 0.025 cosine to 0 restarted per
  stage, momentum 0.9, wd 3e-4, clip 5; batch 96.
* skip dropout: inverted dropout after every stride-1 skip-connect (not the strided
  FactorizedReduce), rate p_e = d_s (E - e - 1) / E for the weight-only epochs e < 10 and
  p_e = d_s exp(-0.2 (e - 10)) after; d = (0.1, 0.4, 0.7) (README; the paper and NAS-Benchmark
  0.0, 0.4, 0.7); a traced scalar, so its schedule never recompiles.
* transition: on every edge drop the ops of smallest softmax weight, one at a time (ties to the
  lower index; ``none`` is an op like the others) until 5, then 3, remain (``get_min_k``).
* final genotype, from stage 3's weights: the DARTS rule (``none`` excluded), then at most
  ``skip_cap`` = 2 skip-connects in the normal cell: the kept skip with the smallest weight loses
  it and the cell is derived again, until at most 2 remain (``delete_min_sk_prob``,
  ``keep_1_on``, ``keep_2_branches``; upstream logs every cap and its README uses M = 2;
  NAS-Benchmark's copy writes the cap M = 0).

Seeds whose pruning differs run in separate programs from stage 2 on (``jnas.search.run`` groups
seeds by their op switches). The per-edge op lists are static (``SearchNetwork.op_mask``): pruned
ops have no parameters and cost nothing.
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
from jnas.supernet import init_alphas, make_op_mask

__all__ = ["PDARTSConfig", "dropout_rate", "drop_smallest", "build", "SPEC"]


@dataclasses.dataclass(frozen=True)
class PDARTSConfig(base.SearchConfig):
  """P-DARTS settings (upstream code and README; ``epochs`` and ``warmup_epochs`` per stage)."""

  layers: int = 5
  add_layers: tuple[int, ...] = (0, 6, 12)
  add_width: tuple[int, ...] = (0, 0, 0)
  epochs: int = 25
  warmup_epochs: int = 10
  batch_size: int = 96
  w_lr_min: float = 0.0
  a_lr: float = 6e-4
  a_grad_clip: float | None = 5.0
  dropout_rate: tuple[float, ...] = (0.1, 0.4, 0.7)
  dropout_decay: float = 0.2
  num_to_keep: tuple[int, ...] = (5, 3, 1)
  skip_cap: int | None = 2

  def __post_init__(self):
    for f in ("add_layers", "add_width", "dropout_rate", "num_to_keep"):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    super().__post_init__()
    n = len(self.add_layers)
    if not (len(self.add_width) == len(self.dropout_rate) == len(self.num_to_keep) == n):
      raise ValueError(f"add_layers, add_width, dropout_rate and num_to_keep need one entry per stage, got "
                       f"{self.add_layers}, {self.add_width}, {self.dropout_rate}, {self.num_to_keep}")
    if any(k < 1 for k in self.num_to_keep) or list(self.num_to_keep) != sorted(self.num_to_keep, reverse=True):
      raise ValueError(f"num_to_keep must decrease and stay >= 1, got {self.num_to_keep}")
    if self.num_to_keep[0] > len(self.primitives):
      raise ValueError(f"num_to_keep[0]={self.num_to_keep[0]} exceeds the {len(self.primitives)} ops")


def dropout_rate(config: PDARTSConfig, stage: int, epoch):
  """The skip-connect dropout rate of epoch ``epoch`` (traced) in ``stage``."""
  d, E, W = config.dropout_rate[stage], config.epochs, config.warmup_epochs
  epoch = jnp.asarray(epoch, jnp.float32)
  return jnp.where(epoch < W, d * (E - epoch - 1) / E, d * jnp.exp(-config.dropout_decay * (epoch - W)))


def drop_smallest(probs: np.ndarray, switches: np.ndarray, keep: int) -> np.ndarray:
  """``get_min_k`` per edge: drop the active op of smallest weight (ties: lowest index) until
  ``keep`` remain; returns the new switches."""
  new = np.array(switches, bool)
  for e in range(new.shape[0]):
    while new[e].sum() > keep:
      active = np.flatnonzero(new[e])
      new[e, active[np.argmin(probs[e, active])]] = False
  return new


def _probs(arch, mask):
  return {t: ew.masked_softmax(jnp.asarray(arch[t]), mask[t]) for t in ("normal", "reduce")}


def build(config: PDARTSConfig, steps_per_epoch: int) -> base.Search:
  c = config
  n_stages = len(c.add_layers)
  E, O = space.num_edges(c.steps), len(c.primitives)

  def masks_of(context):
    if context is None:
      return {t: np.ones((E, O), bool) for t in ("normal", "reduce")}
    return {t: np.asarray(context[t], bool) for t in ("normal", "reduce")}

  def stage(index, context):
    mask = masks_of(context)
    sc = dataclasses.replace(c, layers=c.layers + c.add_layers[index], C=c.C + c.add_width[index])
    schedule = base.lr_schedule(sc, steps_per_epoch)
    d = c.dropout_rate[index]
    net = base.network(sc, op_mask=None if context is None else make_op_mask(mask["normal"], mask["reduce"]),
                       op_dropout=("skip_connect",) if d > 0 and "skip_connect" in c.primitives else ())
    m = {t: jnp.asarray(mask[t]) for t in mask}

    def init_arch(key):
      return init_alphas(key, steps=c.steps, num_ops=O, scheme=c.alpha_init)

    def mix(arch, key, step):
      return {t: ew.masked_softmax(arch[t], m[t]) for t in ("normal", "reduce")}

    def rates(step):
      return {"op_dropout_rate": dropout_rate(c, index, step // steps_per_epoch)} if d > 0 else {}

    def derive(arch, data=None):
      probs = {t: np.asarray(p) for t, p in _probs(arch, mask).items()}
      return select.darts_top2(probs, c.primitives, skip_cap=c.skip_cap if index == n_stages - 1 else None)

    def metrics(arch, step):
      out = entropy_metrics(mix(arch, None, step))
      if d > 0:
        out["skip_dropout"] = dropout_rate(c, index, step // steps_per_epoch)
      return out

    parts = base.Parts(net=net, init_arch=init_arch, mix=mix, eval_mix=lambda arch: mix(arch, None, 0), derive=derive,
                       w_tx=base.weight_tx(sc, schedule), a_tx=base.arch_tx(sc), schedule=schedule, rates=rates,
                       metrics=metrics)
    name = f"{sc.layers} cells, {int(mask['normal'][0].sum())} ops per edge"
    return base.Stage(name, base.compose(parts, sc, steps_per_epoch))

  def transition(index, state, context, key):
    mask = masks_of(context)
    probs = {t: np.asarray(p) for t, p in _probs(state.arch, mask).items()}
    keep = c.num_to_keep[index]
    return {t: drop_smallest(probs[t], mask[t], keep).tolist() for t in ("normal", "reduce")}, None

  return base.Search("pdarts", c, n_stages, stage, transition)


SPEC = MethodSpec(
    name="pdarts", config=PDARTSConfig, build=build,
    paper="Chen, Xie, Wu, Tian. Progressive Differentiable Architecture Search (P-DARTS). ICCV 2019",
    changes="3 stages of 5/11/17 cells, ops 8 -> 5 -> 3 per edge; skip dropout; at most 2 skip-connects",
    cpu={"add_layers": (0, 1, 2), "epochs": 2, "warmup_epochs": 1})
