"""StacNAS (Li, Zhang, Wang, Li, Zhang, arXiv 1909.11926: "StacNAS: Towards Stable and Consistent
Differentiable Neural Architecture Search").

Correlated ops (sep_conv_3x3 and sep_conv_5x5, ...) split the alphas between them
("multicollinearity"), so the search is two stages of grouped variable pruning, each one-level
[abstract; authors' code ``search.py``, ``genotypes.py``]:

* stage 1: every edge mixes one representative per op group, softmax over
  [max_pool_3x3, skip_connect, sep_conv_3x3, dil_conv_3x3, none]; 14 cells, C 16.
* transition: edge e's winning group is argmax over its first 4 alphas (``none`` excluded).
* stage 2: a fresh network of 20 cells and fresh alphas: edge e mixes its group's members
  (``GROUPS``, a setting: max_pool -> avg_pool, max_pool, none; skip -> skip, skip, none;
  sep_conv_3x3 -> sep_conv_3x3, sep_conv_5x5, none; dil_conv_3x3 -> dil_conv_3x3, dil_conv_5x5,
  none), softmax over the 3 member slots of each edge. The other ops of the 8 do not exist on that edge (their weight is
  exactly 0 and they have no parameters: ``SearchNetwork.op_mask``).
* one-level optimisation in both stages: one forward at softmax(alpha) on a train batch, one
  backward, the weights' gradient clipped to norm 3 (not the alphas'), then Adam on the alphas and
  SGD on the weights from the same gradient; all of the training set (``train_portion=1``: run it
  with no validation split), so the last epoch's alphas are the result.
* derivation (stage 2): per edge its best member other than ``none``; per node the 2 edges whose
  best member has the largest *raw* alpha (not softmax: each edge has its own softmax).

Options where sources differ: ``skip_group='duplicate'`` (default, the public code: two skip slots
with their own alphas; on stride-1 edges both are the identity, so they only split the alpha mass;
on the stride-2 edges of the reduction cell the code has two FactorizedReduce modules with their
own weights, which jnas shares: one op, two alphas) or 'single' (skip and none only; the authors'
modified version keeps skip as a fixed identity instead, which jnas does not offer). ``grad_clip``
3 (code; NAS-Benchmark states 5 for every method). Epochs per stage 80 + 80 (code; NAS-Benchmark
100 + 100). Alphas are shared per cell type (``--alpha_share``); per-cell alphas (the code's other
choice) are not supported.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jnas import space
from jnas.genotype import Genotype, _derive_cell
from jnas.search import base, edge_weights as ew
from jnas.search.darts import entropy_metrics
from jnas.search.registry import MethodSpec
from jnas.supernet import init_alphas, make_op_mask

__all__ = ["StacNASConfig", "GROUPS", "winning_groups", "build", "SPEC"]

# per group: its stage-1 representative, then its stage-2 member slots (``none`` last), in the
# code's order [ST:genotypes.py ``OPS_DICT``]; stage 1 mixes the representatives and ``none``
GROUPS = (
    ("max_pool_3x3", "avg_pool_3x3", "max_pool_3x3", "none"),
    ("skip_connect", "skip_connect", "skip_connect", "none"),
    ("sep_conv_3x3", "sep_conv_3x3", "sep_conv_5x5", "none"),
    ("dil_conv_3x3", "dil_conv_3x3", "dil_conv_5x5", "none"),
)


@dataclasses.dataclass(frozen=True)
class StacNASConfig(base.SearchConfig):
  """StacNAS settings (authors' code ``config.py``, ``run_all.py``); ``layers`` and ``epochs`` are
  stage 1's, ``layers2`` and ``epochs2`` stage 2's."""

  layers: int = 14
  layers2: int = 20
  epochs: int = 80
  epochs2: int = 80
  train_portion: float = 1.0
  grad_clip: float | None = 3.0
  skip_group: str = "duplicate"
  groups: tuple[tuple[str, ...], ...] = GROUPS

  def __post_init__(self):
    object.__setattr__(self, "groups", tuple(tuple(g) for g in self.groups))
    super().__post_init__()
    if len(self.groups) < 2 or any(len(g) < 2 for g in self.groups):
      raise ValueError(f"groups need >= 2 entries of (representative, members...), got {self.groups}")
    if self.skip_group not in ("duplicate", "single"):
      raise ValueError(f"unknown skip_group {self.skip_group!r}; use 'duplicate' or 'single'")
    if self.layers2 < 3 or self.epochs2 < 1:
      raise ValueError(f"layers2 must be >= 3 and epochs2 >= 1, got {self.layers2}, {self.epochs2}")
    missing = sorted({op for g in self.groups for op in g} - set(self.primitives))
    if missing:
      raise ValueError(f"StacNAS's groups need the ops {missing} among the primitives {self.primitives}")

  @property
  def representatives(self) -> tuple[str, ...]:
    """Stage 1's ops: each group's representative, then ``none``."""
    return tuple(g[0] for g in self.groups) + ("none",)


def winning_groups(arch_cell: np.ndarray) -> list[int]:
  """Stage 1 -> 2: per edge the index of the group whose representative has the largest alpha,
  ``none`` (the last column) excluded; the first of equal ones."""
  a = np.asarray(arch_cell)
  return [int(np.argmax(row[:-1])) for row in a]


def _slots(config: StacNASConfig, group: int) -> tuple[str | None, ...]:
  """Group ``group``'s member slots, padded with None to the longest group; 'single' keeps one of
  each duplicated op (the later copies' slots do not exist)."""
  members = list(config.groups[group][1:])
  if config.skip_group == "single":
    members = [m if m not in members[:k] else None for k, m in enumerate(members)]
  width = max(len(g) - 1 for g in config.groups)
  return tuple(members) + (None,) * (width - len(members))


def build(config: StacNASConfig, steps_per_epoch: int) -> base.Search:
  c = config
  E, prims, reps = space.num_edges(c.steps), tuple(c.primitives), c.representatives
  SLOTS = max(len(g) - 1 for g in c.groups)

  def stage1():
    schedule = base.lr_schedule(c, steps_per_epoch)
    mix = lambda arch, key, step: ew.per_cell_type(ew.softmax, arch)

    def derive(arch, data=None):  # (stage 1's own genotype, for the per-epoch log)
      raw = {t: np.asarray(arch[t]) for t in ("normal", "reduce")}
      return _raw_rule(raw, reps, c.steps)

    parts = base.Parts(
        net=base.network(c, primitives=reps), mix=mix, eval_mix=lambda arch: mix(arch, None, 0), derive=derive,
        init_arch=lambda key: init_alphas(key, steps=c.steps, num_ops=len(reps), scheme=c.alpha_init),
        w_tx=base.weight_tx(c, schedule), a_tx=base.arch_tx(c), schedule=schedule,
        metrics=lambda arch, step: entropy_metrics(mix(arch, None, step)))
    return base.Stage(f"{c.layers} cells, op groups", base.compose(parts, c, steps_per_epoch, order="single_level"))

  def stage2(context):
    sc = dataclasses.replace(c, layers=c.layers2, epochs=c.epochs2)
    schedule = base.lr_schedule(sc, steps_per_epoch)
    # per cell type: slot -> op column (E, SLOTS, O) and which slots exist (E, SLOTS)
    to_ops, exists = {}, {}
    for t in ("normal", "reduce"):
      M, X = np.zeros((E, SLOTS, len(prims)), np.float32), np.zeros((E, SLOTS), bool)
      for e, g in enumerate(context[t]):
        for k, op in enumerate(_slots(c, g)):
          if op is not None:
            M[e, k, prims.index(op)], X[e, k] = 1.0, True
      to_ops[t], exists[t] = M, X
    op_mask = make_op_mask(*(to_ops[t].sum(1) > 0 for t in ("normal", "reduce")))
    M_j = {t: jnp.asarray(m) for t, m in to_ops.items()}
    X_j = {t: jnp.asarray(x) for t, x in exists.items()}

    def mix(arch, key, step):
      return {t: jnp.einsum("es,eso->eo", ew.masked_softmax(arch[t], X_j[t]), M_j[t]) for t in ("normal", "reduce")}

    def derive(arch, data=None):
      raw = {}
      for t in ("normal", "reduce"):
        a = np.asarray(arch[t], np.float64)
        r = np.full((E, len(prims)), -1e30)
        for e in range(E):  # each op at its best slot's raw alpha (a duplicated skip: the larger one)
          for k in range(SLOTS):
            if exists[t][e, k]:
              o = int(np.argmax(to_ops[t][e, k]))
              r[e, o] = max(r[e, o], a[e, k])
        raw[t] = r
      return _raw_rule(raw, prims, c.steps)

    parts = base.Parts(
        net=base.network(sc, op_mask=op_mask), mix=mix, eval_mix=lambda arch: mix(arch, None, 0), derive=derive,
        init_arch=lambda key: init_alphas(key, steps=c.steps, num_ops=SLOTS, scheme=c.alpha_init),
        w_tx=base.weight_tx(sc, schedule), a_tx=base.arch_tx(sc), schedule=schedule,
        metrics=lambda arch, step: entropy_metrics(mix(arch, None, step)))
    return base.Stage(f"{c.layers2} cells, members of the winning groups",
                      base.compose(parts, sc, steps_per_epoch, order="single_level", epochs=c.epochs2))

  def stage(index, context):
    return stage1() if index == 0 else stage2(context)

  def transition(index, state, context, key):
    return {t: winning_groups(state.arch[t]) for t in ("normal", "reduce")}, None

  return base.Search("stacnas", c, 2, stage, transition)


def _raw_rule(raw: dict, primitives, steps: int) -> Genotype:
  """Per node the 2 edges whose best non-``none`` op has the largest raw alpha."""
  concat = tuple(range(2, steps + 2))
  return Genotype(_derive_cell(raw["normal"], steps, primitives), concat,
                  _derive_cell(raw["reduce"], steps, primitives), concat, concat_style="range")


SPEC = MethodSpec(
    name="stacnas", config=StacNASConfig, build=build,
    paper="Li, Zhang, Wang, Li, Zhang. StacNAS: Towards Stable and Consistent Differentiable NAS. arXiv 1909.11926",
    changes="one-level; stage 1 over op groups (14 cells), stage 2 over the winning group's members (20 cells)",
    cpu={"layers2": 5, "epochs": 2, "epochs2": 2})
