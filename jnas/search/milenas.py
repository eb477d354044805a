"""MiLeNAS (He, Wang, Li, Yang, Zhang, CVPR 2020: "MiLeNAS: Efficient Neural Architecture Search
via Mixed-Level Reformulation").

The architecture descends a mixed-level objective: the validation loss plus lambda times the
training loss, both at the current weights, so no second-order term is needed,

  w     <- SGD(grad_w L_train(w_t, alpha_t))
  alpha <- Adam(grad_alpha L_val(w_t, alpha_t) + lambda grad_alpha L_train(w_t, alpha_t))

both from (w_t, alpha_t) (update order ``mixed_level`` of ``jnas.search.base.compose``: one
backward of the training loss gives both of its gradients, one more the validation gradient).
lambda = 1 as LHD's baseline [LHD ``search/MiLeNAS/train_search_milenas.py``: the two alpha
gradients accumulate because the optimiser's ``zero_grad`` sits between them]; the rest is DARTS
first order with LHD's settings (alpha weight decay 0).
"""

from __future__ import annotations

import dataclasses

from jnas.search import base, darts
from jnas.search.registry import MethodSpec

__all__ = ["MiLeNASConfig", "build", "SPEC"]


@dataclasses.dataclass(frozen=True)
class MiLeNASConfig(base.SearchConfig):
  """mixed_lambda: the training loss's weight in the alpha gradient."""

  order: str = "first"
  a_weight_decay: float = 0.0
  mixed_lambda: float = 1.0


def build(config: MiLeNASConfig, steps_per_epoch: int) -> base.Search:
  c = config
  method = base.compose(darts.parts(c, steps_per_epoch), c, steps_per_epoch, order="mixed_level",
                        mixed_lambda=c.mixed_lambda)
  return base.single_stage("milenas", c, method)


SPEC = MethodSpec(
    name="milenas", config=MiLeNASConfig, build=build,
    paper="He, Wang, Li, Yang, Zhang. MiLeNAS: Efficient Neural Architecture Search via Mixed-Level "
          "Reformulation. CVPR 2020",
    changes="alpha descends L_val + L_train at the same weights (mixed level, first order; weights first)")
