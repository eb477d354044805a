"""SP-DARTS ("Robustifying DARTS by Eliminating Information Bypass Leakage via Explicit Sparse
Regularization", Zhang and Ding, ICDM 2021, arXiv 2306.06858; code chaoji90/SP-DARTS).

DARTS's collapse and its supernet/final-network gap are read as *information bypass leakage*:
during the search, information flows through ops the discretised network will not have
[abstract]. The remedy makes the architecture sparse while the supernet trains. In the code
[SP ``SP-DARTS/train_search_mf.py``, ``architect_mf.py``, ``model_search.py``]:

* the explicit sparse approximation is softmax(alpha / T) at a very small base temperature,
  T_b = 1e-3 after a warm-up of ``temp_warmup_epochs`` = 1 epoch at T_b = 1;
* mixed-sparsity training: each step runs at T_b with probability C and at ``temperature_ratio``
  T_b = 10 T_b otherwise, C = (e - warmup + 1) / (E - warmup) rising linearly to 1 (0 in warm-up,
  so its steps run at T = 10); the alpha step and the weight step of a step share the draw
  (``jnas.search.temperature.mixed_sparsity``; the code draws an epoch's vector at the epoch's
  start, jnas per step from the seed's key: the same distribution);
* DARTS first order otherwise, alpha step first, plain softmax(alpha / T) gradients (no bypass);
* the genotype: DARTS's rule on softmax(alpha / T_b) rounded to 4 decimals, equally strong edges
  going to the later (higher-index) input, as the code ranks the reversed input list; eval-mode
  validation at T_b / 10 (the code's ``infer(..., temp / 10)``).

Settings from the code: 7 ops (no ``none``), 50 epochs, batch 80, a constant weight rate 0.05
(lr_min = lr), momentum 0.9, wd 3e-4, clip 5, alpha Adam 3e-4 without weight decay. The paper's
own values and results were not available. The NAS-Bench-201 fork (w-step first, temperatures
[11 T, T], T = 1.3e-3 then 6e-4) and LHD's re-implementation (warm-up 5, T = 1.5e-3) are settings:
``temp_warmup_epochs``, ``base_temperature``, ``temperature_ratio``. The code's random validation
batch per step and its random seed per run are not reproduced (jnas: epoch passes, given seeds).
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from jnas import space
from jnas.search import base, darts, edge_weights as ew, select, temperature as tmp
from jnas.search.registry import MethodSpec

__all__ = ["SPDartsConfig", "parts", "build", "SPEC"]


@dataclasses.dataclass(frozen=True)
class SPDartsConfig(base.SearchConfig):
  """[SP ``SP-DARTS/train_search_mf.py``]. base_temperature T_b, temperature_ratio (the other
  temperature is ratio T_b), temp_warmup_epochs (T_b = 1, C = 0), eval_temperature_factor (eval
  at factor T_b), round_decimals and ties of the DARTS rule."""

  primitives: tuple[str, ...] = tuple(space.PRIMITIVES[1:])
  epochs: int = 50
  batch_size: int = 80
  w_lr: float = 0.05
  w_lr_min: float = 0.05
  a_weight_decay: float = 0.0
  order: str = "first"
  base_temperature: float = 1e-3
  temperature_ratio: float = 10.0
  temp_warmup_epochs: int = 1
  eval_temperature_factor: float = 0.1
  round_decimals: int | None = 4
  ties: str = "higher"

  def __post_init__(self):
    super().__post_init__()
    if self.base_temperature <= 0 or self.temperature_ratio <= 0 or self.eval_temperature_factor <= 0:
      raise ValueError("base_temperature, temperature_ratio and eval_temperature_factor must be > 0")
    if not 0 <= self.temp_warmup_epochs < self.epochs:
      raise ValueError(f"temp_warmup_epochs must be in [0, epochs), got {self.temp_warmup_epochs}")
    if self.ties not in ("lower", "higher"):
      raise ValueError(f"unknown ties {self.ties!r}; use 'lower' or 'higher'")


def parts(config: SPDartsConfig, steps_per_epoch: int) -> base.Parts:
  c = config
  p = darts.parts(c, steps_per_epoch)
  cells = ("normal", "reduce")

  def draw(key, step):
    return tmp.mixed_sparsity(key, step // steps_per_epoch, epochs=c.epochs, warmup=c.temp_warmup_epochs,
                              base=c.base_temperature, ratio=c.temperature_ratio)

  def init_arch(key):
    k_a, k_t = jax.random.split(key)
    return {**darts.init_arch(c)(k_a), tmp.TEMPERATURE: draw(k_t, 0)}

  def mix(arch, key, step):
    return {t: ew.tempered_softmax(arch[t], tmp.current(arch)) for t in cells}

  def eval_mix(arch):
    T = c.eval_temperature_factor * tmp.current(arch, "T_base")
    return {t: ew.tempered_softmax(arch[t], T) for t in cells}

  def derive(arch, data=None):
    T = tmp.current(arch, "T_base")
    w = {t: jax.device_get(ew.tempered_softmax(arch[t], T)) for t in cells}
    return select.darts_top2(w, c.primitives, decimals=c.round_decimals, ties=c.ties)

  def metrics(arch, step):
    state = arch[tmp.TEMPERATURE]
    return {**darts.entropy_metrics(mix(arch, None, step)), "temperature": state["T"], "sparse_share": state["C"]}

  return p._replace(init_arch=init_arch, mix=mix, eval_mix=eval_mix, derive=derive, metrics=metrics,
                    post_step=lambda arch, key, step: {**arch, tmp.TEMPERATURE: draw(key, step)},
                    a_tx=optax.masked(p.a_tx, tmp.frozen_leaves))


def build(config: SPDartsConfig, steps_per_epoch: int) -> base.Search:
  return base.single_stage("sp-darts", config, base.compose(parts(config, steps_per_epoch), config, steps_per_epoch))


SPEC = MethodSpec(
    name="sp-darts", config=SPDartsConfig, build=build,
    paper="Zhang, Ding. Robustifying DARTS by Eliminating Information Bypass Leakage via Explicit Sparse "
          "Regularization (SP-DARTS). ICDM 2021, arXiv 2306.06858",
    changes="softmax(alpha / T) at T = 1e-3 or 1e-2 drawn per step, the small one ever more often; constant "
            "weight lr 0.05; 7 ops")
