"""SS-DARTS ("Delve into the Performance Degradation of Differentiable Architecture Search", Zhang and
Ding, arXiv 2109.13466): the learning-rate swap and the operation-magnitude selective stop.

DARTS's result should come from the architecture gradients of the early stage of training, so the
two learning-rate schemes are exchanged, and the genotype is taken from the epoch at which the
dominant parametric op is strongest [abstract]. On the DARTS loop (first order; alpha step on a
val batch, then weight step [SS ``SS-DARTS/train_search.py``]):

* ``lr_swap='code'`` (default, the authors' code): weights at a constant 0.025, alphas at a
  constant 1e-3 (Adam, betas (0.5, 0.999), wd 1e-3); batch 80, 75 epochs.
  ``lr_swap='literal'``: the abstract's exchange read literally: weights constant at ``w_lr``,
  alphas cosine-annealed per epoch from ``a_lr`` to ``a_lr_min`` (default 4e-5: DARTS's weight
  ratio 0.001 / 0.025). Whether the paper decays the alphas' rate was not found.
* selective stop: per epoch m_t = sum over the normal cell's edges of softmax(alpha) (one value per
  op; ``op_magnitude`` in metrics.jsonl). ``stop_rule='peak'`` (default; the DARTS-space code logs
  argmax_t m_t[k] for every op and the genotype is picked from the log by hand): the result is the
  genotype of epoch argmax_t m_t[stop_op], stop_op = sep_conv_3x3 (index 3 of the 7 ops).
  ``stop_rule='gated'`` (the authors' NAS-Bench-201 fork, ``DARTS-V1.py``): m_t[stop_op] counts only
  in epochs where stop_op is the argmax of m_t, or before it first became the argmax; other epochs
  count as 0. The search runs all its epochs either way (a post-hoc choice of epoch).
* ops: the code's 7 (DARTS's without ``none``).

The paper's numbers were not available (the spec has none); the seeds of the authors' runs are
not set (their seeding lines are commented out).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jnas import optim, space
from jnas.search import base, darts
from jnas.search.registry import MethodSpec

__all__ = ["SSDartsConfig", "selective_stop_epoch", "build", "SPEC"]

LR_SWAPS = ("code", "literal")
STOP_RULES = ("peak", "gated", "none")


@dataclasses.dataclass(frozen=True)
class SSDartsConfig(base.SearchConfig):
  """SS-DARTS settings [SS ``SS-DARTS/train_search.py``, ``architect.py``]."""

  primitives: tuple[str, ...] = tuple(space.PRIMITIVES[1:])
  epochs: int = 75
  batch_size: int = 80
  w_lr: float = 0.025
  w_lr_min: float = 0.025
  a_lr: float = 1e-3
  a_lr_min: float = 4e-5
  lr_swap: str = "code"
  stop_rule: str = "peak"
  stop_op: str = "sep_conv_3x3"

  def __post_init__(self):
    super().__post_init__()
    if self.lr_swap not in LR_SWAPS:
      raise ValueError(f"unknown lr_swap {self.lr_swap!r}; use one of {LR_SWAPS}")
    if self.stop_rule not in STOP_RULES:
      raise ValueError(f"unknown stop_rule {self.stop_rule!r}; use one of {STOP_RULES}")
    if self.stop_rule != "none" and self.stop_op not in self.primitives:
      raise ValueError(f"stop_op {self.stop_op!r} is not among the primitives {self.primitives}")


def selective_stop_epoch(magnitudes, op: int, rule: str = "peak") -> int:
  """The selected epoch for per-epoch op magnitudes ``magnitudes`` (T, K): argmax_t m_t[op]
  ('peak'), or the same over m_t[op] zeroed in the epochs where ``op`` is not the argmax of m_t
  after it first was ('gated'). Ties: the first epoch."""
  m = np.asarray(magnitudes, np.float64)
  if m.ndim != 2 or len(m) == 0:
    raise ValueError(f"magnitudes must be (epochs, ops), got shape {m.shape}")
  score = m[:, op].copy()
  if rule == "gated":
    leads = np.argmax(m, axis=1) == op
    started = np.cumsum(leads) > 0
    score = np.where(leads | ~started, score, 0.0)
  elif rule != "peak":
    raise ValueError(f"unknown stop rule {rule!r}; use 'peak' or 'gated'")
  return int(np.argmax(score))


def build(config: SSDartsConfig, steps_per_epoch: int) -> base.Search:
  c = config
  parts = darts.parts(c, steps_per_epoch)
  if c.lr_swap == "literal":
    a_schedule = optim.cosine_epoch_schedule(c.a_lr, c.epochs, steps_per_epoch, c.a_lr_min, c.lr_shift)
    parts = parts._replace(a_tx=optim.arch_optimizer(a_schedule, c.a_b1, c.a_b2, weight_decay=c.a_weight_decay,
                                                     grad_clip=c.a_grad_clip, kind=c.a_optimizer))
  method = base.compose(parts, c, steps_per_epoch)
  rules = {}
  if c.stop_rule != "none":
    op = c.primitives.index(c.stop_op)

    def select(records):
      recs = [r for r in records if r.get("op_magnitude") is not None]
      if not recs:
        return None
      return recs[selective_stop_epoch([r["op_magnitude"] for r in recs], op, c.stop_rule)]["epoch"]

    rules["select"] = select
  return base.single_stage("ss-darts", c, method, **rules)


SPEC = MethodSpec(
    name="ss-darts", config=SSDartsConfig, build=build,
    paper="Zhang, Ding. Delve into the Performance Degradation of Differentiable Architecture Search (SS-DARTS). "
          "arXiv 2109.13466",
    changes="constant weight lr, constant larger alpha lr (the swap); genotype of the epoch sep_conv_3x3 peaks",
    cpu={"order": "first"})
