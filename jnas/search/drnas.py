"""DrNAS (Chen, Wang, Cheng, Tang, Hsieh, ICLR 2021: "DrNAS: Dirichlet Neural Architecture Search"),
DARTS space, with its progressive mode.

Each edge's mixing weights are a Dirichlet sample, drawn per forward and cell type and
differentiated pathwise (``jax.random.dirichlet``: implicit reparameterisation of its gamma draws)
[DrNAS ``model_search.py``, ``utils.process_step_matrix``]:

  w_e ~ Dir(beta_e),  beta_e = ELU(theta_e) + 1;   after pruning  w_e <- w_e m_e / sum(w_e m_e)

on the PC-DARTS partial-channel mixed op (ops on C/K channels, shuffle, max-pool bypass on strided
edges) without edge normalisation; the 7 DARTS ops without ``none``. Regulariser: 'l2' (default;
Adam's coupled weight decay 1e-3 on theta) or 'kl' (reg_scale sum_e KL(Dir(beta_e) || Dir(1))).
Each step is DARTS's first order (theta by Adam 6e-4 on a val batch, then the weights), after 10
weight-only epochs in each stage.

Progressive mode (the default, [DrNAS ``DARTS-space/train_search.py``]): stage 1, K = 6, all 7 ops,
25 epochs; then per edge the 4 largest theta stay (their values kept; the others set to 0 and
masked: ``utils.prune``), every op is widened from C/6 to C/4 channels by copying randomly chosen
existing channels (no rescaling: not function-preserving; BN running statistics and momentum
buffers widened with the same indices; stem, preprocessing and classifier untouched;
``net2wider.py``), and stage 2 runs 25 epochs at K = 4 on the 4 kept ops. The cosine learning rate
runs once over both stages (the optimiser state carries over). Not reproduced: the code's
``FactorizedReduce.wider`` orders its BN statistics differently from its two convolutions' outputs;
here they stay aligned.

Derivation: the DARTS rule on the masked softmax(theta) (no ``none`` to exclude; the README's
"Dirichlet mean" ranks the ops of an edge the same way). Defaults: C=36, 20 cells (DrNAS searches
at the evaluation size), batch 64, lr 0.1 -> 0, momentum 0.9, wd 3e-4, clip 5 (weights only).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import digamma, gammaln

from jnas import space
from jnas.search import base, edge_weights as ew, select
from jnas.search.darts import entropy_metrics
from jnas.search.registry import MethodSpec
from jnas.supernet import init_alphas, make_op_mask

__all__ = ["DrNASConfig", "dirichlet_kl", "prune", "widen_state", "build", "SPEC"]

DRNAS_OPS = tuple(p for p in space.PRIMITIVES if p != "none")


@dataclasses.dataclass(frozen=True)
class DrNASConfig(base.SearchConfig):
  """DrNAS settings (authors' code; ``epochs`` is per stage)."""

  C: int = 36
  layers: int = 20
  primitives: tuple[str, ...] = DRNAS_OPS
  epochs: int = 25
  w_lr: float = 0.1
  w_lr_min: float = 0.0
  a_lr: float = 6e-4
  warmup_epochs: int = 10
  progressive: bool = True
  ks: tuple[int, ...] = (6, 4)
  num_keeps: tuple[int, ...] = (7, 4)
  reg_type: str = "l2"
  reg_scale: float = 1e-3

  def __post_init__(self):
    object.__setattr__(self, "ks", tuple(self.ks))
    object.__setattr__(self, "num_keeps", tuple(self.num_keeps))
    if self.reg_type not in ("l2", "kl"):
      raise ValueError(f"unknown reg_type {self.reg_type!r}; use 'l2' (Adam weight decay) or 'kl'")
    if self.reg_type == "l2":
      object.__setattr__(self, "a_weight_decay", self.reg_scale)
    super().__post_init__()
    if len(self.ks) != 2 or len(self.num_keeps) != 2:
      raise ValueError(f"ks and num_keeps give the two stages' K and ops per edge, got {self.ks}, {self.num_keeps}")


def dirichlet_kl(alpha, beta):
  """KL(Dir(alpha) || Dir(beta)) over the last axis."""
  a0, b0 = jnp.sum(alpha, -1), jnp.sum(beta, -1)
  return (gammaln(a0) - jnp.sum(gammaln(alpha), -1) - gammaln(b0) + jnp.sum(gammaln(beta), -1)
          + jnp.sum((alpha - beta) * (digamma(alpha) - digamma(a0)[..., None]), -1))


def prune(theta: np.ndarray, keep: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """DrNAS's ``utils.prune``: the ``keep`` largest raw theta per edge stay (values kept, earlier
  pruned entries excluded), the rest become 0; returns (theta, mask)."""
  t = np.asarray(theta, np.float64)
  rank = t - 1e6 * (~mask) if mask is not None else t
  top = np.argsort(-rank, axis=-1, kind="stable")[:, :keep]
  new_mask = np.zeros_like(t, bool)
  np.put_along_axis(new_mask, top, True, axis=-1)
  return np.where(new_mask, theta, 0.0).astype(np.asarray(theta).dtype), new_mask


def _grow(c_old: int, c_new: int, rng) -> np.ndarray:
  return np.concatenate([np.arange(c_old), rng.integers(0, c_old, c_new - c_old)])


def _widen_op(name: str, p: dict, s: dict, m: dict, c_old: int, c_new: int, stride: int, rng):
  """One op instance's params, BN statistics and momentum, widened from c_old to c_new channels
  (``net2wider``'s chains: a conv's output index is the next conv's input and its BN's index)."""
  take = lambda a, idx, axis: np.take(a, idx, axis=axis)

  def dil(p, s, m):  # dw (k, k, C) -> pw (C, C) -> BN
    a, b = _grow(c_old, c_new, rng), _grow(c_old, c_new, rng)
    new = lambda q: {**q, "dw": take(q["dw"], a, 2), "pw": take(take(q["pw"], a, 0), b, 1)}
    return new(p), {"bn": {k: take(v, b, 0) for k, v in s["bn"].items()}}, new(m)

  if name.startswith("dil_conv"):
    return dil(p, s, m)
  if name.startswith("sep_conv"):
    (p1, s1, m1), (p2, s2, m2) = dil(p["op1"], s["op1"], m["op1"]), dil(p["op2"], s["op2"], m["op2"])
    return {"op1": p1, "op2": p2}, {"op1": s1, "op2": s2}, {"op1": m1, "op2": m2}
  if name in ("max_pool_3x3", "avg_pool_3x3"):
    idx = _grow(c_old, c_new, rng)
    return p, {"bn": {k: take(v, idx, 0) for k, v in s["bn"].items()}}, m
  if name == "skip_connect" and stride == 2:  # FactorizedReduce: two 1x1 convs to C/2 each, then BN
    h_old, h_new = c_old // 2, c_new // 2
    i1, i2 = _grow(c_old, c_new, rng), _grow(c_old, c_new, rng)
    o1, o2 = _grow(h_old, h_new, rng), _grow(h_old, h_new, rng)
    new = lambda q: {**q, "w1": take(take(q["w1"], i1, 0), o1, 1), "w2": take(take(q["w2"], i2, 0), o2, 1)}
    bn_idx = np.concatenate([o1, h_old + o2])
    return new(p), {"bn": {k: take(v, bn_idx, 0) for k, v in s["bn"].items()}}, new(m)
  return p, s, m  # identity, none


def widen_state(state, old_net, new_net, key) -> base.SearchState:
  """Stage 1's final state (host, one seed) in stage 2's layout: pruned edges' ops dropped, every
  kept op widened from C/K_1 to C/K_2 channels, with the momentum buffer alongside."""
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint64))
  trace_of = [i for i, st in enumerate(state.w_opt) if isinstance(st, optax.TraceState)]
  if len(trace_of) != 1:
    raise ValueError("DrNAS widening expects one momentum (TraceState) in the weight optimizer state")
  momentum = state.w_opt[trace_of[0]].trace
  params, stats, mom = dict(state.params), dict(state.batch_stats), dict(momentum)
  for g in old_net.groups():
    spec = g.spec
    cell_type = "reduce" if spec.reduction else "normal"
    c_old, c_new = spec.C // old_net.partial_channels, spec.C // new_net.partial_channels
    for tree in (params, stats, mom):
      tree[g.name] = dict(tree[g.name])
    for set_name, stride in (("edges_in", 2 if spec.reduction else 1), ("edges_mid", 1)):
      rows = old_net._set_rows(set_name)
      if not rows:
        continue
      present = new_net._present(cell_type, rows)
      p_new, s_new, m_new = {}, {}, {}
      for o, name in enumerate(old_net.primitives):
        kept = present[o] if present is not None else tuple(range(len(rows)))
        if not kept:
          continue
        p_old = state.params[g.name][set_name].get(name, {})
        s_old = state.batch_stats[g.name][set_name].get(name, {})
        m_old = momentum[g.name][set_name].get(name, {})
        cells = []
        for c in range(g.size):
          for k in kept:
            pick = lambda t: jax.tree.map(lambda a: np.asarray(a)[c, k], t)
            cells.append(_widen_op(name, pick(p_old), pick(s_old), pick(m_old), c_old, c_new, stride, rng))
        stack = lambda j: jax.tree.map(lambda *a: np.stack(a).reshape((g.size, len(kept)) + a[0].shape),
                                       *[x[j] for x in cells])
        if p_old:
          p_new[name], m_new[name] = stack(0), stack(2)
        if s_old:
          s_new[name] = stack(1)
      params[g.name][set_name], stats[g.name][set_name], mom[g.name][set_name] = p_new, s_new, m_new
  w_opt = list(state.w_opt)
  w_opt[trace_of[0]] = state.w_opt[trace_of[0]]._replace(trace=mom)
  return state._replace(params=params, batch_stats=stats, w_opt=tuple(w_opt))


