"""SNAS (Xie, Zheng, Liu, Lin, ICLR 2019: "SNAS: Stochastic Neural Architecture Search").

Each edge mixes its ops with a relaxed one-hot sample (concrete distribution), drawn once per
forward and cell type [SNAS-Series ``SNAS/model_search.py`` ``_get_categ_mask``]:

  Z_e = softmax((log alpha_e + G_e) / tau),   node_j = sum_{e into j} sum_k Z_{e,k} o_k(x_e)

with log alpha the parameter (init N(1, 0.01)). Weights and alphas train *together* on the
training set (single level): one backward of

  L = CE(f(x_train; w, Z)) + lambda R(Z),
  R = sum_{normal cells} sum_e r_e / 6 + ratio sum_{reduce cells} sum_e r_e / 2,
  r_e = (log c_size + log c_flops + log c_mac) / 3,  c_x = sum_k Z_{e,k} cost_x[cell, e, k]

(|c_x| < 1 counts as 1, with no gradient; the divisors 6 and 2 are the code's constants, whatever
the number of cells) [``train_search.py`` l. 425-452]. The cost tables are the code's per-op
formulas (``SNAS/operations.py``) for each cell's channels and output size, built here on the host
from the network plan and ``image_size``. Updates: w by SGD (0.025 -> 0.001 cosine, momentum 0.9,
wd 3e-4, clip 5), alpha by plain SGD (lr 3e-4, no momentum, no weight decay, clip 10), the
single-GPU code's choice (``a_optimizer='adam'`` with wd 1e-3 is its distributed variant).
Drop path 0.3 on every edge output in the search. Temperature: tau_e = max(tau_min, (1 - (e+1)/150)
(tau_0 - tau_min) + tau_min), the scheduler stepped at the start of each epoch and its 150
hard-coded (``tau_epochs``).

Derivation [``genotype_edge_all``]: every edge keeps its argmax op, ``none`` included, so node j
has j + 2 inputs (``Genotype`` with ``normal_degree``); ``derive_rule='darts'`` gives a DARTS top-2
cell instead.

Defaults: the README's command (150 epochs, batch 64, C=16, 8 cells, the full training set,
``--resource_lambda 1.5e-3``; the code's own default lambda for this setting is 1e-2). Which lambda
gives the paper's "mild / moderate / aggressive" cells: not found. Eval-mode validation here uses
softmax(log alpha) (the code samples Z there too).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jnas import space
from jnas.search import base, edge_weights as ew, select
from jnas.search.darts import entropy_metrics
from jnas.search.registry import MethodSpec
from jnas.genotype import derive_genotype

__all__ = ["SNASConfig", "cost_tables", "resource_penalty", "temperature", "parts", "build", "SPEC"]


@dataclasses.dataclass(frozen=True)
class SNASConfig(base.SearchConfig):
  """SNAS settings (SNAS-Series README command and code; see the module docstring)."""

  epochs: int = 150
  train_portion: float = 1.0
  a_optimizer: str = "sgd"
  a_lr: float = 3e-4
  a_weight_decay: float = 0.0
  a_grad_clip: float | None = 10.0
  tau0: float = 1.0
  tau_min: float = 0.03
  tau_epochs: int = 150
  resource_lambda: float = 1.5e-3
  resource_ratio: float = 1.0
  normal_divisor: float = 6.0
  reduce_divisor: float = 2.0
  image_size: int = 32
  drop_path_prob: float = 0.3
  loc_mean: float = 1.0
  loc_std: float = 0.01
  derive_rule: str = "edge_all"

  DERIVE_RULES = ("edge_all", "darts")


def temperature(config: SNASConfig, epoch):
  """The code's schedule, stepped at the start of epoch e: (1 - (e + 1) / 150) (tau_0 - min) + min."""
  t = (1.0 - (epoch + 1.0) / config.tau_epochs) * (config.tau0 - config.tau_min) + config.tau_min
  return jnp.maximum(t, config.tau_min)


