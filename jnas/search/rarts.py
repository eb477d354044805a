"""RARTS (Xue, Qi, Xin, "RARTS: An Efficient First-Order Relaxed Architecture Search Method", arXiv
2008.03901, IEEE Access 2022).

DARTS's bilevel problem becomes a single-level relaxed one: two networks with weights w (trained
on the training split) and y (on the validation split), coupled, share one architecture alpha
learned from both splits, by Gauss-Seidel block updates without mixed second derivatives
[abstract]. The paper's text and any code were not available: the objective and the update below
are the spec's reading (an unverified recollection of v1 §3, not checked against the paper):

  L(y, w, alpha) = L_val(y, alpha) + lambda L_train(w, alpha) + (beta / 2) ||y - w||^2

  w     <- SGD(lambda grad_w L_train(w, alpha) - beta (y - w))          train batch
  y     <- SGD(grad_y L_val(y, alpha) + beta (y - w))                    val batch, the new w
  alpha <- Adam(grad_alpha L_val(y, alpha) + lambda grad_alpha L_train(w, alpha))   the new w, y

``update='gauss_seidel'`` (default) runs the three blocks in that order, each seeing the newest
values (4 forward/backward passes per step); ``update='jacobi'`` computes every gradient at the
step's old values from the two passes of the w and y blocks (2 passes; another algorithm).

What was not found, and jnas's choice: lambda (1) and beta (``coupling``, 1.0); the optimisers and
their settings (DARTS's for w and y, SGD with momentum, cosine rate, wd 3e-4, clip 5 on each
block's gradient including the coupling term; DARTS's Adam for alpha); y starts equal to w; the
result is DARTS's rule on softmax(alpha); eval-mode validation uses w. The state carries both
weight trees, their batch-norm statistics and optimiser states (y's in ``extra``), so seeds vmap.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jnas import guard, optim
from jnas.search import base, darts
from jnas.search.registry import MethodSpec

__all__ = ["RartsConfig", "make_step", "build", "SPEC"]

UPDATES = ("gauss_seidel", "jacobi")


@dataclasses.dataclass(frozen=True)
class RartsConfig(base.SearchConfig):
  """RARTS: lam (lambda, the train loss's weight), coupling (beta), update order. The shared
  settings are DARTS's (first order: RARTS has no virtual step)."""

  order: str = "first"
  lam: float = 1.0
  coupling: float = 1.0
  update: str = "gauss_seidel"

  def __post_init__(self):
    super().__post_init__()
    if self.update not in UPDATES:
      raise ValueError(f"unknown update {self.update!r}; use one of {UPDATES}")
    if self.lam < 0 or self.coupling < 0:
      raise ValueError(f"lam and coupling must be >= 0, got {self.lam} and {self.coupling}")
    if self.order != "first":
      raise ValueError("RARTS is first order (order='first')")


def _sq_dist(a, b):
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def make_step(loss_fn, w_tx, a_tx, schedule, config: RartsConfig, metrics=None):
  """RARTS's step ``(state, train_batch, val_batch) -> (state, metrics)`` for any supernet loss
  ``loss_fn(params, batch_stats, arch, batch, key, step) -> (loss, (new_stats, logits))``; y, its
  statistics and optimiser state are ``state.extra``. ``metrics(arch, step)``: extra metrics."""
  c = config

  def block(params, stats, opt, arch, batch, key, step, other, weight, scale):
    """One SGD step of a weight block on ``weight`` L(batch) + (beta / 2) ||params - other||^2;
    returns (params, stats, opt, loss, logits, grad_alpha of L)."""
    def total(w, a):
      loss, (new_stats, logits) = loss_fn(w, stats, a, batch, key, step)
      return weight * loss + 0.5 * c.coupling * _sq_dist(w, jax.lax.stop_gradient(other)), (loss, new_stats, logits)
    (_, (loss, new_stats, logits)), (g_w, g_a) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(params, arch)
    updates, opt = w_tx.update(g_w, opt, params)
    updates = jax.tree.map(lambda u: u * jnp.asarray(scale, u.dtype), updates)
    return optax.apply_updates(params, updates), new_stats, opt, loss, logits, g_a

  def alpha_grad(params, stats, arch, batch, key, step):
    return jax.grad(lambda a: loss_fn(params, stats, a, batch, key, step)[0])(arch)

  def step(state: base.SearchState, train_batch, val_batch):
    k = jax.random.fold_in(jax.random.fold_in(state.key, base._METHOD), state.step)
    k_w, k_y, k_aw, k_ay = jax.random.split(k, 4)
    y, t = state.extra, state.step
    lr = optim.current_lr(schedule, state.w_opt) * state.lr_scale
    w, w_stats, w_opt, train_loss, train_logits, ga_w = block(
        state.params, state.batch_stats, state.w_opt, state.arch, train_batch, k_w, t, y["params"], c.lam,
        state.lr_scale)
    y_other = w if c.update == "gauss_seidel" else state.params
    yp, y_stats, y_opt, val_loss, val_logits, ga_y = block(
        y["params"], y["batch_stats"], y["w_opt"], state.arch, val_batch, k_y, t, y_other, 1.0, state.lr_scale)
    if c.update == "gauss_seidel":  # alpha at the new w and y (two more passes)
      ga_w = alpha_grad(w, state.batch_stats, state.arch, train_batch, k_aw, t)
      ga_y = alpha_grad(yp, y["batch_stats"], state.arch, val_batch, k_ay, t)
    g_a = jax.tree.map(lambda gv, gt: gv + c.lam * gt, ga_y, ga_w)
    a_updates, a_opt = a_tx.update(g_a, state.a_opt, state.arch)
    arch = optax.apply_updates(state.arch, a_updates)
    new = state._replace(params=w, batch_stats=w_stats, w_opt=w_opt, arch=arch, a_opt=a_opt, step=t + 1,
                         extra={"params": yp, "batch_stats": y_stats, "w_opt": y_opt})
    ok = state.alive & guard.all_finite(train_loss, val_loss, g_a, w, yp, arch, w_opt, y_opt, a_opt)
    new = guard.keep_if(ok, new, state)._replace(alive=ok)
    acc = lambda logits, labels: 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels)
    out = {"train_loss": train_loss, "train_acc": acc(train_logits, train_batch[1]), "val_loss": val_loss,
           "val_acc": acc(val_logits, val_batch[1]), "lr": lr, "coupling_gap": jnp.sqrt(_sq_dist(w, yp))}
    out.update(metrics(arch, t) if metrics is not None else {})
    out["alive"] = ok
    return new, out

  return step


def build(config: RartsConfig, steps_per_epoch: int) -> base.Search:
  c = config
  p = darts.parts(c, steps_per_epoch)
  inner = base.compose(p, c, steps_per_epoch)  # its loss, init, evaluate and derive

  def init(key):
    s = inner.init(key)  # (y starts equal to w)
    return s._replace(extra={"params": s.params, "batch_stats": s.batch_stats, "w_opt": p.w_tx.init(s.params)})

  step = make_step(inner.loss, p.w_tx, p.a_tx, p.schedule, c, p.metrics)
  return base.single_stage("rarts", c, inner._replace(init=init, step=step))


SPEC = MethodSpec(
    name="rarts", config=RartsConfig, build=build,
    paper="Xue, Qi, Xin. RARTS: An Efficient First-Order Relaxed Architecture Search Method. IEEE Access 2022, "
          "arXiv 2008.03901",
    changes="two coupled weight copies (w on the train split, y on the val split), alpha from both splits' "
            "gradients, Gauss-Seidel block updates (the spec's reading; no paper text or code was available)")