def _stage_net(c: DrNASConfig, context) -> tuple:
  if context is None:
    return base.network(c, partial_channels=c.ks[0]), None
  mask = {t: np.asarray(context["mask"][t], bool) for t in ("normal", "reduce")}
  return base.network(c, partial_channels=int(context["k"]), op_mask=make_op_mask(mask["normal"], mask["reduce"])), mask


def _method(c: DrNASConfig, steps_per_epoch: int, stage: int, context) -> base.SearchMethod:
  stages = 2 if c.progressive else 1
  schedule = base.lr_schedule(c, steps_per_epoch, epochs=c.epochs * stages)  # one cosine over all stages
  net, mask = _stage_net(c, context)
  m = {t: None if mask is None else jnp.asarray(mask[t], jnp.float32) for t in ("normal", "reduce")}

  def init_arch(key):
    return init_alphas(key, steps=c.steps, num_ops=len(c.primitives), scheme=c.alpha_init)

  def mix(arch, key, step):
    return {t: ew.dirichlet(jax.random.fold_in(key, i), arch[t], m[t]) for i, t in enumerate(("normal", "reduce"))}

  def eval_mix(arch):
    return {t: ew.dirichlet_mean(arch[t], m[t]) for t in ("normal", "reduce")}

  def probs(arch):
    if mask is None:
      return {t: jax.nn.softmax(jnp.asarray(arch[t]), -1) for t in ("normal", "reduce")}
    return {t: ew.masked_softmax(jnp.asarray(arch[t]), mask[t]) for t in ("normal", "reduce")}

  def derive(arch, data=None):
    return select.darts_top2({t: np.asarray(p) for t, p in probs(arch).items()}, c.primitives)

  def penalty(arch, weights, step=0):
    if c.reg_type != "kl":
      return 0.0
    return c.reg_scale * sum(jnp.sum(dirichlet_kl(ew.concentration(arch[t]), jnp.ones_like(arch[t])))
                             for t in ("normal", "reduce"))

  parts = base.Parts(net=net, init_arch=init_arch, mix=mix, eval_mix=eval_mix, derive=derive,
                     w_tx=base.weight_tx(c, schedule), a_tx=base.arch_tx(c), schedule=schedule, penalty=penalty,
                     metrics=lambda arch, step: entropy_metrics(probs(arch)))
  return base.compose(parts, c, steps_per_epoch, epochs=c.epochs, epoch_offset=stage * c.epochs)


