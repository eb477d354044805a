"""Random search with weight sharing (Li & Talwalkar, UAI 2019: "Random Search and Reproducibility
for Neural Architecture Search").

No architecture parameters. Training [liamcli ``random_weight_share.py``, ``darts_wrapper_discrete``]:
per minibatch draw an architecture, per cell type and node 2 distinct inputs uniform among its
predecessors and on each an op uniform over all 8 ops (``none`` included), set the edge weights
to that one-hot matrix (0 on the other edges) and take one SGD step of the shared weights on it.
The code computes every op on every edge and multiplies by the 0/1 weights (so every op's BN
statistics move, and weight decay reaches every weight): the default here; ``single_path=True``
runs only the chosen op per edge (faster on one seed; it changes those two side effects).

Selection (``rank``): ``rounds`` = max(1, B // 10000) rounds (B = training steps); per round
``archs_per_round`` = 1000 architectures drawn as above, each scored by its accuracy under the
shared weights (eval mode, running BN statistics) on ``rank_batches`` = 10 validation batches
(the code's persistent iterator gives every architecture the next 10 batches: 'rotating'; 'same'
scores all on the first 10), the ``top_k`` = 10 best re-scored on the whole validation split,
and the round's best kept. The code returns round 0's best (``select_rounds='first'``); the
supplement takes the best over all rounds (``'all'``). Candidates are scored ``rank_chunk`` per
compiled call, on the single-path twin of the supernet (only each edge's chosen op runs: the same
value as the code's one-hot-weighted full net, in eval mode, at a fraction of its cost;
``rank_single_path=False`` vmaps them on the full net).

Defaults: the paper's final CIFAR-10 setting "Random (5)" [RS-P Table 6]: 150 epochs, C=24,
8 cells, batch 64, clip 1, lr 0.025 -> 0.001, momentum 0.9, wd 3e-4 (the code's defaults are
100 epochs, C=16 and clip 0.25). The paper says candidates are scored "on the test set"; the code
uses the validation half, as here.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jnas import data as D
from jnas import space
from jnas.genotype import Genotype
from jnas.search import base, edge_weights as ew
from jnas.search.registry import MethodSpec

__all__ = ["RSWSConfig", "arch_genotype", "rank", "build", "SPEC"]


@dataclasses.dataclass(frozen=True)
class RSWSConfig(base.SearchConfig):
  """Random search with weight sharing ("Random (5)" of the paper; see the module docstring)."""

  epochs: int = 150
  C: int = 24
  grad_clip: float | None = 1.0
  single_path: bool = False
  rounds: int | None = None
  archs_per_round: int = 1000
  rank_batches: int = 10
  rank_batch_mode: str = "rotating"
  top_k: int = 10
  select_rounds: str = "first"
  rank_chunk: int = 50
  rank_single_path: bool = True

  def __post_init__(self):
    super().__post_init__()
    if self.rank_batch_mode not in ("rotating", "same"):
      raise ValueError(f"unknown rank_batch_mode {self.rank_batch_mode!r}; use 'rotating' or 'same'")
    if self.select_rounds not in ("first", "all"):
      raise ValueError(f"unknown select_rounds {self.select_rounds!r}; use 'first' (the code) or 'all' (the paper)")
    if self.top_k < 1 or self.archs_per_round < self.top_k or self.rank_batches < 1 or self.rank_chunk < 1:
      raise ValueError("need 1 <= top_k <= archs_per_round, rank_batches >= 1 and rank_chunk >= 1")


def sample(key, config: RSWSConfig) -> dict:
  """One architecture as one-hot edge weights per cell type."""
  n = len(config.primitives)
  return {t: ew.uniform_architecture(jax.random.fold_in(key, i), config.steps, n)
          for i, t in enumerate(("normal", "reduce"))}


def arch_genotype(weights: dict, primitives, steps: int) -> Genotype:
  """The genotype of a one-hot architecture (per node its 2 edges, in input order)."""
  cells = []
  for t in ("normal", "reduce"):
    w = np.asarray(weights[t])
    pairs = []
    for j, (lo, hi) in enumerate(ew.node_segments(steps)):
      for i in range(hi - lo):
        if w[lo + i].max() > 0:
          pairs.append((primitives[int(np.argmax(w[lo + i]))], i))
    cells.append(tuple(pairs))
  concat = tuple(range(2, steps + 2))
  return Genotype(cells[0], concat, cells[1], concat, concat_style="range")


def _scorer(method, batch_size: int, mean, std, single_path: bool = True):
  """jitted (state, weights (N, ...), images, labels, starts (N,), n_batches) -> correct (N,).

  ``single_path``: score each candidate on the single-path twin of the supernet (the same
  parameters; only each edge's chosen op runs, exactly the one-hot-weighted full net's value in
  eval mode), one candidate after another (``lax.map``; ``vmap`` would turn the switch into a
  select over every op). Otherwise the candidates are vmapped on the net as trained.
  """
  net = method.net.clone(single_path=True) if single_path else method.net

  @functools.partial(jax.jit, static_argnames=("n_batches",))
  def score(state, weights, images, labels, starts, n_batches):
    total = images.shape[0] // batch_size

    def one(w, start):
      def body(correct, b):
        lo = ((start + b) % total) * batch_size
        x = jax.lax.dynamic_slice_in_dim(images, lo, batch_size)
        y = jax.lax.dynamic_slice_in_dim(labels, lo, batch_size)
        logits, _ = net.forward(state.params, state.batch_stats, D.normalize(x, mean, std), w, train=False)
        return correct + jnp.sum(jnp.argmax(logits, -1) == y), None
      return jax.lax.scan(body, jnp.zeros((), jnp.int32), jnp.arange(n_batches))[0]
    if single_path:
      return jax.lax.map(lambda args: one(*args), (weights, starts))
    return jax.vmap(one)(weights, starts)
  return score


def rank(method, config: RSWSConfig, state, data, *, total_steps: int, key=None, extra=None) -> dict:
  """Samples and ranks architectures with the shared weights of ``state`` (one seed, host or
  device); see the module docstring. ``extra``: architectures (one-hot weights) put into round 0
  in place of its first samples. Returns ``{'best': genotype, 'rounds': [per round: best
  genotype, its full-split accuracy, the top-k accuracies, their screening accuracies]}``."""
  c = config
  B = data.batch_size
  total = int(data.labels.shape[0]) // B
  if total < 1:
    raise ValueError(f"random search ranking needs at least one validation batch of {B} images")
  score = _scorer(method, B, jnp.asarray(data.mean), jnp.asarray(data.std), c.rank_single_path)
  state = jax.tree.map(jnp.asarray, state)
  key = jax.random.fold_in(state.key, 7) if key is None else key
  rounds = c.rounds or max(1, total_steps // 10000)
  n_small = min(c.rank_batches, total)

  def scores(weights, starts, n_batches):
    out = []
    for lo in range(0, len(starts), c.rank_chunk):
      chunk = jax.tree.map(lambda a: a[lo:lo + c.rank_chunk], weights)
      out.append(np.asarray(score(state, chunk, data.images, data.labels, jnp.asarray(starts[lo:lo + c.rank_chunk]),
                                  n_batches)))
    return np.concatenate(out) / (n_batches * B)

  results, cursor = [], 0
  for r in range(rounds):
    keys = jax.random.split(jax.random.fold_in(key, r), c.archs_per_round)
    cand = jax.vmap(lambda k: sample(k, c))(keys)
    if r == 0 and extra:
      planted = jax.tree.map(lambda *a: jnp.stack(a), *extra)
      cand = jax.tree.map(lambda a, p: a.at[:len(extra)].set(p), cand, planted)
    if c.rank_batch_mode == "rotating":
      starts = (cursor + n_small * np.arange(c.archs_per_round)) % total
      cursor = int((cursor + n_small * c.archs_per_round) % total)
    else:
      starts = np.zeros(c.archs_per_round, np.int64)
    acc = scores(cand, starts, n_small)
    top = np.argsort(-acc, kind="stable")[:c.top_k]
    top_w = jax.tree.map(lambda a: a[jnp.asarray(top)], cand)
    full = scores(top_w, np.zeros(len(top), np.int64), total)
    best = int(np.argmax(full))
    w_best = jax.tree.map(lambda a: np.asarray(a[best]), top_w)
    results.append({"genotype": arch_genotype(w_best, c.primitives, c.steps), "accuracy": float(full[best]),
                    "top_k_accuracy": full.tolist(), "screen_accuracy": acc[top].tolist()})
  pick = results[0] if c.select_rounds == "first" else max(results, key=lambda r: r["accuracy"])
  return {"best": pick["genotype"], "rounds": results}


def build(config: RSWSConfig, steps_per_epoch: int) -> base.Search:
  c = config
  schedule = base.lr_schedule(c, steps_per_epoch)
  net = base.network(c, single_path=c.single_path)
  fixed = sample(jax.random.key(0), c)  # eval-mode validation: one fixed random architecture

  parts = base.Parts(
      net=net, init_arch=lambda key: {}, mix=lambda arch, key, step: sample(key, c),
      eval_mix=lambda arch: fixed, derive=lambda arch, data=None: None,
      w_tx=base.weight_tx(c, schedule), a_tx=base.arch_tx(c), schedule=schedule)
  method = base.compose(parts, c, steps_per_epoch, order="weights_only")

  def derive(state, data=None):
    if data is None or not isinstance(state, base.SearchState):
      return None  # (per epoch: nothing to derive without ranking)
    return rank(method, c, state, data, total_steps=c.epochs * steps_per_epoch)["best"]

  return base.single_stage("rsws", c, method._replace(derive=derive))


SPEC = MethodSpec(
    name="rsws", config=RSWSConfig, build=build,
    paper="Li, Talwalkar. Random Search and Reproducibility for Neural Architecture Search. UAI 2019",
    changes="no alphas: shared weights trained on one uniform random architecture per batch, then "
            "thousands of random architectures ranked with them",
    cpu={"archs_per_round": 50, "rank_batches": 2, "top_k": 3, "grad_clip": 1.0})