def _op_costs(name: str, C: int, H: int, stride: int) -> tuple[float, float, float]:
  """(size, flops, mac) of one candidate op on C channels, input side H [SNAS operations.py]."""
  y = H if stride == 1 else H // 2
  y2 = y * y
  if name == "none":
    return 0.0, 0.0, 0.0
  if name in ("max_pool_3x3", "avg_pool_3x3"):
    return 0.0, 9.0 * y2 * C, (2.0 if stride == 1 else 5.0) * y2 * C
  if name == "skip_connect":
    if stride == 1:
      return 0.0, 0.0, 2.0 * C * H * H
    size = 2.0 * C * (C // 2)
    return size, size * y2, 2.0 * y2 * (4 * C + C // 2) + size
  if name.startswith("sep_conv"):
    k = int(name[-1])
    size = 2.0 * C * k * k + 2.0 * C * C
    return size, size * y2, y2 * ((7 if stride == 1 else 10) * C + C) + size
  if name.startswith("dil_conv"):
    k = int(name[-1])
    size = 1.0 * C * k * k + C * C
    return size, size * y2, y2 * ((3 if stride == 1 else 6) * C + C) + size
  raise ValueError(f"SNAS has no resource cost for op {name!r} (the DARTS ops only)")


def cost_tables(net, image_size: int) -> list[tuple[str, np.ndarray]]:
  """Per cell: (cell type, (3, E, n_ops) costs size / flops / mac) for the net's plan."""
  out, H = [], image_size
  for spec in net.plan():
    t = np.zeros((3, space.num_edges(net.steps), len(net.primitives)))
    for row, (src, _) in enumerate(space.edges(net.steps)):
      stride = 2 if spec.reduction and src < space.NUM_INPUTS else 1
      for o, name in enumerate(net.primitives):
        t[:, row, o] = _op_costs(name, spec.C, H, stride)
    out.append(("reduce" if spec.reduction else "normal", t))
    if spec.reduction:
      H //= 2
  return out


def resource_penalty(tables, weights, ratio: float = 1.0, normal_divisor: float = 6.0,
                     reduce_divisor: float = 2.0):
  """R of the module docstring, from ``cost_tables`` and the edge weights Z."""
  total = {"normal": 0.0, "reduce": 0.0}
  for t, table in tables:
    c = jnp.einsum("ek,xek->xe", weights[t], jnp.asarray(table, weights[t].dtype))  # (3, E)
    c = jnp.where(jnp.abs(c) < 1.0, jnp.ones_like(c), c)
    total[t] = total[t] + jnp.sum(jnp.mean(jnp.log(jnp.abs(c)), axis=0))
  return total["normal"] / normal_divisor + ratio * total["reduce"] / reduce_divisor


def parts(config: SNASConfig, steps_per_epoch: int) -> base.Parts:
  c = config
  schedule = base.lr_schedule(c, steps_per_epoch)
  net = base.network(c, edge_drop_path=c.drop_path_prob > 0)
  tables = cost_tables(net, c.image_size)

  def init_arch(key):
    shape = (space.num_edges(c.steps), len(c.primitives))
    k1, k2 = jax.random.split(key)
    return {"normal": c.loc_mean + c.loc_std * jax.random.normal(k1, shape),
            "reduce": c.loc_mean + c.loc_std * jax.random.normal(k2, shape)}

  def tau(step):
    return temperature(c, (step // steps_per_epoch).astype(jnp.float32))

  def mix(arch, key, step):
    return ew.per_cell_type(lambda k, a: ew.gumbel_softmax(k, a, tau(step)), arch, key)

  def eval_mix(arch):
    return ew.per_cell_type(ew.softmax, arch)

  def penalty(arch, weights, step=0):
    if not c.resource_lambda:
      return 0.0
    return c.resource_lambda * resource_penalty(tables, weights, c.resource_ratio, c.normal_divisor,
                                                c.reduce_divisor)

  def derive(arch, data=None):
    if c.derive_rule == "darts":
      return derive_genotype(arch, primitives=c.primitives, steps=c.steps)
    probs = {t: np.asarray(jax.nn.softmax(jnp.asarray(a), -1)) for t, a in arch.items()}
    return select.edge_all(probs, c.primitives)

  def metrics(arch, step):
    w = eval_mix(arch)
    return {"tau": tau(step), "resource": resource_penalty(tables, w, c.resource_ratio, c.normal_divisor,
                                                           c.reduce_divisor), **entropy_metrics(w)}

  return base.Parts(net=net, init_arch=init_arch, mix=mix, eval_mix=eval_mix, derive=derive,
                    w_tx=base.weight_tx(c, schedule), a_tx=base.arch_tx(c), schedule=schedule,
                    rates=lambda step: {"drop_path_rate": c.drop_path_prob}, penalty=penalty, metrics=metrics)


def build(config: SNASConfig, steps_per_epoch: int) -> base.Search:
  return base.single_stage("snas", config, base.compose(parts(config, steps_per_epoch), config, steps_per_epoch,
                                                        order="single_level"))


SPEC = MethodSpec(
    name="snas", config=SNASConfig, build=build,
    paper="Xie, Zheng, Liu, Lin. SNAS: Stochastic Neural Architecture Search. ICLR 2019",
    changes="soft Gumbel-softmax samples, tau 1 -> 0.03; single level on all training data; resource penalty; "
            "every edge kept",
    cpu={})