def build(config: DrNASConfig, steps_per_epoch: int) -> base.Search:
  c = config
  if c.reg_type == "kl" and c.a_weight_decay:
    config = c = dataclasses.replace(c, a_weight_decay=0.0)  # the KL term replaces Adam's decay

  def stage(index, context):
    k = c.ks[0] if context is None else context["k"]
    name = f"K={k}, {c.num_keeps[index] if c.progressive else len(c.primitives)} ops per edge"
    return base.Stage(name, _method(c, steps_per_epoch, index, context))

  def transition(index, state, context, key):
    masks, theta = {}, dict(state.arch)
    for t in ("normal", "reduce"):
      theta[t], masks[t] = prune(state.arch[t], c.num_keeps[1])
    ctx = {"k": c.ks[1], "mask": {t: masks[t].tolist() for t in masks}}
    old_net, _ = _stage_net(c, context)
    new_net, _ = _stage_net(c, ctx)
    return ctx, widen_state(state._replace(arch=theta), old_net, new_net, key)

  return base.Search("drnas", c, 2 if c.progressive else 1, stage, transition if c.progressive else None)


SPEC = MethodSpec(
    name="drnas", config=DrNASConfig, build=build,
    paper="Chen, Wang, Cheng, Tang, Hsieh. DrNAS: Dirichlet Neural Architecture Search. ICLR 2021",
    changes="Dirichlet(ELU(theta)+1) edge weights, pathwise gradient; partial channels; progressive: K 6 -> 4, "
            "prune 7 -> 4 ops, widen; searches at C=36, 20 cells",
    cpu={"C": 12, "epochs": 2, "warmup_epochs": 1})
