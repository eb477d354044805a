"""DARTS-PT (Wang, Cheng, Chen, Tang, Hsieh, ICLR 2021: "Rethinking Architecture Selection in
Differentiable NAS"): DARTS's supernet, then perturbation-based selection instead of argmax.

Phase 1 is DARTS first order, 50 epochs, on the 7 ops without ``none`` [darts-pt
``exp_scripts/darts-sota.sh``, ``sota/cnn/spaces.py`` s5]. Phase 2 (``jnas.search.projection``)
decides one edge at a time, keeping the op whose removal hurts the supernet's validation accuracy
most, fine-tuning ``proj_intv`` epochs between decisions, then the 2 inputs of each node the same
way. ``run_search`` runs both (``selection='pt'``); ``run_search(method, ..., selection='pt')``
applies phase 2 after any other method's supernet (SDARTS-RS + PT, ...), and ``freeze_arch``
gives blank-PT. The selection's settings are fields of this config (``--set proj_intv=10``).

Not reproduced: the code's supernet phase draws a fresh random batch at every step
(``next(iter(queue))``); jnas's search runs epochs over permutations.
"""

from __future__ import annotations

import dataclasses

from jnas import space
from jnas.search import base, darts
from jnas.search.registry import MethodSpec

__all__ = ["DartsPTConfig", "build", "SPEC"]


@dataclasses.dataclass(frozen=True)
class DartsPTConfig(darts.DartsConfig):
  """DARTS first order on 7 ops, and the selection's settings (``projection.PTConfig``'s fields:
  proj_intv 5 as the scripts (the argparse default 10), crit 'acc', freeze_arch, tune_lr 0.0025)."""

  order: str = "first"
  primitives: tuple[str, ...] = tuple(space.PRIMITIVES[1:])
  proj_intv: int = 5
  crit: str = "acc"
  freeze_arch: bool = False
  tune_lr: float = 0.0025
  edge_elimination: str = "code"


def build(config: DartsPTConfig, steps_per_epoch: int) -> base.Search:
  method = base.compose(darts.parts(config, steps_per_epoch), config, steps_per_epoch)
  return base.single_stage("darts-pt", config, method, selection="pt")


SPEC = MethodSpec(
    name="darts-pt", config=DartsPTConfig, build=build,
    paper="Wang, Cheng, Chen, Tang, Hsieh. Rethinking Architecture Selection in Differentiable NAS (DARTS-PT). "
          "ICLR 2021",
    changes="DARTS first order on 7 ops; ops and inputs chosen by validation accuracy when removed, with fine-tuning",
    cpu={"proj_intv": 1})
