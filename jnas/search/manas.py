"""MANAS and MANAS-LS (Carlucci, Esperança, Singh, Yang, Gabillon, Xu, Chen, Wang, arXiv 1909.01051:
"MANAS: Multi-Agent Neural Architecture Search").

Every edge has an agent, a multi-armed bandit over the K ops. Round t [MA-P Alg. 1]: every agent
samples an op a_t^i ~ pi_t^i (an architecture Z_t, one-hot per edge); the shared weights of the
sampled ops take one SGD step on a train batch; the architecture's loss L_t^val on a val batch at
the new weights is the agents' only feedback (``compose(order='bandit')``). Only the sampled op of
an edge runs (``SearchNetwork(single_path=True)``), so the supernet costs about 1/K of DARTS's.

* ``variant='manas'`` (EXP3-style, [MA-P eq. 6]): credit B^i[k] += r_t 1{a^i_t = k} / pi^i_t[k]
  with the reward r_t = b - L^val_t, and pi^i = (1 - gamma) softmax(B^i / T) + gamma / K. As
  printed, eq. 6 puts +eta on an accumulated *loss*, which would favour bad ops; jnas uses the
  reward r = b - L. NAS-Benchmark's settings [YANG A.1] map onto it as: "reward baseline 5" = b,
  "gamma 0.1" = gamma (EXP3's uniform exploration), "Boltzmann temperature 1000 -> 200" = T; all
  three mappings are jnas's inference (NB's code is not public), as is the decay shape: linear
  per epoch by default (``temperature_decay='exponential'``: geometric per epoch).
* ``variant='manas-ls'`` ([MA-P §5.1]): the loss is modelled as L^val_s = beta^T Z_s over the
  one-hot vector Z_s of all choices, beta = argmin sum_s (L_s - beta^T Z_s)^2, kept as Z^T Z and
  Z^T L with a small ridge (``ridge``; the paper states none: an inference for stability); the
  agents sample by Zipf's law over the ops ranked by beta^i (smallest loss contribution first):
  pi^i[k] = 1 / (rank^i(k) H_K), H_K = 1 + 1/2 + ... + 1/K. How NB combined Boltzmann sampling with
  MANAS-LS was not found; jnas's MANAS-LS uses Zipf alone.
* recommendation: the paper samples the final architecture from pi_{T+1} [MA-P Alg. 1 line 8]
  (``recommend='sample'``, default; the policy at the last temperature, from the seed's own
  key) rather than its argmax (``recommend='argmax'``). The paper does not say how its cells meet
  the DARTS genotype's two inputs per node; jnas draws each edge's op among the non-``none`` ops
  (renormalised pi) and keeps, per node, the 2 edges whose drawn op has the largest pi.
* cells: agents per cell type (2 x 14), the cells of a type sharing them, so the result is a DARTS
  genotype that ``train_genotypes`` retrains. The paper's agents are per cell (unique cells,
  8 x 14 agents for 8 cells); jnas's supernet shares a cell's weights per type: not supported.

Defaults: NAS-Benchmark's settings for CIFAR-10 (8 search cells, 50 epochs, batch 64, lr 0.025 ->
0.001 cosine; no architecture optimiser), half the training set as validation [MA-P §6].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnas import space
from jnas.genotype import Genotype
from jnas.search import base
from jnas.search.registry import MethodSpec

__all__ = ["ManasConfig", "temperature", "exp3_policy", "exp3_feedback", "zipf_policy", "ls_feedback", "build",
           "SPEC", "SPEC_LS"]

VARIANTS = ("manas", "manas-ls")
CELLS = ("normal", "reduce")


@dataclasses.dataclass(frozen=True)
class ManasConfig(base.SearchConfig):
  """MANAS settings (NAS-Benchmark's, as mapped in the module docstring)."""

  variant: str = "manas"
  reward_baseline: float = 5.0
  gamma: float = 0.1
  temperature_start: float = 1000.0
  temperature_end: float = 200.0
  temperature_decay: str = "linear"
  ridge: float = 1e-3
  recommend: str = "sample"

  def __post_init__(self):
    super().__post_init__()
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown MANAS variant {self.variant!r}; use one of {VARIANTS}")
    if self.temperature_decay not in ("linear", "exponential"):
      raise ValueError(f"unknown temperature_decay {self.temperature_decay!r}; use 'linear' or 'exponential'")
    if self.recommend not in ("sample", "argmax"):
      raise ValueError(f"unknown recommend {self.recommend!r}; use 'sample' or 'argmax'")
    if not 0 <= self.gamma < 1 or self.temperature_start <= 0 or self.temperature_end <= 0 or self.ridge < 0:
      raise ValueError("MANAS needs 0 <= gamma < 1, temperatures > 0 and ridge >= 0, got "
                       f"{self.gamma}, {self.temperature_start}, {self.temperature_end}, {self.ridge}")


def temperature(config: ManasConfig, epoch):
  """The Boltzmann temperature of ``epoch`` (traced): T_0 -> T_1 over the epochs."""
  c = config
  frac = jnp.asarray(epoch, jnp.float32) / max(c.epochs - 1, 1)
  if c.temperature_decay == "linear":
    return c.temperature_start + (c.temperature_end - c.temperature_start) * frac
  return c.temperature_start * (c.temperature_end / c.temperature_start) ** frac


def exp3_policy(credit, gamma, temp):
  """pi = (1 - gamma) softmax(credit / T) + gamma / K, per row."""
  K = credit.shape[-1]
  return (1 - gamma) * jax.nn.softmax(credit / temp, axis=-1) + gamma / K


def exp3_feedback(credit, choice, policy, reward):
  """credit[k] += reward 1{choice = k} / policy[k] (``choice``: one-hot rows)."""
  return credit + reward * choice / policy


def zipf_policy(beta):
  """pi[k] = 1 / (rank(k) H_K), ranks by ascending ``beta`` per row (ties: the lower index first)."""
  K = beta.shape[-1]
  ranks = jnp.argsort(jnp.argsort(beta, axis=-1, stable=True), axis=-1) + 1
  harmonic = sum(1.0 / k for k in range(1, K + 1))
  return 1.0 / (ranks * harmonic)


def ls_feedback(ZtZ, ZtL, z, loss, ridge):
  """The least-squares statistics after one more (z, loss) and the new beta = (Z^T Z + ridge I)^-1 Z^T L."""
  ZtZ = ZtZ + jnp.outer(z, z)
  ZtL = ZtL + z * loss
  beta = jnp.linalg.solve(ZtZ + ridge * jnp.eye(z.shape[0], dtype=z.dtype), ZtL)
  return ZtZ, ZtL, beta


def build(config: ManasConfig, steps_per_epoch: int) -> base.Search:
  c = config
  E, K = space.num_edges(c.steps), len(c.primitives)
  F = len(CELLS) * E * K
  schedule = base.lr_schedule(c, steps_per_epoch)
  ls = c.variant == "manas-ls"

  def init_arch(key):
    arch = {t: jnp.zeros((E, K), jnp.float32) for t in CELLS}
    arch["sample_key"] = jax.random.key_data(jax.random.fold_in(key, 7))
    if ls:
      arch.update(ZtZ=jnp.zeros((F, F), jnp.float32), ZtL=jnp.zeros((F,), jnp.float32))
    return arch

  def policy(arch, step):
    if ls:
      return {t: zipf_policy(arch[t]) for t in CELLS}
    temp = temperature(c, step // steps_per_epoch)
    return {t: exp3_policy(arch[t], c.gamma, temp) for t in CELLS}

  def mix(arch, key, step):
    """One op per edge from the agents' policies: one-hot (E, K) per cell type."""
    p = policy(arch, step)
    keys = jax.random.split(key, len(CELLS))
    return {t: jax.nn.one_hot(jax.random.categorical(k, jnp.log(p[t]), axis=-1), K)
            for k, t in zip(keys, CELLS)}

  def eval_mix(arch):  # the greedy architecture (the single-path supernet needs one-hot weights)
    p = policy(arch, c.epochs * steps_per_epoch - 1)
    return {t: jax.nn.one_hot(jnp.argmax(p[t], axis=-1), K) for t in CELLS}

  def feedback(arch, weights, val_loss, step):
    new = dict(arch)
    if ls:
      z = jnp.concatenate([weights[t].reshape(-1) for t in CELLS])
      new["ZtZ"], new["ZtL"], beta = ls_feedback(arch["ZtZ"], arch["ZtL"], z, val_loss, c.ridge)
      for i, t in enumerate(CELLS):
        new[t] = beta[i * E * K:(i + 1) * E * K].reshape(E, K)
      return new
    p = policy(arch, step)
    reward = c.reward_baseline - val_loss
    for t in CELLS:
      new[t] = exp3_feedback(arch[t], weights[t], p[t], reward)
    return new

  def metrics(arch, step):
    p = policy(arch, step)
    ent = jnp.mean(jnp.stack([-jnp.mean(jnp.sum(p[t] * jnp.log(p[t]), -1)) for t in CELLS]))
    out = {"policy_entropy": ent}
    if not ls:
      out["temperature"] = temperature(c, step // steps_per_epoch)
    return out

  def derive(arch, data=None):
    p = {t: np.asarray(v, np.float64) for t, v in jax.device_get(policy(arch, c.epochs * steps_per_epoch - 1)).items()}
    rng = np.random.default_rng(np.asarray(arch["sample_key"], np.uint32))
    return recommend(p, c.primitives, c.steps, rng if c.recommend == "sample" else None)

  parts = base.Parts(net=base.network(c, single_path=True), init_arch=init_arch, mix=mix, eval_mix=eval_mix,
                     derive=derive, w_tx=base.weight_tx(c, schedule), a_tx=optax.identity(), schedule=schedule,
                     metrics=metrics, feedback=feedback)
  return base.single_stage(c.variant, c, base.compose(parts, c, steps_per_epoch, order="bandit"))


def recommend(policy: dict, primitives, steps: int, rng: np.random.Generator | None) -> Genotype:
  """A DARTS genotype from the agents' policies: per edge an op other than ``none`` (drawn from
  the renormalised policy with ``rng``, or its argmax), per node the 2 edges whose op has the
  largest policy probability (ties: the lower input)."""
  prims = list(primitives)
  ok = np.array([p != "none" for p in prims])
  cells = {}
  for t in CELLS:
    p = np.where(ok, policy[t], 0.0)
    p = p / p.sum(-1, keepdims=True)
    ops = [int(rng.choice(len(prims), p=row)) if rng is not None else int(np.argmax(row)) for row in p]
    pairs = []
    for j in range(steps):
      inputs = list(range(j + space.NUM_INPUTS))
      strength = [p[space.edge_index(i, j), ops[space.edge_index(i, j)]] for i in inputs]
      for i in sorted(inputs, key=lambda i: -strength[i])[:2]:
        pairs.append((prims[ops[space.edge_index(i, j)]], i))
    cells[t] = tuple(pairs)
  concat = tuple(range(2, steps + 2))
  return Genotype(cells["normal"], concat, cells["reduce"], concat, concat_style="range")


@dataclasses.dataclass(frozen=True)
class ManasLSConfig(ManasConfig):
  variant: str = "manas-ls"


_PAPER = ("Carlucci, Esperança, Singh, Yang, Gabillon, Xu, Chen, Wang. MANAS: Multi-Agent Neural Architecture "
          "Search. arXiv 1909.01051")
SPEC = MethodSpec(
    name="manas", config=ManasConfig, build=build, paper=_PAPER,
    changes="a bandit per edge samples one op per step (single path); EXP3-style credit from the val loss")
SPEC_LS = MethodSpec(
    name="manas-ls", config=ManasLSConfig, build=build, paper=_PAPER,
    changes="MANAS with a least-squares loss model over all choices and Zipf sampling by rank")
