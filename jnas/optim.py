"""Optax chains equal to the PyTorch optimizers of the DARTS recipes.

* ``weight_optimizer``: ``torch.optim.SGD(momentum=0.9, weight_decay=3e-4)`` after
  ``clip_grad_norm_(5)``, with ``CosineAnnealingLR`` stepped once per epoch
  (``cosine_epoch_schedule``).
  Search: lr 0.025 -> 0.001 over 50 epochs; retraining: 0.025 -> 0 over 600 epochs.
* ``virtual_step_optimizer``: the same without clipping, for the second-order virtual step
  w' = w - xi (mu m + grad + lambda w) [DARTS-P Eq. 6-7]; its state tree equals the weight
  optimizer's, so it runs on the real optimizer's momentum buffer and step count.
* ``arch_optimizer``: ``torch.optim.Adam(lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)`` for
  the alphas (coupled L2, not AdamW).

References:
  quark0/darts ``cnn/train_search.py``, ``cnn/architect.py``, ``cnn/train.py``;
  khanrc/pt.darts ``search.py`` / ``augment.py`` (as copied into antoyang/NAS-Benchmark ``DARTS/``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "cosine_epoch_schedule",
    "weight_optimizer",
    "virtual_step_optimizer",
    "arch_optimizer",
    "current_lr",
    "weight_decay_of",
    "with_weight_decay",
]


def cosine_epoch_schedule(base_lr: float, epochs: int, steps_per_epoch: int, min_lr: float = 0.0,
                          shift: bool = False) -> optax.Schedule:
  """Cosine annealing stepped once per epoch (PyTorch ``CosineAnnealingLR(T_max=epochs)``).

  lr(e) = min_lr + (base_lr - min_lr) (1 + cos(pi e / E)) / 2, with e = step // steps_per_epoch:
  the rate is constant within an epoch. Epochs past E stay at min_lr (PyTorch would rise again).

  ``shift=False`` (default) is quark0/darts (PyTorch 0.3: ``scheduler.step()`` at the start of
  epoch e sets lr(e), so epoch 0 runs at base_lr). ``shift=True`` is khanrc/pt.darts on
  PyTorch >= 1.1, which calls ``scheduler.step()`` before each epoch and so runs epoch e at
  lr(e + 1): the first epoch is already annealed and the last one runs at min_lr.

  .. warning:: DARTS search: the paper says the rate is annealed "down to zero", but quark0's
     ``--learning_rate_min`` is 0.001 (YANG Table 2: .025 -> .001); pass ``min_lr`` explicitly.
     Retraining anneals to 0.

  Args:
    base_lr: initial rate (0.025 in DARTS).
    epochs: E, the ``T_max`` of PyTorch.
    steps_per_epoch: optimizer steps per epoch.
    min_lr: ``eta_min``.
    shift: use lr(e + 1) for epoch e (pt.darts / NAS-Benchmark).

  Returns:
    An optax schedule, step count -> learning rate (jittable, float32).
  """
  if epochs < 1 or steps_per_epoch < 1:
    raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs}, {steps_per_epoch}")

  def schedule(count):
    epoch = jnp.minimum(jnp.asarray(count) // steps_per_epoch + int(shift), epochs)
    cos = jnp.cos(math.pi * epoch.astype(jnp.float32) / epochs)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + cos)

  return schedule


def sgdr_epoch_schedule(base_lr: float, min_lr: float, steps_per_epoch: int, t0: int = 10,
                        t_mult: int = 2) -> optax.Schedule:
  """SGDR (Loshchilov & Hutter 2017) stepped once per epoch, as ENAS [melodyguan/enas ``utils.py``]:

    lr = min_lr + (base_lr - min_lr) (1 + cos(pi T_cur / T_i)) / 2,

  T_cur = epochs since the last restart (whole epochs), T_0 = ``t0``, T_i multiplied by ``t_mult``
  at each restart (restarts at epochs 10, 30, 70, 150, 310, 630 for 10 and 2).
  """
  if t0 < 1 or t_mult < 1:
    raise ValueError(f"SGDR needs t0 >= 1 and t_mult >= 1, got {t0}, {t_mult}")

  def schedule(count):
    e = (jnp.asarray(count) // steps_per_epoch).astype(jnp.float32)
    if t_mult == 1:
      t_i, start = jnp.float32(t0), jnp.floor(e / t0) * t0
    else:  # restart k at t0 (m^k - 1) / (m - 1)
      k = jnp.floor(jnp.log1p(e * (t_mult - 1) / t0) / jnp.log(float(t_mult)) + 1e-6)
      start = t0 * (jnp.power(float(t_mult), k) - 1) / (t_mult - 1)
      over = e < start  # (guard against rounding in the log)
      k = jnp.where(over, k - 1, k)
      start = t0 * (jnp.power(float(t_mult), k) - 1) / (t_mult - 1)
      t_i = t0 * jnp.power(float(t_mult), k)
    t_cur = e - start
    return (min_lr + 0.5 * (base_lr - min_lr) * (1 + jnp.cos(jnp.pi * t_cur / t_i))).astype(jnp.float32)

  return schedule


def _as_schedule(lr: float | optax.Schedule) -> optax.Schedule:
  # A constant rate also becomes a schedule, so the state always holds a step count.
  return lr if callable(lr) else optax.constant_schedule(lr)


def weight_optimizer(lr_schedule: float | optax.Schedule, momentum: float = 0.9,
                     weight_decay: float = 3e-4,
                     grad_clip: float | None = 5.0, nesterov: bool = False,
                     traced_weight_decay: bool = False) -> optax.GradientTransformation:
  """PyTorch SGD with coupled L2 and global-norm clipping, as in the DARTS scripts.

  Per step, with g the raw loss gradient (torch ``clip_grad_norm_`` then ``SGD.step``):

    g <- g min(1, c / ||g||_2)      (global norm over all weights; c = grad_clip)
    d <- g + lambda w               (weight decay, added after clipping)
    m <- mu m + d                   (momentum buffer; no dampening; m_0 = 0)
    w <- w - lr(t) m                (Nesterov, torch ``nesterov=True``: w <- w - lr(t) (d + mu m))

  i.e. ``chain(clip_by_global_norm(c), add_decayed_weights(lambda), trace(mu),
  scale_by_learning_rate(lr))``. With ``grad_clip=None`` the clip is replaced by
  ``optax.identity()`` (both have an empty state), so the state tree does not depend on it.

  .. warning:: torch divides by ||g|| + 1e-6 when clipping, optax by ||g||: a relative
     difference of 1e-6 / ||g|| on clipped steps, below float32 resolution for ||g|| >= 5.

  Args:
    lr_schedule: a float, or a schedule (step count -> rate) such as ``cosine_epoch_schedule``.
    momentum: mu (0.9).
    weight_decay: lambda (3e-4).
    grad_clip: c, the maximum global L2 norm of the gradient (5); None disables clipping.
    nesterov: Nesterov momentum (xautodl's GDAS search); optax's ``trace(nesterov=True)`` is torch's.
    traced_weight_decay: keep lambda in the state (``optax.inject_hyperparams``), so that a host
      can change it between steps without a recompile (``with_weight_decay``; R-DARTS's DARTS-ADA).

  Returns:
    An ``optax.GradientTransformation``; its state is (EmptyState, EmptyState, TraceState,
    ScaleByScheduleState) (the second an ``InjectStatefulHyperparamsState`` holding
    ``weight_decay`` when traced). Read the current rate with ``current_lr(lr_schedule, state)``.
  """
  clip = optax.identity() if grad_clip is None else optax.clip_by_global_norm(grad_clip)
  decay = (optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=weight_decay) if traced_weight_decay
           else optax.add_decayed_weights(weight_decay))
  return optax.chain(
      clip,
      decay,
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(_as_schedule(lr_schedule)),
  )


def virtual_step_optimizer(lr_schedule: float | optax.Schedule, momentum: float = 0.9,
                           weight_decay: float = 3e-4, nesterov: bool = False,
                           traced_weight_decay: bool = False) -> optax.GradientTransformation:
  """The weight optimizer without clipping: the virtual step of second-order DARTS.

  w' = w - xi (mu m + grad_w L_train(w, alpha) + lambda w), xi = the current weight rate
  [DARTS-P Eq. 6-7, footnote 1; quark0 ``architect.py`` ``_compute_unrolled_model``, which does
  not clip]. Give it the *real* optimizer's state, which has the same tree::

    updates, _ = virtual_tx.update(g, state.w_opt, w)   # discard the new state
    w_prime = optax.apply_updates(w, updates)

  Args:
    lr_schedule, momentum, weight_decay, traced_weight_decay: the same values as for
      ``weight_optimizer`` (traced: the virtual step uses the real state's current lambda).

  Returns:
    ``weight_optimizer(lr_schedule, momentum, weight_decay, grad_clip=None)``.
  """
  return weight_optimizer(lr_schedule, momentum, weight_decay, grad_clip=None, nesterov=nesterov,
                          traced_weight_decay=traced_weight_decay)


def arch_optimizer(lr: float | optax.Schedule = 3e-4, b1: float = 0.5, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 1e-3, grad_clip: float | None = None,
                   kind: str = "adam") -> optax.GradientTransformation:
  """PyTorch Adam with coupled L2 weight decay, the DARTS optimizer of the alphas.

    d <- g + lambda a,   m <- b1 m + (1 - b1) d,   v <- b2 v + (1 - b2) d^2
    a <- a - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

  i.e. ``chain(add_decayed_weights(lambda), scale_by_adam(b1, b2, eps), scale_by_learning_rate)``;
  weight decay enters the moments (torch ``Adam(weight_decay=...)``), unlike AdamW.
  Defaults: DARTS [DARTS-P App. A.1.1; quark0 ``architect.py``]; PDARTS uses lr 6e-4.

  Args:
    lr: rate or schedule.
    b1, b2, eps: Adam's constants (betas (0.5, 0.999) in DARTS).
    weight_decay: lambda (1e-3).
    grad_clip: clip the alpha gradient to this global norm first (P-DARTS 5, SNAS 10; None: off).
    kind: 'adam', or 'sgd' (plain a <- a - lr (g + lambda a), no momentum: SNAS on one GPU).

  Returns:
    An ``optax.GradientTransformation``.
  """
  if kind not in ("adam", "sgd"):
    raise ValueError(f"unknown arch optimizer {kind!r}; use 'adam' or 'sgd'")
  parts = [] if grad_clip is None else [optax.clip_by_global_norm(grad_clip)]
  parts.append(optax.add_decayed_weights(weight_decay))
  if kind == "adam":
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  parts.append(optax.scale_by_learning_rate(lr))
  return optax.chain(*parts)


def current_lr(lr_schedule: float | optax.Schedule, opt_state) -> jax.Array:
  """The rate the next update of ``weight_optimizer`` will use: lr_schedule(count).

  This is xi of second-order DARTS (quark0 reads ``network_optimizer.param_groups[0]['lr']``).
  Works on a state with a leading seed axis (returns one rate per seed).

  Args:
    lr_schedule: the rate or schedule given to ``weight_optimizer``.
    opt_state: that optimizer's state.
  """
  is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)
  counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=is_sched) if is_sched(s)]
  if len(counts) != 1:
    raise ValueError(f"expected one ScaleByScheduleState in opt_state, found {len(counts)}")
  count = counts[0]
  return jnp.broadcast_to(jnp.asarray(_as_schedule(lr_schedule)(count)), jnp.shape(count))


def _decay_states(opt_state) -> list:
  is_inj = lambda x: isinstance(x, optax.InjectStatefulHyperparamsState)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_inj)
          if is_inj(x) and "weight_decay" in x.hyperparams]


def weight_decay_of(opt_state):
  """The current lambda of a ``weight_optimizer(traced_weight_decay=True)`` state (per seed on a
  stacked state)."""
  found = _decay_states(opt_state)
  if len(found) != 1:
    raise ValueError(f"expected one traced weight_decay in the optimizer state, found {len(found)} "
                     "(build the optimizer with traced_weight_decay=True)")
  return found[0].hyperparams["weight_decay"]


def with_weight_decay(opt_state, value):
  """``opt_state`` with the traced lambda set to ``value`` (same dtype and shape as before), so the
  next update decays with it; the compiled step is unchanged."""
  old = weight_decay_of(opt_state)
  new = jnp.full(jnp.shape(old), value, jnp.asarray(old).dtype)
  if isinstance(old, np.ndarray) or isinstance(old, np.generic):  # a host copy stays on the host
    new = np.asarray(new)
  return optax.tree_utils.tree_set(opt_state, weight_decay=new)
