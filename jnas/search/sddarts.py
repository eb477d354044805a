"""SD-DARTS (Zhu, Li, Liu, Wang, "Improving Differentiable Architecture Search via
Self-Distillation", Neural Networks 2023, arXiv 2302.05629).

The supernets of earlier steps teach the current one: distilling from them "minimizes the loss
difference for the two consecutive iterations", which lowers the sharpness of the supernet's
minimum and so the gap to the derived network; several earlier supernets are teachers, "their
output probabilities are aggregated through voting" [abstract]. The paper's text and any code
were not available: this is jnas's reading of the abstract, with every open choice a setting:

  alpha step: DARTS first order on a val batch (``kd_in_alpha``: also the distillation term there)
  weight step: L = CE(f(x; w, alpha)) + ``kd_weight`` D(q || softmax(f(x; w, alpha) / tau))
               q = Vote_j softmax(f(x; w_j, alpha_j) / tau) over the teachers, under stop_gradient

* teachers (``teachers`` = 3): the snapshots (w, alpha) the state had at every
  ``teacher_spacing``-th step (1: the last three steps' supernets), kept in a ring buffer inside
  the state (``extra``: stacked params and alphas, the step count of each slot, which slots are
  filled) and updated inside the compiled step; the teachers run batched (``vmap`` over the
  slots) in train mode (batch statistics, as the search supernet's BN has no affine parameters);
  until the buffer has a snapshot there is no distillation term;
* ``vote``: 'mean' (the mean of the teachers' probabilities, default) or 'majority' (the share of
  teachers whose argmax is each class);
* ``divergence``: 'kl' (KL(q || p), default) or 'mse' (mean squared difference of probabilities);
  ``kd_temperature`` tau = 1; ``kd_weight`` 1.
None of these values is the paper's (not found); with ``kd_weight`` 0 the step is DARTS first
order's. Cost: ``teachers`` extra forward passes of the weight step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jnas import guard, optim
from jnas.search import base, darts, estimators
from jnas.search.registry import MethodSpec

__all__ = ["SDDartsConfig", "vote", "distillation", "method", "build", "SPEC"]

VOTES = ("mean", "majority")
DIVERGENCES = ("kl", "mse")


@dataclasses.dataclass(frozen=True)
class SDDartsConfig(base.SearchConfig):
  order: str = "first"
  teachers: int = 3
  teacher_spacing: int = 1
  kd_weight: float = 1.0
  kd_temperature: float = 1.0
  vote: str = "mean"
  divergence: str = "kl"
  kd_in_alpha: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.order != "first":
      raise ValueError("SD-DARTS here is first order (order='first')")
    if self.teachers < 1 or self.teacher_spacing < 1:
      raise ValueError(f"teachers and teacher_spacing must be >= 1, got {self.teachers}, {self.teacher_spacing}")
    if self.vote not in VOTES:
      raise ValueError(f"unknown vote {self.vote!r}; use one of {VOTES}")
    if self.divergence not in DIVERGENCES:
      raise ValueError(f"unknown divergence {self.divergence!r}; use one of {DIVERGENCES}")
    if self.kd_weight < 0 or self.kd_temperature <= 0:
      raise ValueError("kd_weight must be >= 0 and kd_temperature > 0")


def vote(teacher_logits, valid, tau: float, rule: str = "mean"):
  """The teachers' (M, B, K) logits voted into (B, K) probabilities, over the ``valid`` slots."""
  p = jax.nn.softmax(teacher_logits / tau, axis=-1)
  if rule == "majority":
    p = jax.nn.one_hot(jnp.argmax(p, -1), p.shape[-1], dtype=p.dtype)
  w = valid.astype(p.dtype)[:, None, None]
  return jnp.sum(w * p, 0) / jnp.maximum(jnp.sum(w), 1.0)


def distillation(q, student_logits, tau: float, divergence: str = "kl"):
  """D(q || softmax(student / tau)), the batch mean."""
  log_p = jax.nn.log_softmax(student_logits / tau, axis=-1)
  if divergence == "mse":
    return jnp.mean(jnp.sum(jnp.square(q - jnp.exp(log_p)), -1))
  return jnp.mean(jnp.sum(jnp.where(q > 0, q * (jnp.log(jnp.where(q > 0, q, 1.0)) - log_p), 0.0), -1))


