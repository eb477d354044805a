"""ENAS, micro space (Pham, Guan, Zoph, Le, Dean. Efficient Neural Architecture Search via Parameter
Sharing. ICML 2018), as NAS-Benchmark ran it (melodyguan/enas, NB's ``ENASTF`` command).

Two parameter sets, trained in alternation [other_spaces.md §1.5]:

* shared weights w (``jnas.search.ws_supernet.WSNet``): each step samples an arc m ~ pi_theta
  and takes one SGD step on CE(f(x; w, m), y) (Nesterov 0.9, l2 1e-4 as sum w^2, SGDR
  0.05 -> 5e-4 with T0 = 10, x2; no gradient clip: the code's "clip" appends the unclipped
  gradient);
* the controller theta (``jnas.search.enas_controller``, an LSTM): REINFORCE on
  R(m) = acc_val(w, m) + lambda_H H(pi_theta), with a moving-average baseline
  b <- b - (1 - 0.99)(b - R) and loss -log pi_theta(m) (R - b); Adam (b1 = 0, eps 1e-3, lr 0.0035);
  per epoch ``ctl_train_steps`` = 30 updates of ``ctl_num_aggregate`` = 10 samples each.

Update order in jnas: one controller update at each of the last ``ctl_train_steps`` steps of every
epoch, right after that step's weight update, its 10 samples scored on that step's validation
batch (ENAS runs a whole epoch of weight steps and then its 30 controller updates, each sample on
its own validation minibatch of 160). So every step is one pure, vmappable function. The
validation batch is augmented like the training batch here (ENAS scores on clean images).

Selection (``derive`` with data): ``derive_samples`` arcs sampled from the final controller, each
scored by its shared-weight accuracy on ``derive_batches`` validation batches, the best kept
(ENAS's paper samples several and keeps the best; its code prints 10 samples per epoch and NB's
choice of its 8 searched arcs is not documented [not found]). Per-epoch records carry the
controller's sample at a fixed key.

Defaults: NB's README = ENAS-TF ``cifar10_micro_search.sh``: 150 epochs, batch 160, 8 cells (L 6),
F = 20, 45k / 5k split (``train_portion`` 0.9), head dropout 0.1 (keep 0.9). The paper text's
controller lr 0.00035, entropy weight 0.1 and l_min 0.001 differ from that command; set them with
``--set``. Departures: no auxiliary head in the search, PyTorch-style initialisation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jnas import cellspace, guard, optim
from jnas import data as D
from jnas.search import base, enas_controller as ctl
from jnas.search.registry import MethodSpec
from jnas.search.ws_supernet import WSNet
from jnas.train import cross_entropy

__all__ = ["ENASConfig", "build", "SPEC", "controller_config", "to_genotype"]


@dataclasses.dataclass(frozen=True)
class ENASConfig(base.SearchConfig):
  """ENAS (micro) settings; defaults = NB's command (module docstring). ``layers`` counts every
  cell (L normal + 2 reductions); ``num_nodes`` B; ``ctl_*`` the controller's
  (``jnas.search.enas_controller.ControllerConfig``)."""

  epochs: int = 150
  batch_size: int = 160
  C: int = 20
  layers: int = 8
  train_portion: float = 0.9
  w_lr: float = 0.05
  w_lr_min: float = 0.0005
  w_nesterov: bool = True
  w_weight_decay: float = 2e-4  # (l2 1e-4 on sum w^2: gradient 2e-4 w)
  grad_clip: float | None = None
  sgdr_t0: int = 10
  sgdr_mult: int = 2
  num_nodes: int = 5
  head_dropout: float = 0.1
  ctl_lstm_size: int = 64
  ctl_lr: float = 0.0035
  ctl_entropy_weight: float = 1e-4
  ctl_tanh_constant: float = 1.10
  ctl_op_tanh_reduce: float = 2.5
  ctl_temperature: float | None = None
  ctl_bl_dec: float = 0.99
  ctl_train_steps: int = 30
  ctl_num_aggregate: int = 10
  derive_samples: int = 100
  derive_batches: int = 1

  def __post_init__(self):
    super().__post_init__()
    controller_config(self)  # (validates the controller's fields)
    if self.derive_samples < 1 or self.derive_batches < 1:
      raise ValueError("derive_samples and derive_batches must be >= 1")


def controller_config(c: ENASConfig) -> ctl.ControllerConfig:
  return ctl.ControllerConfig(lstm_size=c.ctl_lstm_size, num_nodes=c.num_nodes, tanh_constant=c.ctl_tanh_constant,
                              op_tanh_reduce=c.ctl_op_tanh_reduce, temperature=c.ctl_temperature,
                              entropy_weight=c.ctl_entropy_weight, bl_dec=c.ctl_bl_dec, lr=c.ctl_lr,
                              train_steps=c.ctl_train_steps, num_aggregate=c.ctl_num_aggregate)


def to_genotype(arc, space: str = "enas") -> cellspace.SpaceGenotype:
  """The ``SpaceGenotype`` of an arc (host arrays)."""
  return cellspace.from_arc(space, jax.tree.map(np.asarray, dict(arc)))


def ws_net(c) -> WSNet:
  return WSNet(C=c.C, layers=c.layers, num_nodes=c.num_nodes, num_classes=c.num_classes, dropout=c.head_dropout)


def shared_accuracy(net: WSNet, params, arc, batch):
  """Fraction of ``batch`` the shared weights classify right under ``arc`` (BN in batch mode)."""
  logits = net.forward(params, batch[0], arc, train=False)
  return jnp.mean(jnp.argmax(logits, -1) == batch[1])


def best_of_samples(net, params, sample_fn, key, n: int, data, n_batches: int, space: str):
  """Host side: ``n`` arcs from ``sample_fn(key) -> arc``, each scored on the first ``n_batches``
  batches of ``data`` (``rsws``-style data: images, labels, batch_size, mean, std); the best arc's
  genotype and the scores."""
  B = data.batch_size
  nb = max(1, min(n_batches, int(data.labels.shape[0]) // B))
  batches = [(D.normalize(jnp.asarray(data.images[b * B:(b + 1) * B]), data.mean, data.std),
              jnp.asarray(data.labels[b * B:(b + 1) * B])) for b in range(nb)]
  arcs = jax.vmap(sample_fn)(jax.random.split(key, n))

  @jax.jit
  def score(params, arcs, x, y):
    return lax.map(lambda a: shared_accuracy(net, params, a, (x, y)), arcs)

  acc = sum(np.asarray(score(params, arcs, x, y)) for x, y in batches) / nb
  best = int(np.argmax(acc))
  return to_genotype(jax.tree.map(lambda a: a[best], arcs), space), acc


def build(config: ENASConfig, steps_per_epoch: int) -> base.Search:
  c = config
  cc = controller_config(c)
  net = ws_net(c)
  spe = steps_per_epoch
  schedule = optim.sgdr_epoch_schedule(c.w_lr, c.w_lr_min, spe, c.sgdr_t0, c.sgdr_mult)
  w_tx = base.weight_tx(c, schedule)
  a_tx = ctl.controller_optimizer(cc)

  def init(key):
    k_w, k_c = jax.random.split(jax.random.fold_in(key, 11))
    params = net.init(k_w)
    theta = ctl.init_params(k_c, cc)
    return base.SearchState(params=params, batch_stats={}, arch=theta, w_opt=w_tx.init(params), a_opt=a_tx.init(theta),
                            key=key, step=jnp.zeros((), jnp.int32), alive=jnp.ones((), bool),
                            extra={"baseline": jnp.zeros((), jnp.float32)})

  def step(state, train_batch, val_batch):
    k = jax.random.fold_in(jax.random.fold_in(state.key, 4), state.step)
    k_arc, k_drop, k_ctl = jax.random.split(k, 3)
    arc, _, _ = ctl.sample(state.arch, k_arc, cc)

    def loss_fn(w):
      logits = net.forward(w, train_batch[0], arc, key=k_drop, train=True)
      return cross_entropy(logits, train_batch[1]), logits

    (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    lr = optim.current_lr(schedule, state.w_opt)
    updates, w_opt = w_tx.update(g, state.w_opt, state.params)
    params = optax.apply_updates(state.params, updates)

    def controller(_):
      reward_fn = lambda a, key: shared_accuracy(net, params, a, val_batch)
      theta, a_opt, b, m = ctl.controller_step(state.arch, state.a_opt, state.extra["baseline"], k_ctl, reward_fn, cc)
      return theta, a_opt, b, m["reward"], m["accuracy"], m["entropy"]

    def skip(_):
      nan = jnp.full((), jnp.nan, jnp.float32)
      return state.arch, state.a_opt, state.extra["baseline"], nan, nan, nan

    go = base.unbatched_any(state.step % spe >= spe - c.ctl_train_steps)
    theta, a_opt, b, reward, acc, ent = lax.cond(go, controller, skip, None)
    ok = state.alive & guard.all_finite(loss) & guard.all_finite(params, theta, w_opt, a_opt)
    new = state._replace(params=params, arch=theta, w_opt=w_opt, a_opt=a_opt, step=state.step + 1,
                         extra={"baseline": b})
    new = guard.keep_if(ok, new, state)._replace(alive=ok)
    metrics = {"train_loss": loss, "train_acc": 100.0 * jnp.mean(jnp.argmax(logits, -1) == train_batch[1]),
               "lr": lr, "ctl_reward": reward, "ctl_val_acc": 100.0 * acc, "ctl_entropy": ent, "baseline": b,
               "alive": ok}
    return new, metrics

  fixed_key = jax.random.key(0)

  def evaluate(state, batch):
    arc, _, _ = ctl.sample(state.arch, fixed_key, cc)
    logits = net.forward(state.params, batch[0], arc, train=False)
    return {"loss": cross_entropy(logits, batch[1]),
            "correct": jnp.sum(jnp.argmax(logits, -1) == batch[1]).astype(jnp.int32)}

  def derive(state, data=None):
    if isinstance(state, base.SearchState) and data is not None:
      theta = jax.tree.map(jnp.asarray, state.arch)
      g, _ = best_of_samples(net, jax.tree.map(jnp.asarray, state.params), lambda k: ctl.sample(theta, k, cc)[0],
                             jax.random.fold_in(jnp.asarray(state.key), 9), c.derive_samples, data,
                             c.derive_batches, "enas")
      return g
    theta = state.arch if isinstance(state, base.SearchState) else state
    return to_genotype(_sample_fixed(jax.tree.map(jnp.asarray, theta), cc))

  method = base.SearchMethod(init=init, step=step, derive=derive, evaluate=evaluate, net=net, epochs=c.epochs,
                             a_tx=a_tx)
  return base.single_stage("enas", c, method)


@functools.partial(jax.jit, static_argnums=1)
def _sample_fixed(theta, cc):
  return ctl.sample(theta, jax.random.key(0), cc)[0]


SPEC = MethodSpec(
    name="enas", config=ENASConfig, build=build,
    paper="Pham, Guan, Zoph, Le, Dean. Efficient Neural Architecture Search via Parameter Sharing. ICML 2018",
    changes="the ENAS micro space: an LSTM controller samples cells, trained by REINFORCE on the shared "
            "weights' validation accuracy; shared weights trained under sampled cells",
    cpu={"batch_size": 32, "C": 8, "layers": 5, "ctl_lstm_size": 32, "ctl_train_steps": 5, "ctl_num_aggregate": 4,
         "derive_samples": 20, "train_portion": 0.5})
