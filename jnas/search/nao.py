"""NAO with weight sharing (Luo, Tian, Qin, Chen, Liu. Neural Architecture Optimization. NeurIPS
2018), as NAS-Benchmark's NAO code ran it (NAO-WS in the 5-op space; other_spaces.md §2.5).

A search is ``epochs / eval_epochs`` stages (NB: 200 / 50 = 4; one stage of ``epochs`` if fewer) over a growing pool of arcs:

1. pool_0 = ``seed_archs`` (600) random arcs of the 5-op space;
2. a stage trains the shared weights (``jnas.search.ws_supernet.WSNet``) for ``eval_epochs``: each
   step draws one pool arc with probability proportional to its parameter count (``sample_policy``
   'params', NB's; 'uniform' upstream's) and takes one SGD step (0.025 -> 0.001 cosine over all
   epochs, wd 3e-4, clip 5);
3. at the stage's last step every pool arc is scored by its shared-weight accuracy on that step's
   validation batch (NB: one random batch of 500 per arc; jnas: one batch of ``batch_size`` for all);
4. host side (``transition``): targets = min-max normalised accuracies; the encoder-predictor-decoder
   (``jnas.search.nao_epd``, persistent across stages) is fitted for ``epd_epochs`` on the pool
   (augmented ``epd_expand`` x by branch swaps), loss lambda MSE + (1 - lambda) NLL, lambda 0.8
   (the paper: 0.9); the ``top_archs`` (100) best arcs' encodings move along the predictor's
   gradient o' = norm(o + eta df/do), eta = 1, 2, ... (the paper: eta = 10) until ``new_archs`` (300)
   unseen arcs are decoded or eta > 50; pool <- pool + new + ``random_archs`` (100) fresh random arcs.

The result is the best-scored arc of the last stage's pool (NB writes the pool sorted by score; which
arc it retrained is not documented [not found]). Departures: the supernet is ENAS's (stride-1 cells
after a FactorizedReduce; NB's NAO-WS strides its reduction ops), the arcs are scored on one shared
batch, and the EPD is fitted on the whole pool (NB holds 10 % out for its log).
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
from jnas.search import base, nao_epd as epd
from jnas.search.enas import shared_accuracy, to_genotype, ws_net
from jnas.search.registry import MethodSpec
from jnas.train import cross_entropy

__all__ = ["NAOConfig", "build", "SPEC", "param_count"]


@dataclasses.dataclass(frozen=True)
class NAOConfig(base.SearchConfig):
  """NAO-WS settings; defaults = NB's README / code (module docstring). ``layers``: every cell
  (3N + 2 = 11 for N = 3)."""

  epochs: int = 200
  eval_epochs: int = 50
  batch_size: int = 64
  C: int = 20
  layers: int = 11
  train_portion: float = 0.9
  w_lr: float = 0.025
  w_lr_min: float = 0.001
  w_weight_decay: float = 3e-4
  grad_clip: float | None = 5.0
  num_nodes: int = 5
  head_dropout: float = 0.0
  seed_archs: int = 600
  new_archs: int = 300
  random_archs: int = 100
  top_archs: int = 100
  max_step_size: int = 50
  sample_policy: str = "params"
  epd_epochs: int = 1000
  epd_expand: int = 8
  epd_trade_off: float = 0.8
  epd_hidden: int = 96
  epd_mlp_hidden: int = 200

  def __post_init__(self):
    super().__post_init__()
    if self.eval_epochs < 1 or (self.epochs > self.eval_epochs and self.epochs % self.eval_epochs):
      raise ValueError(f"epochs ({self.epochs}) must be a multiple of eval_epochs ({self.eval_epochs})")
    if self.sample_policy not in ("params", "uniform"):
      raise ValueError(f"sample_policy must be 'params' (NB) or 'uniform', got {self.sample_policy!r}")
    if min(self.seed_archs, self.top_archs) < 1 or min(self.new_archs, self.random_archs, self.epd_epochs) < 0:
      raise ValueError("seed_archs, top_archs >= 1 and new_archs, random_archs, epd_epochs >= 0 needed")
    epd_config(self)


def epd_config(c: NAOConfig) -> epd.EPDConfig:
  B = c.num_nodes
  return epd.EPDConfig(B=B, source_length=8 * B, encoder_length=4 * B, decoder_length=8 * B, encoder_emb=c.epd_hidden // 2, encoder_hidden=c.epd_hidden,
                       decoder_hidden=c.epd_hidden, mlp_hidden=c.epd_mlp_hidden, trade_off=c.epd_trade_off,
                       epochs=max(c.epd_epochs, 1), expand=max(c.epd_expand, 1))


@functools.lru_cache(maxsize=4096)
def param_count(genotype_text: str, C: int, layers: int, num_classes: int) -> int:
  """Parameters of the discrete NAO network of a genotype at the search's sizes (no aux head)."""
  from jnas.space_network import SpaceNetwork
  net = SpaceNetwork(cellspace.genotype_from_text(genotype_text), C=C, layers=layers, num_classes=num_classes)
  shapes = jax.eval_shape(net.init_variables, jax.random.key(0))["params"]
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def _random_seqs(key, n: int, B: int) -> list[list[int]]:
  out = []
  for k in jax.random.split(key, n):
    g = cellspace.sample(k, "nao", "uniform", n_nodes=B)
    out.append([int(t) for t in np.asarray(epd.arc_to_seq(g.to_arc(), 5))])
  return out