def method(p: base.Parts, config: SDDartsConfig, steps_per_epoch: int) -> base.SearchMethod:
  """SD-DARTS's ``SearchMethod`` on DARTS-like ``parts`` (any supernet)."""
  c = config
  inner = base.compose(p, c, steps_per_epoch)  # DARTS first order: init, evaluate, derive, loss
  loss_fn, M = inner.loss, c.teachers

  def init(key):
    s = inner.init(key)
    stack = lambda tree: jax.tree.map(lambda a: jnp.zeros((M,) + a.shape, a.dtype), tree)
    return s._replace(extra={"params": stack(s.params), "arch": stack(s.arch), "steps": jnp.full((M,), -1, jnp.int32),
                             "valid": jnp.zeros((M,), bool)})

  def teacher_probs(buf, stats, batch, key, step):
    """The voted teacher distribution on ``batch`` (and whether any teacher exists)."""
    def one(params, arch):
      return loss_fn(params, stats, arch, batch, key, step)[1][1]
    logits = lax.stop_gradient(jax.vmap(one)(buf["params"], buf["arch"]))
    return vote(logits, buf["valid"], c.kd_temperature, c.vote), jnp.any(buf["valid"])

  def kd_loss(params, stats, arch, batch, key, step, q, any_teacher):
    loss, (new_stats, logits) = loss_fn(params, stats, arch, batch, key, step)
    kd = jnp.where(any_teacher, distillation(q, logits, c.kd_temperature, c.divergence), 0.0)
    return loss + c.kd_weight * kd, (new_stats, logits, loss, kd)

  def step(state: base.SearchState, train_batch, val_batch):
    k = jax.random.fold_in(jax.random.fold_in(state.key, base._METHOD), state.step)
    k_train, k_val, k_w = jax.random.split(k, 3)  # (as compose's keys: the same draws as DARTS)
    t, buf = state.step, state.extra
    # 1. alpha step on the val batch (first order), optionally with the distillation term
    if c.kd_in_alpha:
      q_v, any_v = teacher_probs(buf, state.batch_stats, val_batch, k_val, t)
      (_, (_, val_logits, val_loss, _)), g_a = jax.value_and_grad(
          lambda a: kd_loss(state.params, state.batch_stats, a, val_batch, k_val, t, q_v, any_v), has_aux=True)(state.arch)
    else:
      g_a, (val_loss, val_logits) = estimators.arch_gradient(
          "first", lambda w, a, b, kk: loss_fn(w, state.batch_stats, a, b, kk, t), state.params, state.arch,
          state.w_opt, train_batch, val_batch, k_train, k_val)
    a_updates, a_opt = p.a_tx.update(g_a, state.a_opt, state.arch)
    arch = optax.apply_updates(state.arch, a_updates)
    # 2. weight step at the new alphas, distilled from the teachers
    q, any_teacher = teacher_probs(buf, state.batch_stats, train_batch, k_w, t)
    (_, (new_stats, train_logits, train_loss, kd)), g_w = jax.value_and_grad(
        lambda w: kd_loss(w, state.batch_stats, arch, train_batch, k_w, t, q, any_teacher), has_aux=True)(state.params)
    lr = optim.current_lr(p.schedule, state.w_opt) * state.lr_scale
    w_updates, w_opt = p.w_tx.update(g_w, state.w_opt, state.params)
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: u * jnp.asarray(state.lr_scale, u.dtype), w_updates))
    # 3. the ring buffer: this step's starting supernet joins every teacher_spacing-th step
    push = t % c.teacher_spacing == 0
    slot = (t // c.teacher_spacing) % M
    put = lambda stacked, x: jnp.where(push, lax.dynamic_update_index_in_dim(stacked, x, slot, 0), stacked)
    new_buf = {"params": jax.tree.map(put, buf["params"], state.params), "arch": jax.tree.map(put, buf["arch"], state.arch),
               "steps": put(buf["steps"], t), "valid": put(buf["valid"], jnp.ones((), bool))}
    new = state._replace(params=params, batch_stats=new_stats, arch=arch, w_opt=w_opt, a_opt=a_opt, step=t + 1,
                         extra=new_buf)
    ok = state.alive & guard.all_finite(train_loss, val_loss, g_a, params, new_stats, arch, w_opt, a_opt)
    new = guard.keep_if(ok, new, state)._replace(alive=ok)
    acc = lambda logits, labels: 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels)
    metrics = {"train_loss": train_loss, "train_acc": acc(train_logits, train_batch[1]), "val_loss": val_loss,
               "val_acc": acc(val_logits, val_batch[1]), "lr": lr, "kd_loss": kd, **p.metrics(arch, t), "alive": ok}
    return new, metrics

  return inner._replace(init=init, step=step)


def build(config: SDDartsConfig, steps_per_epoch: int) -> base.Search:
  return base.single_stage("sd-darts", config, method(darts.parts(config, steps_per_epoch), config, steps_per_epoch))


SPEC = MethodSpec(
    name="sd-darts", config=SDDartsConfig, build=build,
    paper="Zhu, Li, Liu, Wang. Improving Differentiable Architecture Search via Self-Distillation (SD-DARTS). "
          "Neural Networks 2023, arXiv 2302.05629",
    changes="DARTS first order whose weight step is distilled from the voted outputs of the last 3 steps' "
            "supernets (jnas's reading of the abstract; no paper text or code was available)")
