"""DARTS-PT (Wang et al., ICLR 2021): perturbation-based architecture selection with fine-tuning.

Selection on a trained supernet, one decision at a time [ruocwang/darts-pt ``sota/cnn/projection.py``
``pt_project``, ``project_op``, ``project_edge``; ``model_search_darts_proj.py``]. With W the masked
weights (base weights w = softmax(alpha); a decided edge's row is its one-hot, a removed edge's row 0):

* op decision, edge e drawn uniformly among the undecided edges of the cell type:
    k* = argmin_k Acc_val(W with W[e, k] := 0)   (no renormalisation; ties: the first minimum)
  (``crit='loss'``: argmax_k of the validation loss, first maximum); then W[e] := onehot(k*).
* topology decision, node n drawn uniformly among the undecided nodes with more than 2 inputs:
  greedy elimination while the node keeps more than 2 inputs: remove the input edge e of
  highest Acc_val(W with row e := 0) (ties: the last maximum; ``'loss'``: the last minimum).
* schedule: num_projs = E + (steps - 1) - 1, tune_epochs = proj_intv num_projs + 1; decisions at
  tune epochs 0, proj_intv, ..., proj_intv num_projs: E op decisions, then steps - 1 topology
  decisions, each for both cell types (normal first, then reduce, which sees normal's new row),
  each cell type with its own random edge or node; after every decision ``proj_intv`` tuning
  epochs (1 after the last). A tuning step is DARTS's first-order alpha step on a random
  validation batch (Adam, state carried over from the search) and a weight step on the next training
  batch (a fresh SGD: lr 0.0025 constant, momentum 0.9, wd 3e-4, clip 5), both forwards at the
  masked weights; ``freeze_arch`` (blank-PT) skips the alpha step.
* the genotype: the DARTS top-2 rule on the final W, whose rows are all one-hot or zero.

Acc_val is top-1 over the validation split, the supernet in train mode (batch statistics), its BN
state updates discarded. The variants of one decision (O for an op, one per candidate edge for an
elimination round) are evaluated by one batched program (``vmap`` over the variant axis, in chunks
of ``variant_chunk``).

Programs: the driver compiles exactly two supernet programs, whatever the schedule: the batched
evaluation and the tuning step (``TRACES`` counts their traces); the selection updates between
them are three small jitted functions of the (S, E, O) selection arrays, also compiled once. The
selection is arrays (``CellSelection``) and the masked weights ``where(decided, onehot, w)`` are
computed inside the programs, so a decision never retraces. Both programs are ``vmap``ped over a
leading seed axis (each seed its own decision order, from its ``state.key``); a single state runs
as one seed. For steps = 4 and 7 ops a run makes 2 x 14 x 7 + 2 x 12 = 220 validation passes and
81 tuning epochs; the last epoch does not change the genotype (kept for parity).

.. warning:: Where this differs from the code:
   * The validation images are normalised, not augmented, and always in the same order, so the
     variants of a decision see identical batches (the code draws ``valid_queue``, which has the
     training transform and a random sampler, anew for every variant).
   * ``edge_elimination='code'`` (default): as in the code, an edge eliminated in one round stays
     in W during the later rounds of its node, so each round scores the same single-edge removals
     (in the code they differ only by the resampled validation batches). With a deterministic
     evaluation the later rounds would repeat the first one's numbers, so the node's inputs are
     scored once and the elimination replayed on those scores (steps = 4: 3 + 4 + 5 = 12 passes
     per cell type, not the code's 22). ``'cumulative'`` zeroes the eliminated edges and scores
     every round anew.
   * The last ``N mod eval_batch_size`` validation images are left out (one compiled shape), and an
     epoch of tuning has ``floor(N_train / batch_size)`` steps (the code's loaders keep the last
     partial batch).
   * The random orders come from ``jax.random`` (the code: NumPy's global RNG), so only their
     distribution matches.
   * ``none`` (and ops a supernet's ``op_mask`` prunes) is never chosen: the genotype cannot hold
     it. DARTS-PT's DARTS space has no ``none``.
   * SDARTS's perturbation of the tuning weight step (the code's ``perturb_alpha`` in the tuning
     loop) is not applied: tuning runs at the masked weights of ``method.weights``.

Example::

  res = project(method, state, w_split, a_split, PTConfig(), a_tx=base.arch_tx(config))
  res.genotypes[0]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jnas import data as D
from jnas import guard, optim, space
from jnas.compile_options import step_jit
from jnas.genotype import Genotype
from jnas.search import select
from jnas.search.base import SearchMethod, SearchState
from jnas.search.edge_weights import node_segments
from jnas.train import cross_entropy

__all__ = ["PTConfig", "CellSelection", "PTState", "PTResult", "CRITERIA", "ELIMINATIONS", "TRACES",
           "schedule", "init_selection", "masked_cell", "masked_weights", "op_variants", "edge_variants",
           "choose_op", "choose_removal", "decide_op", "decide_topology", "random_index", "node_rows",
           "derive", "select_all", "make_programs", "payload_template", "project"]

CRITERIA = ("acc", "loss")
ELIMINATIONS = ("code", "cumulative")
TRACES = {"eval": 0, "tune": 0}  # traces of the two programs (one each per compile)

# fold_in tags of a seed's key (the search uses 0-4)
_DECIDE, _TUNE_DATA, _TUNE = 11, 12, 13


@dataclasses.dataclass(frozen=True)
class PTConfig:
  """DARTS-PT settings (darts-pt ``exp_scripts/darts-proj-sota.sh``, ``train_search.py``).

  proj_intv: tuning epochs between decisions (5 in the scripts; the argparse default is 10).
  crit: 'acc' (the scripts) or 'loss'. freeze_arch: blank-PT (alpha never updated).
  tune_lr, tune_momentum, tune_weight_decay, tune_grad_clip: the fresh SGD of the tuning phase
  (lr = 0.025 / 10, constant: the code's cosine scheduler is never stepped).
  batch_size: tuning batches (train and validation). eval_batch_size: the batches of a validation
  pass (64, the code's loader). eval_images: the first N validation images (None: all).
  variant_chunk: variants per batched evaluation (None: every variant of a decision at once,
  max(ops, steps + 1)). edge_elimination: 'code' | 'cumulative' (module docstring).
  tune_steps_per_epoch: None = floor(N_train / batch_size) (a pass); fewer for smoke tests.
  cutout_length: cutout in the tuning batches (0: the search's transform).
  """

  proj_intv: int = 5
  crit: str = "acc"
  freeze_arch: bool = False
  tune_lr: float = 0.0025
  tune_momentum: float = 0.9
  tune_weight_decay: float = 3e-4
  tune_grad_clip: float | None = 5.0
  batch_size: int = 64
  eval_batch_size: int = 64
  eval_images: int | None = None
  variant_chunk: int | None = None
  edge_elimination: str = "code"
  tune_steps_per_epoch: int | None = None
  cutout_length: int = 0

  def __post_init__(self):
    if self.crit not in CRITERIA:
      raise ValueError(f"unknown crit {self.crit!r}; use one of {CRITERIA}")
    if self.edge_elimination not in ELIMINATIONS:
      raise ValueError(f"unknown edge_elimination {self.edge_elimination!r}; use one of {ELIMINATIONS}")
    for name in ("proj_intv", "batch_size", "eval_batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("variant_chunk", "tune_steps_per_epoch", "eval_images"):
      v = getattr(self, name)
      if v is not None and v < 1:
        raise ValueError(f"{name} must be >= 1 or None, got {v}")

  def replace(self, **changes) -> "PTConfig":
    return dataclasses.replace(self, **changes)


def schedule(steps: int, proj_intv: int) -> list[tuple[str, int]]:
  """The decision events: ``(kind, tuning epochs after it)``, kind 'op' (E of them) then 'topology'
  (steps - 1); E + steps - 1 events at tune epochs 0, proj_intv, ...; tune_epochs = proj_intv
  num_projs + 1 with num_projs = E + steps - 2 [``pt_project``]."""
  E, N = space.num_edges(steps), steps - 1
  n = E + N
  return [("op" if k < E else "topology", proj_intv if k < n - 1 else 1) for k in range(n)]


# ------------------------------------------------------------------------ selection as arrays
class CellSelection(NamedTuple):
  """One cell type's decisions: op_decided (E,) bool, onehot (E, O) (the chosen op's row),
  node_decided (steps - 1,) bool (nodes 1.. with more than 2 inputs), removed (E,) bool."""

  op_decided: Any
  onehot: Any
  node_decided: Any
  removed: Any


def init_selection(steps: int, num_ops: int, cell_types=("normal", "reduce")) -> dict:
  """Nothing decided: ``{t: CellSelection}``."""
  E = space.num_edges(steps)
  one = lambda: CellSelection(jnp.zeros((E,), bool), jnp.zeros((E, num_ops), jnp.float32),
                              jnp.zeros((max(steps - 1, 0),), bool), jnp.zeros((E,), bool))
  return {t: one() for t in cell_types}


def masked_cell(w, cs: CellSelection):
  """W = where(op_decided, onehot, w), removed rows 0 [``get_projected_weights``]."""
  w = jnp.where(cs.op_decided[:, None], cs.onehot.astype(w.dtype), w)
  return jnp.where(cs.removed[:, None], jnp.zeros((), w.dtype), w)


def masked_weights(weights: dict, sel: dict) -> dict:
  """``weights`` (a method's mixing weights) with every cell type's rows masked; a removed edge's
  ``'{t}_edges'`` factor (PC-DARTS) is 0 too, since its bypass channels skip the op weights."""
  out = dict(weights)
  for t, cs in sel.items():
    out[t] = masked_cell(weights[t], cs)
    if f"{t}_edges" in weights:
      out[f"{t}_edges"] = jnp.where(cs.removed, jnp.zeros((), weights[f"{t}_edges"].dtype), weights[f"{t}_edges"])
  return out


def op_variants(w, e):
  """(O, E, O): variant k is ``w`` with entry [e, k] set to 0 (no renormalisation)."""
  E, O = w.shape
  zero = (jnp.arange(E) == e)[None, :, None] & jnp.eye(O, dtype=bool)[:, None, :]
  return jnp.where(zero, jnp.zeros((), w.dtype), w[None])


def edge_variants(w, rows):
  """(len(rows), E, O): variant i is ``w`` with row ``rows[i]`` set to 0."""
  zero = jnp.arange(w.shape[0])[None, :] == jnp.asarray(rows)[:, None]
  return jnp.where(zero[:, :, None], jnp.zeros((), w.dtype), w[None])


def _xp(x):
  """NumPy for host values (the driver's fetched scores), jax.numpy otherwise (traced, vmapped)."""
  return np if isinstance(x, (np.ndarray, list, tuple)) else jnp


def choose_op(scores, crit: str = "acc", valid=None):
  """The op to keep from its O variants' scores: argmin accuracy (``'loss'``: argmax loss); the
  first extremum on ties (the code's strict comparison). ``valid``: ops that may be chosen."""
  xp = _xp(scores)
  s = xp.asarray(scores, xp.float32)
  if crit == "acc":
    return xp.argmin(s if valid is None else xp.where(valid, s, xp.inf))
  return xp.argmax(s if valid is None else xp.where(valid, s, -xp.inf))


def choose_removal(scores, crit: str = "acc", valid=None):
  """The candidate edge to eliminate: highest accuracy after its removal (``'loss'``: lowest loss),
  the LAST extremum on ties (the code's ``not (x < best)``). ``valid``: the remaining candidates."""
  xp = _xp(scores)
  s = xp.asarray(scores, xp.float32)
  s = s if crit == "acc" else -s
  s = s if valid is None else xp.where(valid, s, -xp.inf)
  return s.shape[0] - 1 - xp.argmax(s[::-1])


def decide_op(cs: CellSelection, e, k) -> CellSelection:
  """Edge ``e`` keeps op ``k`` [``project_op``]."""
  O = cs.onehot.shape[1]
  return cs._replace(op_decided=cs.op_decided.at[e].set(True),
                     onehot=cs.onehot.at[e].set(jax.nn.one_hot(k, O, dtype=cs.onehot.dtype)))


def node_rows(steps: int, n: int) -> tuple[int, ...]:
  """Alpha rows of topology node ``n`` (intermediate node n + 1; DARTS: n = 0, 1, 2 ->
  (2, 3, 4), (5..8), (9..13), the code's ``nid2eids``)."""
  lo, hi = node_segments(steps)[n + 1]
  return tuple(range(lo, hi))


def decide_topology(cs: CellSelection, steps: int, n, keep) -> CellSelection:
  """Node ``n`` keeps the input rows where ``keep`` (E,) is true among its own rows; its other
  inputs are removed [``project_edge``]."""
  rows = jnp.zeros((cs.removed.shape[0],), bool)
  for m in range(steps - 1):
    r = jnp.zeros_like(rows).at[jnp.asarray(node_rows(steps, m))].set(True)
    rows = jnp.where(n == m, r, rows)
  return cs._replace(removed=cs.removed | (rows & ~jnp.asarray(keep, bool)),
                     node_decided=cs.node_decided.at[n].set(True))


def random_index(key, available):
  """Uniform among the true entries of ``available`` (``np.random.choice`` of the code)."""
  u = jax.random.uniform(key, jnp.shape(available))
  return jnp.argmax(jnp.where(available, u, -1.0))


def derive(sel: dict, primitives, base: dict | None = None) -> Genotype:
  """The DARTS top-2 rule on the masked weights (one seed, host side); ``base`` (the method's
  eval weights) matters only where rows are undecided."""
  W = {}
  for t, cs in sel.items():
    cs = jax.tree.map(np.asarray, cs)
    w = np.zeros(cs.onehot.shape) if base is None else np.asarray(base[t], np.float64)
    w = np.where(cs.op_decided[:, None], cs.onehot, w)
    W[t] = np.where(cs.removed[:, None], 0.0, w)
  return select.darts_top2(W, primitives)


# ------------------------------------------------------------- decisions on a seed axis (host)
def _selectable(primitives, op_mask, cell_types, E: int) -> dict:
  """(E, O) bool per cell type: the ops a decision may keep (not ``none``, not pruned)."""
  ok = np.broadcast_to(np.asarray([p != "none" for p in primitives], bool)[None, :], (E, len(primitives)))
  return {t: ok if op_mask is None else (np.asarray(op_mask[i], bool) & ok) for i, t in enumerate(cell_types)}


def _is_key(a) -> bool:
  return jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key)


def _host(tree):
  """Host NumPy copies of a tree's arrays (typed PRNG keys stay JAX arrays)."""
  return jax.tree.map(lambda a: a if _is_key(a) else np.asarray(jax.device_get(a)), tree)


def _score(score_fn, sel, cell: str, specs, E: int, O: int, chunk: int, cell_types) -> list[np.ndarray]:
  """Per seed, the scores of its variants. ``specs[s]``: a list of ('op', e, k) / ('edge', e, -1)
  zeroings of the seed's masked weights in cell type ``cell``. The variants go to ``score_fn(sel,
  op_zero, edge_zero)`` in calls of exactly ``chunk`` (padding: no change, result dropped)."""
  S = len(specs)
  n = max(len(v) for v in specs)
  calls = -(-n // chunk)
  out = [np.zeros((len(v), 2)) for v in specs]
  for c in range(calls):
    op_zero = {t: np.zeros((S, chunk, E, O), bool) for t in cell_types}
    edge_zero = {t: np.zeros((S, chunk, E), bool) for t in cell_types}
    for s, v in enumerate(specs):
      for j, (kind, e, k) in enumerate(v[c * chunk:(c + 1) * chunk]):
        if kind == "op":
          op_zero[cell][s, j, e, k] = True
        else:
          op_zero[cell][s, j, e, :] = True
          edge_zero[cell][s, j, e] = True
    r = _host(score_fn(sel, op_zero, edge_zero))
    for s, v in enumerate(specs):
      m = len(v[c * chunk:(c + 1) * chunk])
      out[s][c * chunk:c * chunk + m] = np.stack([r["acc"][s, :m], r["loss"][s, :m]], -1)
  return out


@jax.jit
def _draw(keys, event, cell_index, available):
  """(S,): each seed's uniform pick among its ``available`` (S, n) entries, from the key
  fold_in(fold_in(key, event), cell type)."""
  pick = lambda k, a: random_index(jax.random.fold_in(jax.random.fold_in(k, event), cell_index), a)
  return jax.vmap(pick)(keys, available)


# the selection updates of S seeds (small programs of (S, E, O) arrays, compiled once per shape)
_decide_ops = jax.jit(jax.vmap(decide_op))
_decide_nodes = jax.jit(jax.vmap(decide_topology, in_axes=(0, None, 0, 0)), static_argnums=1)


def _eliminated(sel, t: str, steps: int, nodes, cand) -> dict:
  """``sel`` with the inputs of each seed's node that are no longer candidates removed."""
  rem = np.array(sel[t].removed)
  for s, c in enumerate(cand):
    rem[s, [r for r in node_rows(steps, int(nodes[s])) if r not in c]] = True
  return {**sel, t: sel[t]._replace(removed=rem)}


def _decide_event(sel, keys, event: int, kind: str, score_fn, *, steps: int, primitives, crit: str,
                  chunk: int, elimination: str, selectable: dict, cell_types) -> tuple[dict, list]:
  """One decision event for every seed and cell type (normal first, then reduce on the new
  selection); returns the new selection (host arrays, seed axis first) and per seed its records."""
  E, O = space.num_edges(steps), len(primitives)
  S = len(keys)
  col = 0 if crit == "acc" else 1
  records = [dict(event=event, kind=kind) for _ in range(S)]
  for ci, t in enumerate(cell_types):
    cs = sel[t]
    if kind == "op":
      e = np.asarray(_draw(keys, event, ci, ~cs.op_decided))
      ops = [np.flatnonzero(selectable[t][e[s]]) for s in range(S)]  # only the ops that may be kept
      scores = _score(score_fn, sel, t, [[("op", int(e[s]), int(k)) for k in ops[s]] for s in range(S)], E, O,
                      chunk, cell_types)
      ks = [int(ops[s][int(choose_op(scores[s][:, col], crit))]) for s in range(S)]
      new = _decide_ops(cs, e, np.asarray(ks))
      for s in range(S):
        records[s][t] = {"edge": int(e[s]), "op": primitives[ks[s]], "ops": [primitives[k] for k in ops[s]],
                         "acc": scores[s][:, 0].tolist(), "loss": scores[s][:, 1].tolist()}
    else:
      nodes = np.asarray(_draw(keys, event, ci, ~cs.node_decided))
      cand = [list(node_rows(steps, int(n))) for n in nodes]
      rounds = [[] for _ in range(S)]
      by_row = None  # per seed, row -> (acc, loss) of its removal
      while any(len(c) > 2 for c in cand):
        if by_row is None or elimination == "cumulative":
          work = sel if by_row is None else _eliminated(sel, t, steps, nodes, cand)
          specs = [[("edge", r, -1) for r in c] if len(c) > 2 else [] for c in cand]
          by_row = [dict(zip(c, sc)) for c, sc in zip(cand, _score(score_fn, work, t, specs, E, O, chunk, cell_types))]
        for s in range(S):
          if len(cand[s]) > 2:
            sc = np.stack([by_row[s][r] for r in cand[s]])
            i = int(choose_removal(sc[:, col], crit))
            rounds[s].append({"candidates": list(cand[s]), "acc": sc[:, 0].tolist(), "loss": sc[:, 1].tolist(),
                              "removed": cand[s][i]})
            del cand[s][i]
      keep = np.zeros((S, E), bool)
      for s in range(S):
        keep[s, cand[s]] = True
      new = _decide_nodes(cs, steps, nodes, keep)
      for s in range(S):
        records[s][t] = {"node": int(nodes[s]) + 1, "kept": cand[s], "rounds": rounds[s]}
    sel = {**sel, t: _host(new)}
  return sel, records


def select_all(score_fn: Callable, keys, *, steps: int, primitives, crit: str = "acc", chunk: int | None = None,
               elimination: str = "code", op_mask=None, cell_types=("normal", "reduce")) -> tuple[dict, list]:
  """Every decision of the schedule for S seeds, without tuning (``project`` tunes in between).

  Args:
    score_fn: ``(sel, op_zero, edge_zero) -> {'acc': (S, V), 'loss': (S, V)}``: the scores of V
      variants per seed, variant v being seed s's masked weights with the ``op_zero[t][s, v]``
      (E, O) entries and the ``edge_zero[t][s, v]`` (E,) edge factors set to 0.
    keys: (S,) PRNG keys (each seed's decision order).
    chunk: variants per call (None: max(O, steps + 1)).

  Returns:
    ``(sel, records)``: the final selection (host arrays, seed axis first) and per seed its list
    of decision records.
  """
  O, E = len(primitives), space.num_edges(steps)
  chunk = chunk or max(O, steps + 1)
  sel = _host(jax.tree.map(lambda a: jnp.broadcast_to(a, (len(keys),) + a.shape), init_selection(steps, O, cell_types)))
  selectable = _selectable(primitives, op_mask, cell_types, E)
  records = [[] for _ in keys]
  for event, (kind, _) in enumerate(schedule(steps, 1)):
    sel, rec = _decide_event(sel, keys, event, kind, score_fn, steps=steps, primitives=tuple(primitives), crit=crit,
                             chunk=chunk, elimination=elimination, selectable=selectable, cell_types=cell_types)
    for r, h in zip(rec, records):
      h.append(r)
  return sel, records


# ------------------------------------------------------------------------------- the programs
class PTState(NamedTuple):
  """What tuning changes (one seed; a leading axis for many): the supernet, the alphas and their
  Adam state (from the search), the tuning SGD state, the seed's key, tuning steps done, alive."""

  params: Any
  batch_stats: Any
  arch: Any
  a_opt: Any
  w_opt: Any
  key: jax.Array
  tune_step: jax.Array
  alive: jax.Array


class PTResult(NamedTuple):
  """genotypes: one per seed (a list; one entry for a single state); selection: host arrays
  (seed axis first); state: the tuned ``PTState`` (seed axis first); history: per seed its decision
  and tuning-epoch records."""

  genotypes: list
  selection: dict
  state: PTState
  history: list


def _tune_tx(c: PTConfig):
  """SGD(lr constant, momentum, wd) after clipping [``reset_optimizer``; the scheduler is never stepped]."""
  return optim.weight_optimizer(c.tune_lr, c.tune_momentum, c.tune_weight_decay, c.tune_grad_clip)


@functools.lru_cache(maxsize=8)
def make_programs(method: SearchMethod, config: PTConfig, *, a_tx=None, search_step: int = 0,
                  mean: tuple = D.CIFAR10_MEAN, std: tuple = D.CIFAR10_STD, steps_per_epoch: int = 1):
  """``(evaluate, tune_step)``, both over a leading seed axis, jitted (compiled on first use).

  evaluate(params, batch_stats, arch, sel, op_zero, edge_zero, images, labels) -> {'acc', 'loss'}
    (S, V): the V variants of each seed (``select_all``'s ``score_fn``) on the whole split
    (uint8 images; batches of ``eval_batch_size`` scanned, the variants vmapped per batch).
  tune_step(state, sel, w_images, w_labels, a_images, a_labels) -> (state, metrics): one alpha step
    (unless ``freeze_arch``) and one weight step; epoch e's training batches from the seed's e-th
    permutation, the alpha batch drawn at random from the validation split every step.
  ``search_step``: the step count the method's schedules see (its search's last). Cached per
  arguments, so a resumed projection in the same process reuses the compiled programs.
  """
  c, net = config, method.net
  if method.loss is None or method.eval_weights is None or method.weights is None:
    raise ValueError("DARTS-PT needs a method with loss, weights and eval_weights (a jnas.search.base.compose method)")
  if not c.freeze_arch and a_tx is None:
    raise ValueError("the alpha step needs a_tx (the search's alpha optimiser, base.arch_tx(config)); "
                     "or freeze_arch=True (blank-PT)")
  w_tx = _tune_tx(c)
  mean, std = tuple(map(float, mean)), tuple(map(float, std))
  B, Bv, spe = c.batch_size, c.eval_batch_size, steps_per_epoch
  step = jnp.asarray(search_step, jnp.int32)

  def evaluate(params, batch_stats, arch, sel, op_zero, edge_zero, images, labels):
    TRACES["eval"] += 1
    base = masked_weights(method.eval_weights(arch), sel)

    def variant(oz, ez):
      w = dict(base)
      for t in sel:
        w[t] = jnp.where(oz[t], jnp.zeros((), base[t].dtype), base[t])
        if f"{t}_edges" in base:
          w[f"{t}_edges"] = jnp.where(ez[t], jnp.zeros((), base[f"{t}_edges"].dtype), base[f"{t}_edges"])
      return w

    nb = images.shape[0] // Bv
    xs = images[:nb * Bv].reshape((nb, Bv) + images.shape[1:])
    ys = labels[:nb * Bv].reshape((nb, Bv))

    def body(carry, xy):
      x, y = xy
      x = D.normalize(x, mean, std)

      def one(oz, ez):
        logits, _ = net.forward(params, batch_stats, x, variant(oz, ez), train=True)  # BN updates dropped
        return jnp.sum(jnp.argmax(logits, -1) == y).astype(jnp.float32), cross_entropy(logits, y) * Bv

      correct, loss = jax.vmap(one)(op_zero, edge_zero)
      return (carry[0] + correct, carry[1] + loss), None

    V = jax.tree.leaves(op_zero)[0].shape[0]
    (correct, loss), _ = lax.scan(body, (jnp.zeros((V,)), jnp.zeros((V,))), (xs, ys))
    return {"acc": 100.0 * correct / (nb * Bv), "loss": loss / (nb * Bv)}

  def aug(key, x):
    return D.cifar_augment(key, x, mean=mean, std=std, cutout_length=c.cutout_length)

  def tune(st: PTState, sel, w_images, w_labels, a_images, a_labels):
    TRACES["tune"] += 1
    epoch, i = st.tune_step // spe, st.tune_step % spe
    perm = D.epoch_permutation(jax.random.fold_in(jax.random.fold_in(st.key, _TUNE_DATA), epoch), w_images.shape[0])
    xw, yw = D.get_batch(w_images, w_labels, perm, i, B)
    k = jax.random.fold_in(jax.random.fold_in(st.key, _TUNE), st.tune_step)
    k_a, k_aw, k_aa, k_ma, k_fa, k_mw, k_fw = jax.random.split(k, 7)
    pick = jax.random.permutation(k_a, a_images.shape[0])[:B]  # ``next(iter(valid_queue))``
    bw, ba = (aug(k_aw, xw), yw), (aug(k_aa, a_images[pick]), a_labels[pick])
    arch, a_opt = st.arch, st.a_opt
    metrics = {}
    ok = jnp.ones((), bool)
    if not c.freeze_arch:
      def a_loss(a):
        w = masked_weights(method.weights(a, k_ma, step), sel)
        return method.loss(st.params, st.batch_stats, a, ba, k_fa, step, weights=w)

      (val_loss, _), g_a = jax.value_and_grad(a_loss, has_aux=True)(arch)
      upd, a_opt = a_tx.update(g_a, a_opt, arch)
      arch = optax.apply_updates(arch, upd)
      metrics["val_loss"] = val_loss
      ok = guard.all_finite(val_loss, g_a)
    w = jax.lax.stop_gradient(masked_weights(method.weights(arch, k_mw, step), sel))
    (loss, (new_stats, logits)), g_w = jax.value_and_grad(
        lambda p: method.loss(p, st.batch_stats, arch, bw, k_fw, step, weights=w), has_aux=True)(st.params)
    upd, w_opt = w_tx.update(g_w, st.w_opt, st.params)
    params = optax.apply_updates(st.params, upd)
    new = st._replace(params=params, batch_stats=new_stats, arch=arch, a_opt=a_opt, w_opt=w_opt,
                      tune_step=st.tune_step + 1)
    ok = st.alive & ok & guard.all_finite(loss, params, new_stats, arch)
    new = guard.keep_if(ok, new, st._replace(tune_step=st.tune_step + 1))._replace(alive=ok)
    metrics.update(train_loss=loss, train_acc=100.0 * jnp.mean(jnp.argmax(logits, -1) == yw))
    return new, metrics

  ev = step_jit(jax.vmap(evaluate, in_axes=(0, 0, 0, 0, 0, 0, None, None)))
  tn = step_jit(jax.vmap(tune, in_axes=(0, 0, None, None, None, None)))
  return ev, tn


# --------------------------------------------------------------------------------- the driver
def payload_template(state: SearchState, net, config: PTConfig = PTConfig()) -> dict:
  """The payload ``project`` starts from (position 0, nothing decided): the structure a command
  restores a saved payload into. ``state``: the search's final state (seed axis optional)."""
  s = state if np.ndim(state.step) == 1 else jax.tree.map(lambda a: jnp.asarray(a)[None], state)
  S = int(np.shape(s.step)[0])
  w_opt = jax.vmap(_tune_tx(config).init)(s.params)
  pt = PTState(s.params, s.batch_stats, s.arch, s.a_opt, w_opt, s.key, jnp.zeros((S,), jnp.int32), s.alive)
  one = init_selection(net.steps, len(net.primitives), tuple(net.cell_types))
  sel = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (S,) + a.shape).copy(), one)
  return {"position": 0, "state": pt, "selection": sel, "history": [[] for _ in range(S)]}


def project(method: SearchMethod, state: SearchState, weights_split: D.Split, alphas_split: D.Split,
            config: PTConfig = PTConfig(), *, a_tx=None, mean=D.CIFAR10_MEAN, std=D.CIFAR10_STD,
            checkpoint: Callable | None = None, restore: dict | None = None,
            log: Callable | None = None) -> PTResult:
  """DARTS-PT selection with fine-tuning on a trained supernet (module docstring).

  Compiles two programs (``make_programs``: the batched evaluation and the tuning step), whatever
  the schedule and however many seeds.

  Args:
    method: the search's ``SearchMethod`` (any ``compose`` method: DARTS, SDARTS, PC-DARTS, ...).
    state: its final ``SearchState``; with a leading seed axis (``state.step`` of shape (S,)) every
      seed is projected in the same programs, each with its own decision order.
    weights_split, alphas_split: the search's uint8 splits: tuning weight batches, and the
      validation split (the alpha batches and every evaluation).
    config: ``PTConfig``. a_tx: the alpha optimiser whose state is ``state.a_opt``
      (``base.arch_tx(search_config)``); unused with ``freeze_arch``.
    mean, std: the dataset's normalisation.
    checkpoint(position, payload): called after decision k (position 2k + 1) and after the tuning
      that follows it (2k + 2); ``payload`` ({'position', 'state': PTState, 'selection',
      'history'}: host arrays, typed PRNG keys, and JSON-able records) is everything a resume
      needs; ``payload_template`` gives its structure (for ``jnas.checkpoint.restore_state``).
    restore: such a payload to continue from.
    log(record): per decision and per tuning epoch, one record per seed ({'seed': its position on
      the seed axis, 'event', ...}).

  Returns:
    ``PTResult``.
  """
  c = config
  net = method.net
  primitives = tuple(net.primitives)
  steps, cell_types = net.steps, tuple(net.cell_types)
  E, O = space.num_edges(steps), len(primitives)
  S = int(np.shape(state.step)[0]) if np.ndim(state.step) == 1 else 1
  n_w, n_a = len(weights_split.labels), len(alphas_split.labels)
  n_eval = n_a if c.eval_images is None else min(c.eval_images, n_a)
  if n_eval < c.eval_batch_size:
    raise ValueError(f"the validation split has {n_eval} images, fewer than eval_batch_size={c.eval_batch_size}")
  if min(n_w, n_a) < c.batch_size:
    raise ValueError(f"the splits ({n_w}, {n_a} images) are smaller than batch_size={c.batch_size}")
  spe = c.tune_steps_per_epoch or D.num_batches(n_w, c.batch_size)
  spe = min(spe, D.num_batches(n_w, c.batch_size))
  search_step = int(np.max(np.asarray(state.step)))
  evaluate, tune_step = make_programs(method, c, a_tx=a_tx, search_step=search_step, mean=tuple(map(float, mean)),
                                      std=tuple(map(float, std)), steps_per_epoch=spe)
  chunk = c.variant_chunk or max(O, steps + 1)

  w_images, w_labels = jax.device_put(weights_split.images), jax.device_put(np.asarray(weights_split.labels, np.int32))
  a_images, a_labels = jax.device_put(alphas_split.images), jax.device_put(np.asarray(alphas_split.labels, np.int32))
  e_images, e_labels = a_images[:n_eval], a_labels[:n_eval]
  if restore is None:
    restore = payload_template(state, net, c)
  pt = jax.tree.map(jnp.asarray, restore["state"])
  sel = jax.tree.map(np.asarray, restore["selection"])
  position, history = int(restore["position"]), [list(h) for h in restore["history"]]
  keys = jax.vmap(lambda k: jax.random.fold_in(k, _DECIDE))(pt.key)

  def emit(records):
    for k, r in enumerate(records):
      history[k].append(r)
      if log is not None:
        log({"seed": k, **r})

  def score_fn(sel_, op_zero, edge_zero):
    return evaluate(pt.params, pt.batch_stats, pt.arch, sel_, op_zero, edge_zero, e_images, e_labels)

  def save(pos, sel_):
    if checkpoint is not None:
      checkpoint(pos, {"position": pos, "state": _host(pt), "selection": _host(sel_),
                       "history": [list(h) for h in history]})

  events = schedule(steps, c.proj_intv)
  selectable = _selectable(primitives, net.op_mask, cell_types, E)
  for event, (kind, epochs) in enumerate(events):
    if position < 2 * event + 1:  # the decision
      sel, rec = _decide_event(sel, keys, event, kind, score_fn, steps=steps, primitives=primitives, crit=c.crit,
                               chunk=chunk, elimination=c.edge_elimination, selectable=selectable,
                               cell_types=cell_types)
      emit(rec)
      position = 2 * event + 1
      save(position, sel)
    if position < 2 * event + 2:  # the tuning epochs after it
      sel_dev = jax.tree.map(jnp.asarray, sel)
      for ep in range(epochs):
        sums = None
        for _ in range(spe):
          pt, m = tune_step(pt, sel_dev, w_images, w_labels, a_images, a_labels)
          sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
        sums = _host(sums)
        emit([{"event": event, "tune_epoch": ep, **{k: float(v[i]) / spe for k, v in sums.items()}} for i in range(S)])
      position = 2 * event + 2
      save(position, sel)
  genotypes = [derive(jax.tree.map(lambda a: a[k], sel), primitives) for k in range(S)]
  return PTResult(genotypes, sel, pt, history)