def _arcs(pool, B: int) -> dict:
  arcs = [epd.seq_to_arc(np.asarray(s, np.int32), B, 5) for s in pool]
  return {k: jnp.asarray(np.stack([np.asarray(a[k]) for a in arcs]), jnp.int32) for k in ("inputs", "ops")}


def build(config: NAOConfig, steps_per_epoch: int) -> base.Search:
  c = config
  net = ws_net(c)
  ec = epd_config(c)
  spe = steps_per_epoch
  n_stages = max(1, c.epochs // c.eval_epochs)
  stage_epochs = min(c.eval_epochs, c.epochs)
  schedule = base.lr_schedule(c, spe)
  w_tx = base.weight_tx(c, schedule)

  def stage(index, context):
    pool = context["pool"] if context else _random_seqs(jax.random.key(1234), c.seed_archs, c.num_nodes)
    arcs = _arcs(pool, c.num_nodes)
    if c.sample_policy == "params":
      counts = np.array([param_count(str(to_genotype(jax.tree.map(lambda a: a[i], arcs), "nao")), c.C, c.layers,
                                     c.num_classes) for i in range(len(pool))], np.float64)
      logp = jnp.asarray(np.log(counts / counts.sum()), jnp.float32)
    else:
      logp = jnp.zeros((len(pool),), jnp.float32)
    P = len(pool)
    last = stage_epochs * spe - 1

    def init(key):
      k_w, k_e = jax.random.split(jax.random.fold_in(key, 12))
      params = net.init(k_w)
      return base.SearchState(params=params, batch_stats={}, arch={"pool_acc": jnp.full((P,), jnp.nan, jnp.float32)},
                              w_opt=w_tx.init(params), a_opt=(), key=key, step=jnp.zeros((), jnp.int32),
                              alive=jnp.ones((), bool), extra={"epd": epd.init_params(k_e, ec)})

    def step(state, train_batch, val_batch):
      k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.key, 4), index), state.step)
      k_arc, k_drop = jax.random.split(k)
      i = jax.random.categorical(k_arc, logp)
      arc = jax.tree.map(lambda a: a[i], arcs)

      def loss_fn(w):
        logits = net.forward(w, train_batch[0], arc, key=k_drop, train=True)
        return cross_entropy(logits, train_batch[1]), logits

      (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      lr = optim.current_lr(schedule, state.w_opt)
      updates, w_opt = w_tx.update(g, state.w_opt, state.params)
      params = optax.apply_updates(state.params, updates)
      score = lambda _: lax.map(lambda a: shared_accuracy(net, params, a, val_batch), arcs)
      go = base.unbatched_any(state.step == last)
      pool_acc = lax.cond(go, score, lambda _: state.arch["pool_acc"], None)
      ok = state.alive & guard.all_finite(loss) & guard.all_finite(params, w_opt)
      new = state._replace(params=params, w_opt=w_opt, arch={"pool_acc": pool_acc}, step=state.step + 1)
      new = guard.keep_if(ok, new, state)._replace(alive=ok)
      return new, {"train_loss": loss, "lr": lr, "alive": ok,
                   "train_acc": 100.0 * jnp.mean(jnp.argmax(logits, -1) == train_batch[1])}

    def evaluate(state, batch):
      best = jnp.argmax(jnp.nan_to_num(state.arch["pool_acc"], nan=-1.0))
      logits = net.forward(state.params, batch[0], jax.tree.map(lambda a: a[best], arcs), train=False)
      return {"loss": cross_entropy(logits, batch[1]),
              "correct": jnp.sum(jnp.argmax(logits, -1) == batch[1]).astype(jnp.int32)}

    def derive(state, data=None):
      arch = state.arch if isinstance(state, base.SearchState) else state
      acc = np.nan_to_num(np.asarray(arch["pool_acc"], np.float64), nan=-1.0)
      return to_genotype(jax.tree.map(lambda a: np.asarray(a[int(np.argmax(acc))]), arcs), "nao")

    method = base.SearchMethod(init=init, step=step, derive=derive, evaluate=evaluate, net=net, epochs=stage_epochs)
    return base.Stage(f"nao round {index + 1}/{n_stages} ({P} arcs)", method)

  def transition(index, state, context, key):
    pool = context["pool"] if context else _random_seqs(jax.random.key(1234), c.seed_archs, c.num_nodes)
    acc = np.nan_to_num(np.asarray(state.arch["pool_acc"], np.float64), nan=0.0)
    seqs = np.asarray(pool, np.int32)
    targets = epd.minmax_normalize(acc)
    k_x, k_fit, k_gen, k_rand = jax.random.split(key, 4)
    x, y = (epd.expand(k_x, seqs, targets, c.epd_expand, c.num_nodes) if c.epd_expand > 1 else (seqs, targets))
    params = jax.tree.map(jnp.asarray, state.extra["epd"])
    params, _, _ = epd.fit(params, np.asarray(x), np.asarray(y), k_fit, c.epd_epochs, config=ec)
    top = seqs[np.argsort(-acc, kind="stable")[:c.top_archs]]
    new = epd.generate(params, top, seqs, c.new_archs, c.max_step_size, config=ec, key=k_gen)
    seen = {tuple(s) for s in seqs.tolist()} | {tuple(s) for s in np.asarray(new).tolist()}
    fresh = [s for s in _random_seqs(k_rand, c.random_archs, c.num_nodes) if tuple(s) not in seen]
    pool = seqs.tolist() + np.asarray(new).tolist() + fresh
    nxt = state._replace(arch={"pool_acc": np.full((len(pool),), np.nan, np.float32)}, step=np.zeros((), np.int32),
                         extra={"epd": jax.tree.map(np.asarray, params)})
    return {"pool": [[int(t) for t in s] for s in pool], "round": index + 1}, nxt

  return base.Search("nao", c, n_stages, stage, transition if n_stages > 1 else None)


SPEC = MethodSpec(
    name="nao", config=NAOConfig, build=build,
    paper="Luo, Tian, Qin, Chen, Liu. Neural Architecture Optimization. NeurIPS 2018 (NAO-WS, as NAS-Benchmark ran it)",
    changes="the ENAS-like 5-op space: shared weights trained on a pool of arcs, an encoder-predictor-decoder "
            "fitted to their accuracies proposes new arcs by a gradient step in its embedding space",
    cpu={"batch_size": 32, "C": 8, "layers": 5, "epochs": 2, "eval_epochs": 1, "seed_archs": 12, "new_archs": 6,
         "random_archs": 3, "top_archs": 6, "epd_epochs": 5, "epd_expand": 2, "epd_hidden": 32, "epd_mlp_hidden": 32,
         "train_portion": 0.5})
