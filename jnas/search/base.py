"""The search-method interface and the pieces methods are composed of.

A search method is a value (``SearchMethod``), built from small pure pieces:

* a supernet (``jnas.SearchNetwork`` with its static options: partial channels, op mask, single
  path, dropout);
* an edge-weight map ``mix(arch, key, step) -> weights`` (``jnas.search.edge_weights``), with a
  deterministic ``eval_mix(arch)`` for eval-mode validation;
* an arch-gradient estimator (``jnas.search.estimators``: first order, exact unrolled, finite
  difference);
* an update order: ``arch_then_weight`` (DARTS), ``weight_then_arch`` (GDAS), ``single_level``
  (SNAS: one loss, one backward, two optimisers), ``mixed_level`` (MiLeNAS: the alphas descend
  L_val + lambda L_train at the step's weights), ``weights_only`` (random search with weight
  sharing) or ``bandit`` (MANAS: a weight step at a sampled architecture, then a gradient-free
  update of the architecture state from that architecture's validation loss), each with optional
  alpha warm-up epochs;
* extra losses (``penalty(arch, weights, step)``, e.g. SNAS's resource term) and forward rates per step
  (P-DARTS's skip dropout);
* a selection rule ``derive`` (``jnas.search.select``).

``SearchMethod(init, step, derive, evaluate)``: ``init(key) -> state``, ``step(state,
train_batch, val_batch) -> (state, metrics)`` (pure; jit it, vmap it over a leading seed axis),
``derive(state) -> Genotype`` (host side), ``evaluate(state, batch) -> {'loss', 'correct'}``.

Multi-stage methods (P-DARTS, DrNAS's progressive mode) are a ``Search``: a list of stages, each a
``SearchMethod`` built from a JSON-able *context* (pruned op switches, partial-channel K), with a
host-side ``transition`` from one stage's final state to the next stage's context (and, where the
state carries over, its first state). ``jnas.search.run.run_search`` runs them: one compile per
stage (and per distinct context, since seeds may prune differently), resumable inside any stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jnas import guard, optim, space
from jnas.metrics import top1_accuracy
from jnas.search import estimators
from jnas.supernet import SearchNetwork
from jnas.train import cross_entropy

__all__ = ["SearchConfig", "SearchState", "SearchMethod", "Stage", "Search", "Parts", "ORDERS",
           "UPDATE_ORDERS", "single_stage", "compose", "network", "weight_tx", "arch_tx", "lr_schedule",
           "unbatched_any", "epoch_of", "config_fields"]

ORDERS = estimators.ORDERS
UPDATE_ORDERS = ("arch_then_weight", "weight_then_arch", "single_level", "weights_only", "bandit", "mixed_level")

# fold_in tag of the method's own randomness (Gumbel, Dirichlet, dropout): data order and
# augmentation use tags 1-3 of the seed's key (``jnas.search.run``); ``post_step`` draws with 5.
_METHOD = 4
_POST = 5


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Settings every search method shares; defaults are quark0 DARTS ``train_search.py``
  (paper_protocol.md §2). Methods subclass it with their own fields and the authors' defaults.

  Network: C, layers, num_classes, steps (intermediate nodes), primitives (op set), conv_impl.
  Schedule and data: epochs, batch_size, train_portion (share of the training set for the
  weights; the rest feeds the architecture; 1.0 = no split, single-level methods), cutout_length
  (in the search; DARTS 0).
  Weights: SGD, lr w_lr cosine-annealed per epoch to w_lr_min (quark0 0.001; the DARTS paper's
  text says 0), momentum, Nesterov, weight decay, global-norm grad_clip; ``lr_shift``: run epoch
  e at lr(e + 1), as codes that step the scheduler at the start of an epoch do under PyTorch >= 1.1.
  Architecture: a_optimizer ('adam' or 'sgd'), a_lr, a_b1, a_b2, a_weight_decay (coupled L2),
  a_grad_clip (None: none), alpha_init ('normal' = quark0's 1e-3 N(0, 1); 'zeros' = the paper),
  warmup_epochs (weights only; the alphas stay frozen).
  Arch gradient: order 'first' | 'second' (exact: autodiff through ``unroll_steps`` virtual
  steps of the weight optimizer) | 'second-fd' (DARTS's finite difference, epsilon fd_epsilon).
  derive_rule: 'darts' (softmax) or 'ptdarts' (raw alphas) where a method uses the DARTS rule.
  Space: space 'darts' or 'lhd' (the LHD cell, ``jnas.search.spaces``; with the DARTS defaults of
  ``steps`` and ``primitives`` it takes LHD's, 5 nodes and its 7 ops); lhd_policy: the LHD
  discretisation of ``derive`` ('base', '1m', '3ops', '4out'; ``jnas.lhd.discretize``).
  """

  C: int = 16
  layers: int = 8
  num_classes: int = 10
  steps: int = space.STEPS
  primitives: tuple[str, ...] = tuple(space.PRIMITIVES)
  conv_impl: str = "auto"
  epochs: int = 50
  batch_size: int = 64
  train_portion: float = 0.5
  cutout_length: int = 0
  w_lr: float = 0.025
  w_lr_min: float = 0.001
  w_momentum: float = 0.9
  w_nesterov: bool = False
  w_weight_decay: float = 3e-4
  grad_clip: float | None = 5.0
  lr_shift: bool = False
  a_optimizer: str = "adam"
  a_lr: float = 3e-4
  a_b1: float = 0.5
  a_b2: float = 0.999
  a_weight_decay: float = 1e-3
  a_grad_clip: float | None = None
  alpha_init: str = "normal"
  warmup_epochs: int = 0
  order: str = "first"
  unroll_steps: int = 1
  fd_epsilon: float = 0.01
  derive_rule: str = "darts"
  space: str = "darts"
  lhd_policy: str = "base"

  DERIVE_RULES = ("darts", "ptdarts")  # (a class attribute: the rules a method's derive knows)

  def __post_init__(self):
    object.__setattr__(self, "primitives", tuple(self.primitives))
    if self.space not in ("darts", "lhd"):
      raise ValueError(f"unknown space {self.space!r}; use 'darts' or 'lhd'")
    if self.space == "lhd":
      from jnas import lhd, ops
      if self.primitives == tuple(space.PRIMITIVES):
        object.__setattr__(self, "primitives", tuple(lhd.PRIMITIVES))
      if self.steps == space.STEPS:
        object.__setattr__(self, "steps", lhd.STEPS)
      bad = [p for p in self.primitives if p not in ops.LHD_OP_NAMES + ("aux_skip",)]
      if bad:
        raise ValueError(f"the LHD space has no op(s) {bad}; its ops: {', '.join(ops.LHD_OP_NAMES)}")
      if self.lhd_policy not in lhd.POLICIES:
        raise ValueError(f"unknown lhd_policy {self.lhd_policy!r}; use one of {', '.join(lhd.POLICIES)}")
    if self.order not in ORDERS:
      raise ValueError(f"unknown order {self.order!r}; use one of {ORDERS}")
    if self.unroll_steps < 1:
      raise ValueError(f"unroll_steps must be >= 1, got {self.unroll_steps}")
    if self.unroll_steps > 1 and self.order != "second":
      raise ValueError("unroll_steps > 1 needs order='second' (the exact unrolled gradient)")
    if self.alpha_init not in ("normal", "zeros"):
      raise ValueError(f"unknown alpha_init {self.alpha_init!r}; use 'normal' or 'zeros'")
    if self.a_optimizer not in ("adam", "sgd"):
      raise ValueError(f"unknown a_optimizer {self.a_optimizer!r}; use 'adam' or 'sgd'")
    if self.derive_rule not in self.DERIVE_RULES:
      raise ValueError(f"unknown derive_rule {self.derive_rule!r}; use one of {self.DERIVE_RULES}")
    for name in ("C", "layers", "num_classes", "steps", "epochs", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.layers < 3:
      raise ValueError(f"layers must be >= 3 (two reduction cells and a normal one), got {self.layers}")
    if not 0 < self.train_portion <= 1:
      raise ValueError(f"train_portion must be in (0, 1], got {self.train_portion}")
    if self.warmup_epochs < 0:
      raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
    from jnas import ops
    unknown = [p for p in self.primitives if p not in ops.OP_NAMES]
    if unknown:
      raise ValueError(f"unknown op(s) {unknown}; known: {', '.join(ops.OP_NAMES)}")

  def replace(self, **changes) -> "SearchConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def config_fields(cls) -> dict[str, Any]:
  """``{field: default}`` of a config class (what ``--set`` accepts)."""
  return {f.name: f.default for f in dataclasses.fields(cls)}


class SearchState(NamedTuple):
  """Everything a search step reads and writes (one seed; a leading axis for many).

  ``arch`` holds the method's architecture parameters (DARTS: ``{'normal', 'reduce'}`` alphas;
  PC-DARTS adds the betas; random search has none); ``extra`` any further method state.
  """

  params: Any
  batch_stats: Any
  arch: Any
  w_opt: Any
  a_opt: Any
  key: jax.Array      # the seed's key: data order, augmentation and the method's draws derive from it
  step: jax.Array     # completed steps of this stage (int32)
  alive: jax.Array    # False once a step produced a non-finite loss, gradient or weight
  extra: Any = ()
  lr_scale: Any = 1.0  # factor on this seed's weight updates (= on its weight learning rate; per seed)


class SearchMethod(NamedTuple):
  """A search method (one stage): see the module docstring."""

  init: Callable       # key -> SearchState
  step: Callable       # (state, train_batch, val_batch) -> (state, metrics)
  derive: Callable     # (state, data=None) -> Genotype | None (host side; a state of one seed)
  evaluate: Callable | None = None  # (state, batch) -> {'loss', 'correct'} (eval mode)
  net: Any = None      # the stage's SearchNetwork
  epochs: int = 0      # epochs of this stage
  loss: Callable | None = None  # (params, batch_stats, arch, batch, key, step) -> (loss, (new_stats, logits))
  weights: Callable | None = None       # (arch, key, step) -> the edge weights of one forward
  eval_weights: Callable | None = None  # arch -> the deterministic edge weights of evaluate()
  a_tx: Any = None     # the architecture optimiser whose state is ``SearchState.a_opt``


class Stage(NamedTuple):
  name: str
  method: SearchMethod


class Search(NamedTuple):
  """A method with its stages (one for most methods).

  stage(index, context) -> Stage: the stage's method, for a JSON-able context (None at first).
  transition(index, state, context, key) -> (next context, next state or None): host side, for
    one seed (a host copy of its state); None starts the next stage from ``init``.

  Rules over a seed's per-epoch records (the dicts of ``metrics.jsonl`` of one stage, epoch order:
  losses, ``genotype``, ``hessian_max``, ``op_magnitude``, ...), host side, pure, so that a resumed
  run, whose records are read back, decides as an uninterrupted one:
  stop(records) -> bool: the seed's search is over (DARTS-ES); the stage ends at the first epoch
    boundary where every live seed has stopped (seeds that stopped earlier keep training until
    then; their result is their ``select`` epoch's genotype).
  select(records) -> epoch or None: the epoch (of the last stage) whose derived genotype is the
    result, None for the final state (DARTS-ES's stop epoch, SS-DARTS's selective stop).
  monitor, monitor_every: diagnostics the rules need (``('hessian',)``) and their period in
    epochs (computed at epochs e with e % monitor_every == 0 and at the last epoch).
  selection: how the result is chosen from the final supernet: 'method' (the stage's ``derive``)
    or 'pt' (DARTS-PT's perturbation-based selection with fine-tuning, ``jnas.search.projection``;
    ``run_search(selection='pt')`` applies it after any method).
  adapt(records) -> (epoch, update, description) or None: at an epoch boundary, roll the seed back
    to its state at the end of ``epoch`` and go on from ``update(that state)`` (a host copy of one
    seed's state; DARTS-ADA raises the weight decay; ``description`` says what changed). A seed's records are then its *trajectory*: each
    record has ``epoch`` = the seed's own epoch (its step count's), and a rollback drops the
    records after the epoch it went back to (``rollbacks`` counts them; ``loop_epoch`` is the
    epoch of the run). snapshot_at(epoch) -> bool: the own epochs a later ``adapt`` may go back
    to (their end states are kept). extra_epochs: epochs a stage may run beyond its own so that
    seeds that went back finish theirs (the stage ends when ``stop`` holds for every seed).
  """

  name: str
  config: SearchConfig
  num_stages: int
  stage: Callable[[int, Any], Stage]
  transition: Callable | None = None
  initial_context: Any = None
  stop: Callable | None = None
  select: Callable | None = None
  monitor: tuple = ()
  monitor_every: int = 1
  selection: str = "method"
  adapt: Callable | None = None
  snapshot_at: Callable | None = None
  extra_epochs: int = 0


def single_stage(name: str, config: SearchConfig, method: SearchMethod, **rules) -> Search:
  """A one-stage ``Search``; ``rules``: its ``stop``, ``select``, ``monitor``, ``monitor_every``,
  ``selection``, ``adapt``, ``snapshot_at``, ``extra_epochs``."""
  return Search(name, config, 1, lambda index, context: Stage(name, method), **rules)


# -------------------------------------------------------------------------------- the pieces
def network(config: SearchConfig, **options) -> SearchNetwork:
  """The config's supernet with static ``options`` (partial_channels, op_mask, single_path, ...)."""
  c = config
  kw = dict(C=c.C, layers=c.layers, num_classes=c.num_classes, steps=c.steps, primitives=c.primitives,
            conv_impl=c.conv_impl, cell_space=getattr(c, "space", "darts"))
  kw.update(options)
  return SearchNetwork(**kw)


def lr_schedule(config: SearchConfig, steps_per_epoch: int, epochs: int | None = None):
  return optim.cosine_epoch_schedule(config.w_lr, epochs or config.epochs, steps_per_epoch, config.w_lr_min,
                                     config.lr_shift)


def weight_tx(config: SearchConfig, schedule, clip: bool = True, traced_weight_decay: bool = False):
  return optim.weight_optimizer(schedule, config.w_momentum, config.w_weight_decay,
                                config.grad_clip if clip else None, nesterov=config.w_nesterov,
                                traced_weight_decay=traced_weight_decay)


def arch_tx(config: SearchConfig):
  return optim.arch_optimizer(config.a_lr, config.a_b1, config.a_b2, weight_decay=config.a_weight_decay,
                              grad_clip=config.a_grad_clip, kind=config.a_optimizer)


@jax.custom_batching.custom_vmap
def unbatched_any(pred):
  """``pred`` (a scalar bool); under ``vmap`` the OR over the batch, unbatched.

  A ``lax.cond`` on a batched predicate becomes a select that runs both branches; the warm-up
  test is the same for every live seed of a stage (they step together; a dead seed's result is
  discarded), so an unbatched OR keeps the conditional and skips the arch update in warm-up.
  """
  return pred


@unbatched_any.def_vmap
def _unbatched_any_vmap(axis_size, in_batched, pred):
  del axis_size
  return (unbatched_any(jnp.any(pred)) if in_batched[0] else unbatched_any(pred)), False


def epoch_of(step, steps_per_epoch: int):
  """The stage's epoch of a step count (traced)."""
  return step // steps_per_epoch


def _scaled(updates, state: SearchState):
  """The weight updates times the seed's ``lr_scale`` (for SGD with momentum and weight decay, and
  for Adam, exactly a learning rate ``lr_scale`` times larger)."""
  return jax.tree.map(lambda u: u * jnp.asarray(state.lr_scale, u.dtype), updates)


def _accuracy(logits, labels):
  return 100.0 * top1_accuracy(logits, labels)


class Parts(NamedTuple):
  """The pieces ``compose`` assembles into a ``SearchMethod``.

  net: the supernet. init_arch(key) -> arch. mix(arch, key, step) -> weights for one forward.
  eval_mix(arch) -> weights for eval-mode validation. derive(arch on the host, data=None) -> Genotype.
  rates(step) -> forward rates (``op_dropout_rate``, ``drop_path_rate``); penalty(arch, weights,
  step) -> a loss term (SNAS's resource cost, beta-DARTS's scheduled regulariser); metrics(arch, step) -> extra per-step metrics.
  w_tx, a_tx, schedule: optimisers and the weight learning-rate schedule.
  weight_mix(arch, key, step, attack_loss) -> the mixing weights of the weight step, where they
  differ from ``mix`` (SDARTS trains the weights at perturbed weights); ``attack_loss(weights)``
  is the train batch's loss at given mixing weights with BN in eval mode (for PGD).
  feedback(arch, weights, val_loss, step) -> arch: the ``bandit`` order's update of the
  architecture state from the sampled architecture ``weights`` and its validation loss.
  post_step(arch, key, step) -> arch: after every step, a gradient-free update of state kept in
  the architecture parameters for the next step ``step`` (a temperature schedule's state,
  ``jnas.search.temperature``; the arch optimiser must leave those leaves alone).
  columns(weights, step) -> weights with per-edge columns the supernet has beyond the relaxed ops
  (DARTS-'s auxiliary skip), applied to every weight map's result (``step`` None: eval mode); on
  another cell space (``jnas.search.spaces``) they join after its relaxation.
  """

  net: SearchNetwork
  init_arch: Callable
  mix: Callable
  eval_mix: Callable
  derive: Callable
  w_tx: Any
  a_tx: Any
  schedule: Any
  rates: Callable | None = None
  penalty: Callable | None = None
  metrics: Callable | None = None
  virtual_tx: Any = None
  weight_mix: Callable | None = None
  feedback: Callable | None = None
  post_step: Callable | None = None
  columns: Callable | None = None


def compose(parts: Parts, config: SearchConfig, steps_per_epoch: int, *, order: str = "arch_then_weight",
            estimator: str | None = None, warmup_epochs: int | None = None, epochs: int | None = None,
            clip_with_arch: bool = False, epoch_offset: int = 0, mixed_lambda: float = 1.0) -> SearchMethod:
  """A ``SearchMethod`` from ``parts``.

  Args:
    order: 'arch_then_weight' (DARTS: alpha step on the val batch, then the weight step at the new
      alphas), 'weight_then_arch' (GDAS), 'single_level' (SNAS: weights and alphas from one
      backward of the train loss), 'weights_only' (random search: no alphas) or 'bandit' (MANAS:
      weights = mix(arch, key, step) drawn once, a weight step on the train batch at them, the
      val batch's loss at them with the new weights, then ``parts.feedback``).
    estimator: 'first' | 'second' | 'second-fd' (default ``config.order``); bilevel orders only.
    warmup_epochs: epochs of weight-only steps first (default ``config.warmup_epochs``).
    epochs: the stage's epochs (default ``config.epochs``).
    clip_with_arch: the weight step's global-norm clip also counts the alpha gradient of the train
      loss (xautodl clips ``network.parameters()``, which holds the alphas); weight_then_arch only.
    epoch_offset: epochs already run by earlier stages whose optimiser state this stage carries
      (DrNAS): schedules and warm-up use the stage's own epoch.
    mixed_lambda: lambda of the 'mixed_level' order (first order: one backward of the train loss
      for its weight and alpha gradients, one of the val loss for its alpha gradient, both at the
      step's weights and alphas).
  """
  if order not in UPDATE_ORDERS:
    raise ValueError(f"unknown update order {order!r}; use one of {UPDATE_ORDERS}")
  if (order == "bandit") != (parts.feedback is not None):
    raise ValueError("the 'bandit' order needs parts.feedback, and only it uses one")
  if getattr(config, "space", "darts") == "lhd":
    from jnas.search import spaces
    parts = spaces.lhd_parts(parts, config)
  if parts.columns is not None:
    col, p0 = parts.columns, parts
    parts = parts._replace(
        mix=lambda arch, key, step: col(p0.mix(arch, key, step), step),
        eval_mix=lambda arch: col(p0.eval_mix(arch), None),
        weight_mix=None if p0.weight_mix is None else (
            lambda arch, key, step, attack: col(p0.weight_mix(arch, key, step, lambda w: attack(col(w, step))), step)),
        columns=None)
  c, net, spe = config, parts.net, steps_per_epoch
  estimator = estimator or c.order
  warmup = c.warmup_epochs if warmup_epochs is None else warmup_epochs
  rates = parts.rates or (lambda step: {})
  virtual_tx = parts.virtual_tx or optim.virtual_step_optimizer(parts.schedule, c.w_momentum, c.w_weight_decay,
                                                                nesterov=c.w_nesterov)

  def local_step(state):
    return state.step - epoch_offset * spe

  def loss_fn(params, batch_stats, arch, batch, key, step, train=True, weights=None):
    """``(loss, (new_stats, logits))`` of the supernet at ``arch`` (or at the mixing ``weights``,
    when given) on ``batch``."""
    x, y = batch
    if getattr(y, "ndim", 1) != 1 or x.shape[0] != y.shape[0]:
      raise ValueError(f"a batch is (images (B, H, W, 3), labels (B,)); got images {tuple(x.shape)} and labels "
                       f"{tuple(getattr(y, 'shape', ()))}")
    k_mix, k_fwd = (None, None) if key is None else jax.random.split(key)
    if weights is None:
      weights = parts.mix(arch, k_mix, step)
    logits, new_stats = net.forward(params, batch_stats, x, weights, train=train, key=k_fwd, **rates(step))
    loss = cross_entropy(logits, y)
    if parts.penalty is not None:
      loss = loss + parts.penalty(arch, weights, step)
    return loss, (new_stats, logits)

  def init(key: jax.Array) -> SearchState:
    k_w, k_a = jax.random.split(jax.random.fold_in(key, 0))
    v = net.init_variables(k_w)
    arch = parts.init_arch(k_a)
    return SearchState(params=v["params"], batch_stats=v["batch_stats"], arch=arch,
                       w_opt=parts.w_tx.init(v["params"]), a_opt=parts.a_tx.init(arch), key=key,
                       step=jnp.zeros((), jnp.int32), alive=jnp.ones((), bool), lr_scale=jnp.ones((), jnp.float32))

  def keys(state):
    k = jax.random.fold_in(jax.random.fold_in(state.key, _METHOD), state.step)
    return jax.random.split(k, 3)

  def arch_update(state, train_batch, val_batch, k_train, k_val, params=None):
    """(arch, a_opt, val_loss, val_logits, ok) after one alpha step on ``val_batch``."""
    s = state if params is None else state._replace(params=params)
    step = local_step(state)
    loss = lambda p, a, batch, k: loss_fn(p, s.batch_stats, a, batch, k, step)
    g_a, (val_loss, val_logits) = estimators.arch_gradient(
        estimator, loss, s.params, s.arch, s.w_opt, train_batch, val_batch, k_train, k_val,
        virtual_tx=virtual_tx, schedule=parts.schedule, unroll_steps=c.unroll_steps, fd_epsilon=c.fd_epsilon)
    a_updates, a_opt = parts.a_tx.update(g_a, s.a_opt, s.arch)
    return optax.apply_updates(s.arch, a_updates), a_opt, val_loss, val_logits, guard.all_finite(val_loss, g_a)

  def gated_arch_update(state, *args, **kw):
    """``arch_update`` from the stage's epoch ``warmup`` on; before it the alphas stay."""
    if warmup == 0:
      return arch_update(state, *args, **kw)
    B = args[1][1].shape[0]  # val batch labels

    def frozen(_):
      nan = jnp.full((), jnp.nan)
      return state.arch, state.a_opt, nan, jnp.zeros((B, c.num_classes)), jnp.ones((), bool)

    go = unbatched_any(epoch_of(local_step(state), spe) >= warmup)
    return lax.cond(go, lambda _: arch_update(state, *args, **kw), frozen, None)

  def weight_update(state, arch, train_batch, k):
    """(params, new_stats, w_opt, train_loss, train_logits, lr): one weight step at ``arch``."""
    step = local_step(state)
    weights = None
    if parts.weight_mix is not None:
      k_mix, k = jax.random.split(k)
      attack = lambda wts: loss_fn(state.params, state.batch_stats, arch, train_batch, None, step, train=False,
                                   weights=wts)[0]
      weights = parts.weight_mix(arch, k_mix, step, attack)
    (train_loss, (new_stats, train_logits)), g_w = jax.value_and_grad(
        lambda w: loss_fn(w, state.batch_stats, arch, train_batch, k, step, weights=weights),
        has_aux=True)(state.params)
    lr = optim.current_lr(parts.schedule, state.w_opt) * state.lr_scale
    w_updates, w_opt = parts.w_tx.update(g_w, state.w_opt, state.params)
    return optax.apply_updates(state.params, _scaled(w_updates, state)), new_stats, w_opt, train_loss, train_logits, lr

  def finish(state, params, new_stats, arch, w_opt, a_opt, ok, metrics):
    new = SearchState(params=params, batch_stats=new_stats, arch=arch, w_opt=w_opt, a_opt=a_opt,
                      key=state.key, step=state.step + 1, alive=state.alive, extra=state.extra,
                      lr_scale=state.lr_scale)
    if parts.metrics is not None:  # (of the architecture this step used and made)
      metrics.update(parts.metrics(arch, local_step(state)))
    if parts.post_step is not None:
      k_post = jax.random.fold_in(jax.random.fold_in(state.key, _POST), state.step + 1)
      arch = parts.post_step(arch, k_post, local_step(state) + 1)
      new = new._replace(arch=arch)
    # the kept state of a seed that dies must be finite everywhere: a finite loss can still give
    # an overflowing update (weights, optimiser moments, BN statistics), so those are checked too
    ok = state.alive & ok & guard.all_finite(params, new_stats, arch, w_opt, a_opt)
    new = guard.keep_if(ok, new, state)._replace(alive=ok)
    metrics["alive"] = ok
    return new, metrics

  def step_arch_then_weight(state, train_batch, val_batch):
    k_train, k_val, k_w = keys(state)
    arch, a_opt, val_loss, val_logits, ok_a = gated_arch_update(state, train_batch, val_batch, k_train, k_val)
    params, new_stats, w_opt, train_loss, train_logits, lr = weight_update(state, arch, train_batch, k_w)
    metrics = {"train_loss": train_loss, "train_acc": _accuracy(train_logits, train_batch[1]),
               "val_loss": val_loss, "val_acc": _val_acc(val_loss, val_logits, val_batch[1]), "lr": lr}
    ok = guard.all_finite(train_loss) & ok_a
    return finish(state, params, new_stats, arch, w_opt, a_opt, ok, metrics)

  def step_weight_then_arch(state, train_batch, val_batch):
    k_w, k_train, k_val = keys(state)
    if clip_with_arch:
      (train_loss, (new_stats, train_logits)), (g_w, g_at) = jax.value_and_grad(
          lambda w, a: loss_fn(w, state.batch_stats, a, train_batch, k_w, local_step(state)), argnums=(0, 1),
          has_aux=True)(state.params, state.arch)
      scale = jnp.minimum(1.0, c.grad_clip / optax.tree.norm((g_w, g_at))) if c.grad_clip else 1.0
      g_w = jax.tree.map(lambda g: g * scale, g_w)
      lr = optim.current_lr(parts.schedule, state.w_opt) * state.lr_scale
      w_updates, w_opt = parts.w_tx.update(g_w, state.w_opt, state.params)
      params = optax.apply_updates(state.params, _scaled(w_updates, state))
    else:
      params, new_stats, w_opt, train_loss, train_logits, lr = weight_update(state, state.arch, train_batch, k_w)
    s = state._replace(batch_stats=new_stats, w_opt=w_opt)
    arch, a_opt, val_loss, val_logits, ok_a = gated_arch_update(s, train_batch, val_batch, k_train, k_val,
                                                                params=params)
    metrics = {"train_loss": train_loss, "train_acc": _accuracy(train_logits, train_batch[1]),
               "val_loss": val_loss, "val_acc": _val_acc(val_loss, val_logits, val_batch[1]), "lr": lr}
    ok = guard.all_finite(train_loss) & ok_a
    return finish(state, params, new_stats, arch, w_opt, a_opt, ok, metrics)

  def joint_update(state, g_w, g_a, step):
    """(params, w_opt, arch, a_opt, lr): both optimisers' steps from gradients taken at the step's
    weights and alphas (the alphas frozen during warm-up)."""
    lr = optim.current_lr(parts.schedule, state.w_opt) * state.lr_scale
    w_updates, w_opt = parts.w_tx.update(g_w, state.w_opt, state.params)
    params = optax.apply_updates(state.params, _scaled(w_updates, state))
    if warmup:
      go = unbatched_any(epoch_of(step, spe) >= warmup)
      g_a = jax.tree.map(lambda g: jnp.where(go, g, jnp.zeros_like(g)), g_a)
    a_updates, a_opt = parts.a_tx.update(g_a, state.a_opt, state.arch)
    return params, w_opt, optax.apply_updates(state.arch, a_updates), a_opt, lr

  def step_single_level(state, train_batch, val_batch):
    del val_batch
    k, _, _ = keys(state)
    step = local_step(state)
    (train_loss, (new_stats, train_logits)), (g_w, g_a) = jax.value_and_grad(
        lambda w, a: loss_fn(w, state.batch_stats, a, train_batch, k, step), argnums=(0, 1),
        has_aux=True)(state.params, state.arch)
    params, w_opt, arch, a_opt, lr = joint_update(state, g_w, g_a, step)
    metrics = {"train_loss": train_loss, "train_acc": _accuracy(train_logits, train_batch[1]), "lr": lr}
    return finish(state, params, new_stats, arch, w_opt, a_opt, guard.all_finite(train_loss, g_a), metrics)

  def step_weights_only(state, train_batch, val_batch):
    del val_batch
    k, _, _ = keys(state)
    params, new_stats, w_opt, train_loss, train_logits, lr = weight_update(state, state.arch, train_batch, k)
    metrics = {"train_loss": train_loss, "train_acc": _accuracy(train_logits, train_batch[1]), "lr": lr}
    return finish(state, params, new_stats, state.arch, w_opt, state.a_opt, guard.all_finite(train_loss), metrics)

  def step_bandit(state, train_batch, val_batch):
    k, k_val, _ = keys(state)
    k_mix, k_w = jax.random.split(k)
    step = local_step(state)
    weights = lax.stop_gradient(parts.mix(state.arch, k_mix, step))
    (train_loss, (new_stats, train_logits)), g_w = jax.value_and_grad(
        lambda w: loss_fn(w, state.batch_stats, state.arch, train_batch, k_w, step, weights=weights),
        has_aux=True)(state.params)
    lr = optim.current_lr(parts.schedule, state.w_opt) * state.lr_scale
    w_updates, w_opt = parts.w_tx.update(g_w, state.w_opt, state.params)
    params = optax.apply_updates(state.params, _scaled(w_updates, state))
    # the sampled architecture's validation loss at the new weights (train-mode BN; the running
    # statistics keep the weight step's update)
    val_loss, (_, val_logits) = loss_fn(params, new_stats, state.arch, val_batch, k_val, step, weights=weights)
    arch = parts.feedback(state.arch, weights, val_loss, step)
    metrics = {"train_loss": train_loss, "train_acc": _accuracy(train_logits, train_batch[1]),
               "val_loss": val_loss, "val_acc": _accuracy(val_logits, val_batch[1]), "lr": lr}
    ok = guard.all_finite(train_loss, val_loss)
    return finish(state, params, new_stats, arch, w_opt, state.a_opt, ok, metrics)

  def step_mixed_level(state, train_batch, val_batch):
    k, k_val, _ = keys(state)
    step = local_step(state)
    (train_loss, (new_stats, train_logits)), (g_w, g_at) = jax.value_and_grad(
        lambda w, a: loss_fn(w, state.batch_stats, a, train_batch, k, step), argnums=(0, 1),
        has_aux=True)(state.params, state.arch)
    (val_loss, (_, val_logits)), g_av = jax.value_and_grad(
        lambda a: loss_fn(state.params, state.batch_stats, a, val_batch, k_val, step), has_aux=True)(state.arch)
    g_a = jax.tree.map(lambda v, t: v + mixed_lambda * t, g_av, g_at)
    params, w_opt, arch, a_opt, lr = joint_update(state, g_w, g_a, step)
    metrics = {"train_loss": train_loss, "train_acc": _accuracy(train_logits, train_batch[1]),
               "val_loss": val_loss, "val_acc": _accuracy(val_logits, val_batch[1]), "lr": lr}
    return finish(state, params, new_stats, arch, w_opt, a_opt, guard.all_finite(train_loss, val_loss, g_a), metrics)

  step = {"arch_then_weight": step_arch_then_weight, "weight_then_arch": step_weight_then_arch,
          "single_level": step_single_level, "weights_only": step_weights_only, "bandit": step_bandit,
          "mixed_level": step_mixed_level}[order]

  def evaluate(state: SearchState, batch):
    """``{'loss', 'correct'}`` of the supernet in eval mode (running BN statistics) on ``batch``."""
    x, y = batch
    logits, _ = net.forward(state.params, state.batch_stats, x, parts.eval_mix(state.arch), train=False)
    return {"loss": cross_entropy(logits, y), "correct": jnp.sum(jnp.argmax(logits, -1) == y)}

  def derive(state, data=None):
    arch = state.arch if isinstance(state, SearchState) else state
    return parts.derive(jax.device_get(arch), data)

  return SearchMethod(init=init, step=step, derive=derive, evaluate=evaluate, net=net, epochs=epochs or c.epochs,
                      loss=loss_fn, weights=parts.mix, eval_weights=parts.eval_mix, a_tx=parts.a_tx)


def _val_acc(val_loss, logits, labels):
  return jnp.where(jnp.isnan(val_loss), jnp.nan, _accuracy(logits, labels))
