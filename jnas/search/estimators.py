"""Architecture-gradient estimators of bilevel search, usable by every bilevel method.

With L(w, a, batch) the method's loss (its edge weights, sampling and penalties inside):

* ``'first'``: grad_a L_val(w, a) [DARTS-P §2.3, xi = 0].
* ``'second'`` (exact): grad_a L_val(w'(a), a) with w'(a) = w - xi (mu m + grad_w L_train(w, a) +
  lambda w), one step of the real weight optimizer without clipping, on its momentum buffer and
  learning rate [DARTS-P Eq. 6-7], differentiated end to end by ``jax.grad`` (including the
  second-order term DARTS approximates); ``unroll_steps = k`` applies k such steps (the same
  train batch, momentum carried).
* ``'second-fd'``: DARTS's estimate [DARTS-P Eq. 7-8; quark0 ``architect.py``]:
  g_a(w') - xi (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps), w+- = w +- eps g_w',
  eps = 0.01 / ||g_w'||, with (g_a, g_w') = grad L_val(w', a).

Stochastic methods pass their sampling keys: ``k_train`` for the train-batch terms (the virtual
step, the finite differences), ``k_val`` for the validation loss.
"""

from __future__ import annotations

import jax
import optax

from jnas import optim

__all__ = ["ORDERS", "arch_gradient", "virtual_step"]

ORDERS = ("first", "second", "second-fd")


def virtual_step(loss, params, arch, w_opt, train_batch, key, virtual_tx, unroll_steps: int = 1):
  """w' after ``unroll_steps`` unclipped optimizer steps on ``train_batch`` (a function of arch)."""
  for _ in range(unroll_steps):
    g = jax.grad(lambda w: loss(w, arch, train_batch, key)[0])(params)
    updates, w_opt = virtual_tx.update(g, w_opt, params)
    params = optax.apply_updates(params, updates)
  return params


def arch_gradient(order: str, loss, params, arch, w_opt, train_batch, val_batch, k_train, k_val, *,
                  virtual_tx=None, schedule=None, unroll_steps: int = 1, fd_epsilon: float = 0.01):
  """``(grad_arch, (val_loss, val_logits))`` by ``order``; ``loss(w, a, batch, key) -> (loss, (stats,
  logits))``. The returned loss is the objective whose gradient is taken (at w for 'first', at w'
  otherwise). 'second' and 'second-fd' need the virtual-step optimizer and the lr schedule."""
  if order == "first":
    (val_loss, (_, logits)), g = jax.value_and_grad(lambda a: loss(params, a, val_batch, k_val), has_aux=True)(arch)
    return g, (val_loss, logits)
  if order == "second":
    def unrolled(a):
      w_prime = virtual_step(loss, params, a, w_opt, train_batch, k_train, virtual_tx, unroll_steps)
      return loss(w_prime, a, val_batch, k_val)
    (val_loss, (_, logits)), g = jax.value_and_grad(unrolled, has_aux=True)(arch)
    return g, (val_loss, logits)
  if order != "second-fd":
    raise ValueError(f"unknown order {order!r}; use one of {ORDERS}")
  xi = optim.current_lr(schedule, w_opt)
  w_prime = virtual_step(loss, params, arch, w_opt, train_batch, k_train, virtual_tx, unroll_steps)
  (val_loss, (_, logits)), (g_w, g_a) = jax.value_and_grad(
      lambda w, a: loss(w, a, val_batch, k_val), argnums=(0, 1), has_aux=True)(w_prime, arch)
  eps = fd_epsilon / optax.tree.norm(g_w)
  grad_a_train = jax.grad(lambda w, a: loss(w, a, train_batch, k_train)[0], argnums=1)
  w_plus = jax.tree.map(lambda w, d: w + eps * d, params, g_w)
  w_minus = jax.tree.map(lambda w, d: w - eps * d, params, g_w)
  hvp = jax.tree.map(lambda gp, gm: (gp - gm) / (2 * eps), grad_a_train(w_plus, arch), grad_a_train(w_minus, arch))
  return jax.tree.map(lambda ga, h: ga - xi * h, g_a, hvp), (val_loss, logits)
