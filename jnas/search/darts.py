"""DARTS search (Liu et al., ICLR 2019) as pure functions over a state pytree.

  search = DartsSearch(SearchConfig(order="second"), steps_per_epoch=391)
  state = search.init(jax.random.key(seed))
  state, m = search.step(state, (x_train, y_train), (x_val, y_val))   # jit/vmap over seeds
  genotype = search.derive(state)

One step is DARTS's: (1) an Adam step on the alphas with a gradient of the validation loss on the
val batch, (2) an SGD step on the weights with the train batch, at the new alphas [quark0
``train_search.py``]. The alpha gradient is chosen by ``SearchConfig.order``:

* ``'first'``: grad_a L_val(w, a) [DARTS-P §2.3, xi = 0].
* ``'second'`` (exact): grad_a L_val(w'(a), a) with w'(a) = w - xi (mu m + grad_w L_train(w, a) + lambda w),
  one step of the real weight optimizer without clipping, on its momentum buffer and learning rate
  [DARTS-P Eq. 6-7]; differentiated end to end by ``jax.grad``, including the second-order term that
  DARTS approximates. ``unroll_steps = k`` applies k such steps (same train batch, momentum carried).
* ``'second-fd'``: DARTS's estimate [DARTS-P Eq. 7-8; quark0 ``architect.py``]:
  g_a(w') - xi (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps), w+- = w +- eps g_w',
  eps = 0.01 / ||g_w'||, with (g_a, g_w') = grad L_val(w', a).

Batch norm in the search net has no affine parameters and uses batch statistics; its running
statistics (used only by eval-mode validation) are updated by the weight step alone.

A seed is one state. Many seeds: ``jax.vmap(search.step)`` over a leading seed axis of the state
and the batches (``jnas.search.run`` does this). A step whose loss or alpha gradient is not finite
keeps the previous state and sets ``alive`` to False for that seed (``jnas.guard``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jnas import guard, optim, space
from jnas.metrics import top1_accuracy
from jnas.train import cross_entropy
from jnas.genotype import Genotype, derive_genotype
from jnas.supernet import SearchNetwork, init_alphas

__all__ = ["ORDERS", "SearchConfig", "SearchState", "DartsSearch", "config_from_dict"]

ORDERS = ("first", "second", "second-fd")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Settings of a DARTS search; defaults are quark0 ``train_search.py`` (paper_protocol.md §2).

  ``w_lr_min``: quark0's ``learning_rate_min`` 0.001 (the paper's text says 0; pass 0.0 for it).
  ``alpha_init``: 'normal' (quark0, 1e-3 N(0, 1)) or 'zeros' (DARTS-P). ``lr_shift``: pt.darts's
  one-epoch schedule shift (``jnas.optim.cosine_epoch_schedule``). ``fd_epsilon``: the 0.01 of
  second-fd. ``derive_rule``: 'darts' or 'ptdarts'.
  """

  C: int = 16
  layers: int = 8
  num_classes: int = 10
  steps: int = space.STEPS
  primitives: tuple[str, ...] = tuple(space.PRIMITIVES)
  order: str = "second"
  unroll_steps: int = 1
  epochs: int = 50
  batch_size: int = 64
  w_lr: float = 0.025
  w_lr_min: float = 0.001
  w_momentum: float = 0.9
  w_weight_decay: float = 3e-4
  grad_clip: float = 5.0
  lr_shift: bool = False
  a_lr: float = 3e-4
  a_b1: float = 0.5
  a_b2: float = 0.999
  a_weight_decay: float = 1e-3
  alpha_init: str = "normal"
  fd_epsilon: float = 0.01
  derive_rule: str = "darts"
  conv_impl: str = "auto"

  def __post_init__(self):
    object.__setattr__(self, "primitives", tuple(self.primitives))
    if self.order not in ORDERS:
      raise ValueError(f"unknown order {self.order!r}; use one of {ORDERS}")
    if self.unroll_steps < 1:
      raise ValueError(f"unroll_steps must be >= 1, got {self.unroll_steps}")
    if self.unroll_steps > 1 and self.order != "second":
      raise ValueError("unroll_steps > 1 needs order='second' (the exact unrolled gradient)")
    if self.alpha_init not in ("normal", "zeros"):
      raise ValueError(f"unknown alpha_init {self.alpha_init!r}; use 'normal' or 'zeros'")
    for name in ("C", "layers", "num_classes", "steps", "epochs", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.layers < 3:
      raise ValueError(f"layers must be >= 3 (two reduction cells and a normal one), got {self.layers}")


class SearchState(NamedTuple):
  """Everything a search step reads and writes (one seed; a leading axis for many)."""

  params: Any
  batch_stats: Any
  alphas: dict
  w_opt: Any
  a_opt: Any
  key: jax.Array      # the seed's key: data order and augmentation derive from it and the step
  step: jax.Array     # completed steps (int32)
  alive: jax.Array    # False once a step produced a non-finite loss or gradient


def _accuracy(logits, labels):
  return 100.0 * top1_accuracy(logits, labels)


class DartsSearch:
  """Init, step and derive for a DARTS search with ``config`` (see the module docstring).

  Args:
    config: a ``SearchConfig``.
    steps_per_epoch: optimizer steps per epoch (the cosine schedule is stepped per epoch).
  """

  def __init__(self, config: SearchConfig, steps_per_epoch: int):
    self.config = c = config
    self.steps_per_epoch = steps_per_epoch
    self.net = SearchNetwork(C=c.C, layers=c.layers, num_classes=c.num_classes, steps=c.steps,
                             primitives=c.primitives, conv_impl=c.conv_impl)
    self.lr_schedule = optim.cosine_epoch_schedule(c.w_lr, c.epochs, steps_per_epoch, c.w_lr_min, c.lr_shift)
    self.w_tx = optim.weight_optimizer(self.lr_schedule, c.w_momentum, c.w_weight_decay, c.grad_clip)
    self.virtual_tx = optim.virtual_step_optimizer(self.lr_schedule, c.w_momentum, c.w_weight_decay)
    self.a_tx = optim.arch_optimizer(c.a_lr, c.a_b1, c.a_b2, weight_decay=c.a_weight_decay)

  # ------------------------------------------------------------------------------------- init
  def init(self, key: jax.Array) -> SearchState:
    """A fresh state for the seed whose key is ``key`` (weights, alphas, optimizer states)."""
    k_w, k_a = jax.random.split(jax.random.fold_in(key, 0))
    v = self.net.init_variables(k_w)
    alphas = init_alphas(k_a, steps=self.config.steps, num_ops=len(self.config.primitives),
                         scheme=self.config.alpha_init)
    return SearchState(params=v["params"], batch_stats=v["batch_stats"], alphas=alphas,
                       w_opt=self.w_tx.init(v["params"]), a_opt=self.a_tx.init(alphas), key=key,
                       step=jnp.zeros((), jnp.int32), alive=jnp.ones((), bool))

  # ----------------------------------------------------------------------------------- losses
  def loss(self, params, batch_stats, alphas, batch, train: bool = True):
    """``(L(w, a) on batch, (new_batch_stats, logits))``: mean cross-entropy of the supernet."""
    x, y = batch
    logits, new_stats = self.net.forward(params, batch_stats, x, alphas, train=train)
    return cross_entropy(logits, y), (new_stats, logits)

  def _virtual_step(self, params, batch_stats, alphas, w_opt, train_batch):
    """w' after ``unroll_steps`` unclipped optimizer steps on ``train_batch`` (a function of alphas)."""
    for _ in range(self.config.unroll_steps):
      g = jax.grad(lambda w: self.loss(w, batch_stats, alphas, train_batch)[0])(params)
      updates, w_opt = self.virtual_tx.update(g, w_opt, params)
      params = optax.apply_updates(params, updates)
    return params

  def arch_gradient(self, state: SearchState, train_batch, val_batch):
    """``(grad_a, (val_loss, val_logits))`` by the configured order; the loss is the objective
    whose gradient is taken (at w for 'first', at w' otherwise)."""
    c = self.config
    p, s, a = state.params, state.batch_stats, state.alphas
    if c.order == "first":
      (loss, (_, logits)), g = jax.value_and_grad(
          lambda a_: self.loss(p, s, a_, val_batch), has_aux=True)(a)
      return g, (loss, logits)
    if c.order == "second":
      def unrolled(a_):
        w_prime = self._virtual_step(p, s, a_, state.w_opt, train_batch)
        return self.loss(w_prime, s, a_, val_batch)
      (loss, (_, logits)), g = jax.value_and_grad(unrolled, has_aux=True)(a)
      return g, (loss, logits)
    # second-fd: DARTS-P Eq. 7-8
    xi = optim.current_lr(self.lr_schedule, state.w_opt)
    w_prime = self._virtual_step(p, s, a, state.w_opt, train_batch)
    (loss, (_, logits)), (g_w, g_a) = jax.value_and_grad(
        lambda w_, a_: self.loss(w_, s, a_, val_batch), argnums=(0, 1), has_aux=True)(w_prime, a)
    eps = c.fd_epsilon / optax.tree.norm(g_w)
    grad_a_train = jax.grad(lambda w_, a_: self.loss(w_, s, a_, train_batch)[0], argnums=1)
    w_plus = jax.tree.map(lambda w_, d: w_ + eps * d, p, g_w)
    w_minus = jax.tree.map(lambda w_, d: w_ - eps * d, p, g_w)
    hvp = jax.tree.map(lambda gp, gm: (gp - gm) / (2 * eps), grad_a_train(w_plus, a), grad_a_train(w_minus, a))
    return jax.tree.map(lambda ga, h: ga - xi * h, g_a, hvp), (loss, logits)

  # ------------------------------------------------------------------------------------- step
  def step(self, state: SearchState, train_batch, val_batch):
    """One DARTS step: alpha update on ``val_batch``, then weight update on ``train_batch``.

    Batches are ``(images (B, H, W, 3) float, labels (B,) int)``, already augmented.

    Returns:
      ``(new_state, metrics)``; metrics: train_loss, train_acc (before the weight update),
      val_loss, val_acc (the alpha objective's batch), lr, alive.
    """
    g_a, (val_loss, val_logits) = self.arch_gradient(state, train_batch, val_batch)
    a_updates, a_opt = self.a_tx.update(g_a, state.a_opt, state.alphas)
    alphas = optax.apply_updates(state.alphas, a_updates)

    (train_loss, (new_stats, train_logits)), g_w = jax.value_and_grad(
        lambda w: self.loss(w, state.batch_stats, alphas, train_batch), has_aux=True)(state.params)
    lr = optim.current_lr(self.lr_schedule, state.w_opt)
    w_updates, w_opt = self.w_tx.update(g_w, state.w_opt, state.params)
    params = optax.apply_updates(state.params, w_updates)

    new = SearchState(params=params, batch_stats=new_stats, alphas=alphas, w_opt=w_opt, a_opt=a_opt,
                      key=state.key, step=state.step + 1, alive=state.alive)
    ok = state.alive & guard.all_finite(train_loss, val_loss, g_a)
    new = guard.keep_if(ok, new, state)._replace(alive=ok)
    metrics = {"train_loss": train_loss, "train_acc": _accuracy(train_logits, train_batch[1]),
               "val_loss": val_loss, "val_acc": _accuracy(val_logits, val_batch[1]), "lr": lr, "alive": ok}
    return new, metrics

  def eval_batch(self, state: SearchState, batch):
    """``{'loss', 'correct'}`` of the supernet in eval mode (running BN statistics) on ``batch``
    [quark0 ``infer``]; sum ``correct`` over batches for the accuracy."""
    x, y = batch
    logits, _ = self.net.forward(state.params, state.batch_stats, x, state.alphas, train=False)
    return {"loss": cross_entropy(logits, y), "correct": jnp.sum(jnp.argmax(logits, -1) == y)}

  # ----------------------------------------------------------------------------------- derive
  def derive(self, state_or_alphas, rule: str | None = None) -> Genotype:
    """The genotype of one seed's alphas (DARTS rule by default; ``config.derive_rule``)."""
    alphas = state_or_alphas.alphas if isinstance(state_or_alphas, SearchState) else state_or_alphas
    return derive_genotype(jax.device_get(alphas), rule=rule or self.config.derive_rule,
                           primitives=self.config.primitives, steps=self.config.steps)


def config_from_dict(d: dict) -> SearchConfig:
  """A ``SearchConfig`` from a dict with its field names (others are ignored)."""
  names = {f.name for f in dataclasses.fields(SearchConfig)}
  kw = {k: (tuple(v) if k == "primitives" else v) for k, v in d.items() if k in names}
  return SearchConfig(**kw)
