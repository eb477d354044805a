"""NSGA-Net's genetic algorithm on the micro space (Lu et al., GECCO 2019: "NSGA-Net: Neural
Architecture Search using Multi-Objective Genetic Algorithm"; code ianwhale/nsga-net on pymoo 0.3.0,
as NAS-Benchmark ran it), here on pymoo 0.6's NSGA-II.

Encoding [NSGA-Net ``search/micro_encoding.py``, ``search/evolution_search.py``]: an integer vector
of n_var = 4 B 2 = 40 (B = 5 blocks), the normal cell then the reduce cell, each block
``[op_1, in_1, op_2, in_2]`` (op first). op in [0, n_ops - 1] (``NSGA_OPS``); block b's inputs in
[0, b + 1] (0, 1 the cell inputs, 2 + j block j). Both inputs may be equal. jnas's arc is
``{"inputs": (2, B, 2), "ops": (2, B, 2)}`` (cell type, block, branch): ``vector_to_arc`` /
``arc_to_vector``.

The search (objectives minimised, e.g. f_1 = 100 - valid accuracy, f_2 = MFLOPs):

* initial population: uniform over the integers in [xl, xu] (pymoo ``IntegerRandomSampling``; 0.3.0
  drew rint(U(xl - 0.5, xu + 0.5 - 1e-16)), the same distribution), then a survival pass that sets
  rank and crowding;
* binary tournament: the dominating individual wins, else the larger crowding distance, else a
  random pick (pymoo ``nsga2.binary_tournament``, ``comp_by_dom_and_crowding``, the same rule as
  NSGA-Net's ``binary_tournament``);
* 2-point crossover, always applied (``TwoPointCrossover(prob=1.0)``; 0.3.0 has no crossover
  probability): cut points r_1 < r_2 distinct from 1 .. n_var - 1, genes in [r_1, r_2) swapped,
  2 parents -> 2 children;
* polynomial mutation, eta = 3, each gene with probability 1 / n_var, on the bounds widened to
  [xl - 0.5, xu + 0.5 - 1e-16], then rint (``IntegerPolynomialMutation``: pymoo 0.6's ``mut_pm``
  with 0.3.0's widening, which 0.6's ``PM`` + ``RoundingRepair`` lacks; without it the end values
  of each gene get half the mass of the inner ones). The result is also clipped to [xl, xu]:
  xu + 0.5 - 1e-16 is xu + 0.5 in float64 for xu >= 1 and rint rounds half to even, so a draw
  exactly on the widened bound of an odd xu would leave the range (probability ~0);
* duplicate elimination on the raw vectors, against the population and the offspring so far
  (genotype-equivalent vectors count as distinct), at most 100 mating rounds per generation;
* survival: ``RankAndCrowding``, fronts filled in order, the split front cut by descending crowding
  with random tie order; crowding is NSGA-Net's ``calc_crowding_distance`` (``nsganet_crowding``),
  which differs from pymoo 0.6's ``cd`` on ties (see there);
* termination ``("n_gen", n_gens)`` with the initial population as generation 1:
  pop_size + (n_gens - 1) n_offspring = 40 + 29 * 20 = 620 evaluations by default.

Differences from the original that remain: pymoo 0.6's random stream (one ``np.random.Generator``
seeded by ``config.seed``) cannot reproduce 0.3.0's global-numpy stream, so runs are deterministic
given the seed but not the original's runs; pymoo 0.6 cuts an over-full mating round to its first
children. Duplicates are removed against the current population only (as in 0.3.0), so a vector
that left the population can be bred again: NSGA-Net retrained it, ``run_nsga`` returns its cached
objectives (so a default run evaluates slightly fewer than 620 distinct vectors).

``run_nsga`` drives the algorithm by ask/tell: ``evaluate_batch`` is called once per generation
with the vectors never evaluated before (the initial population, then each generation's offspring),
so a whole generation can be trained in one compiled program. Every evaluation is kept in an
``NSGAHistory``; passing it back (``history=``) resumes: the run replays the same trajectory from
the cache and evaluates only new vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2, binary_tournament
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.core.variable import get
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.pm import PolynomialMutation, mut_pm
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.operators.selection.tournament import TournamentSelection
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from pymoo.operators.survival.rank_and_crowding.metrics import CrowdingDiversity
from pymoo.problems.static import StaticProblem
from pymoo.termination.max_gen import MaximumGenerationTermination
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

__all__ = ["NSGA_OPS", "NSGAConfig", "NSGAHistory", "NSGAResult", "IntegerPolynomialMutation", "bounds", "vector_to_arc",
           "arc_to_vector", "is_valid", "nsganet_crowding", "make_problem", "make_algorithm", "run_nsga", "pareto_front",
           "pick"]

NSGA_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
            "dil_conv_5x5", "sep_conv_7x7", "conv_7x1_1x7")
N_OBJ = 2
CROWDING_INF = 1e14


@dataclasses.dataclass(frozen=True)
class NSGAConfig:
  """NSGA-Net's search settings; the defaults are NAS-Benchmark's README run.

  | item | NB README (default here) | ``evolution_search.py`` default | paper [App. A.1] |
  |---|---|---|---|
  | pop_size | 40 | 40 | 40 |
  | n_gens | 30 | 50 ("should have been set to 20") | 30 |
  | n_offspring | 20 | 40 | 20 |
  | n_blocks / n_ops | 5 / 9 | 5 / 9 | 5 / 9 |
  | seed | 0 (not passed) | 0 | "different search seed" |

  ``mutation_prob`` None means 1 / n_var. ``crowding``: "nsganet" (NSGA-Net's
  ``calc_crowding_distance``) or "pymoo" (pymoo 0.6's ``cd``).
  """
  pop_size: int = 40
  n_gens: int = 30
  n_offspring: int = 20
  n_blocks: int = 5
  n_ops: int = 9
  mutation_eta: float = 3.0
  mutation_prob: float | None = None
  crossover_prob: float = 1.0
  crowding: str = "nsganet"
  seed: int = 0

  @property
  def n_var(self) -> int:
    return 4 * self.n_blocks * 2

  @property
  def n_evals(self) -> int:
    """Evaluations of a full run: pop_size + (n_gens - 1) n_offspring (fewer if duplicates run out)."""
    return self.pop_size + (self.n_gens - 1) * self.n_offspring


# ------------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------------


def bounds(n_blocks: int = 5, n_ops: int = 9) -> tuple[np.ndarray, np.ndarray]:
  """(xl, xu), each (4 B 2,) int: per block [op, in, op, in] with op in [0, n_ops - 1] and
  block b's inputs in [0, b + 1]; the reduce cell repeats the normal cell's bounds."""
  xu_cell = np.array([[n_ops - 1, b + 1, n_ops - 1, b + 1] for b in range(n_blocks)], np.int64).reshape(-1)
  xu = np.concatenate([xu_cell, xu_cell])
  return np.zeros_like(xu), xu


def vector_to_arc(x, n_blocks: int = 5) -> dict[str, np.ndarray]:
  """40-vector -> {"inputs", "ops"}, each int (2, B, 2): x reshaped (cell, block, branch, [op, in])."""
  x = np.asarray(x)
  if x.shape != (4 * n_blocks * 2,):
    raise ValueError(f"expected a vector of {4 * n_blocks * 2} ints, got shape {x.shape}")
  g = x.astype(np.int64).reshape(2, n_blocks, 2, 2)
  return {"inputs": g[..., 1].copy(), "ops": g[..., 0].copy()}


def arc_to_vector(arc: Mapping[str, np.ndarray]) -> np.ndarray:
  """{"inputs", "ops"} (2, B, 2) -> the (4 B 2,) int vector, blocks [op_1, in_1, op_2, in_2]."""
  ops, inputs = np.asarray(arc["ops"], np.int64), np.asarray(arc["inputs"], np.int64)
  if ops.shape != inputs.shape or ops.ndim != 3 or ops.shape[0] != 2 or ops.shape[2] != 2:
    raise ValueError(f"expected ops and inputs of shape (2, B, 2), got {ops.shape} and {inputs.shape}")
  return np.stack([ops, inputs], axis=-1).reshape(-1)


def is_valid(x, n_blocks: int = 5, n_ops: int = 9):
  """Whether x (n_var,) is an integer vector within ``bounds``; for x (..., n_var) a bool array."""
  x = np.asarray(x)
  xl, xu = bounds(n_blocks, n_ops)
  if x.shape[-1:] != xl.shape:
    return False if x.ndim <= 1 else np.zeros(x.shape[:-1], bool)
  if np.issubdtype(x.dtype, np.integer):
    integral = np.ones(x.shape, bool)
  elif np.issubdtype(x.dtype, np.floating):
    integral = np.isfinite(x) & (x == np.rint(x))
  else:
    return False if x.ndim == 1 else np.zeros(x.shape[:-1], bool)
  ok = np.all(integral & (x >= xl) & (x <= xu), axis=-1)
  return bool(ok) if x.ndim == 1 else ok


# ------------------------------------------------------------------------------------------------
# Operators
# ------------------------------------------------------------------------------------------------


class IntegerPolynomialMutation(PolynomialMutation):
  """pymoo 0.3.0's ``PolynomialMutation(var_type=int)`` on pymoo 0.6's ``mut_pm``: the bounds
  widened to [xl - 0.5, xu + 0.5 - 1e-16], Deb's polynomial perturbation with index eta on each
  gene chosen with probability ``prob_var``, then rint (clipped to [xl, xu])."""

  def _do(self, problem, X, params=None, *args, random_state=None, **kwargs):
    X = np.asarray(X, float)
    eta = get(self.eta, size=len(X))
    prob_var = self.get_prob_var(problem, size=len(X))
    xl, xu = np.asarray(problem.xl, float), np.asarray(problem.xu, float)
    Y = mut_pm(X, xl - 0.5, xu + 0.5 - 1e-16, eta, prob_var, at_least_once=self.at_least_once,
               random_state=random_state)
    return np.clip(np.rint(Y), xl, xu).astype(np.int64)


def nsganet_crowding(F) -> np.ndarray:
  """NSGA-Net's crowding distance [NSGA-Net ``search/nsganet.py`` ``calc_crowding_distance``, as
  pymoo 0.3.0]: per objective m sort the points; d_m(i) = (gap to the previous + gap to the next)
  / (max_m - min_m), where a zero gap (a tied value) takes the nearest non-zero gap on the same side,
  so tied points share their group's outer gaps, and an end point's outer gap is inf; an objective
  with zero range adds 0. crowding(i) = mean_m d_m(i), inf -> 1e14; a front of <= 2 points gets
  1e14. pymoo 0.6's ``cd`` keeps the zero gaps (tied points look crowded) and uses inf."""
  F = np.asarray(F, float)
  n, n_obj = F.shape
  if n <= 2:
    return np.full(n, CROWDING_INF)
  cd = np.zeros(n)
  for m in range(n_obj):
    order = np.argsort(F[:, m], kind="mergesort")
    v = F[order, m]
    span = v[-1] - v[0]
    if span == 0:
      continue
    gap = np.concatenate([[np.inf], np.diff(v), [np.inf]])  # gap[k] = v[k] - v[k - 1]
    nz = gap != 0
    last = np.maximum.accumulate(np.where(nz, np.arange(n + 1), 0))  # forward fill of non-zero gaps
    nxt = np.minimum.accumulate(np.where(nz, np.arange(n + 1), n)[::-1])[::-1]  # backward fill
    cd[order] += (gap[last[:-1]] + gap[nxt[1:]]) / span
  cd /= n_obj
  cd[np.isinf(cd)] = CROWDING_INF
  return cd


class _NSGANetCrowding(CrowdingDiversity):
  """``nsganet_crowding`` as pymoo's survival crowding (no duplicate filtering)."""

  def _do(self, F, n_remove=None):
    return nsganet_crowding(F)


def make_problem(xl, xu) -> Problem:
  """The integer pymoo ``Problem`` of the bounds (objectives are supplied by ``run_nsga``)."""
  xl, xu = np.asarray(xl, np.int64), np.asarray(xu, np.int64)
  return Problem(n_var=len(xl), n_obj=N_OBJ, xl=xl, xu=xu, vtype=int)


def make_algorithm(config: NSGAConfig = NSGAConfig(), n_var: int | None = None) -> NSGA2:
  """pymoo 0.6 NSGA-II with NSGA-Net's operators (module docstring); n_var defaults to config's."""
  n_var = config.n_var if n_var is None else n_var
  prob_var = 1.0 / n_var if config.mutation_prob is None else config.mutation_prob
  if config.crowding == "nsganet":
    crowding = _NSGANetCrowding()
  elif config.crowding == "pymoo":
    crowding = "cd"
  else:
    raise ValueError(f"unknown crowding {config.crowding!r}: 'nsganet' or 'pymoo'")
  return NSGA2(
      pop_size=config.pop_size,
      n_offsprings=config.n_offspring,
      sampling=IntegerRandomSampling(),
      selection=TournamentSelection(func_comp=binary_tournament, pressure=2),
      crossover=TwoPointCrossover(prob=config.crossover_prob),
      mutation=IntegerPolynomialMutation(prob=1.0, prob_var=prob_var, eta=config.mutation_eta),
      survival=RankAndCrowding(crowding_func=crowding),
      eliminate_duplicates=True)


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NSGAHistory:
  """Every evaluated vector once: X (n, n_var) int, F (n, n_obj) float and the generation that
  first evaluated it (1 = the initial population). ``as_dict`` / ``from_dict`` give plain lists (JSON)."""
  X: np.ndarray
  F: np.ndarray
  generation: np.ndarray

  def __len__(self) -> int:
    return len(self.X)

  @classmethod
  def empty(cls, n_var: int, n_obj: int = N_OBJ) -> "NSGAHistory":
    return cls(np.zeros((0, n_var), np.int64), np.zeros((0, n_obj)), np.zeros(0, np.int64))

  def as_dict(self) -> dict[str, list]:
    return {"X": self.X.tolist(), "F": self.F.tolist(), "generation": self.generation.tolist()}

  @classmethod
  def from_dict(cls, d: Mapping[str, Sequence]) -> "NSGAHistory":
    X = np.asarray(d["X"], np.int64)
    F = np.asarray(d["F"], float)
    gen = np.asarray(d["generation"], np.int64)
    if X.ndim != 2 or F.ndim != 2 or len(F) != len(X) or gen.shape != (len(X),):
      raise ValueError(f"inconsistent history: X {X.shape}, F {F.shape}, generation {gen.shape}")
    return cls(X, F, gen)


@dataclasses.dataclass(frozen=True)
class NSGAResult:
  """A run: the history, the final population and its non-dominated front (indices into the
  history), and each generation's infills (indices into the history, in the order evaluated)."""
  history: NSGAHistory
  population: np.ndarray
  front: np.ndarray
  generations: tuple[np.ndarray, ...]

  @property
  def n_gen(self) -> int:
    return len(self.generations)


class _Cache:
  """The history as a vector -> row cache."""

  def __init__(self, history: NSGAHistory):
    self.X, self.F, self.gen = list(history.X), list(history.F), list(history.generation)
    self.n_var, self.n_obj = history.X.shape[1], history.F.shape[1]
    self.row = {}
    for i, x in enumerate(history.X):
      self.row.setdefault(self._key(x), i)

  @staticmethod
  def _key(x) -> bytes:
    return np.asarray(x, np.int64).tobytes()

  def rows(self, X) -> np.ndarray:
    return np.array([self.row[self._key(x)] for x in X], np.int64)

  def evaluate(self, X: np.ndarray, evaluate_batch, generation: int) -> np.ndarray:
    """Rows of X in the history, calling evaluate_batch once on the vectors not yet in it."""
    new, seen = [], set()
    for x in X:
      k = self._key(x)
      if k not in self.row and k not in seen:
        seen.add(k)
        new.append(x)
    if new:
      Xn = np.stack(new).astype(np.int64)
      Fn = np.asarray(evaluate_batch(Xn.copy()), float)
      if Fn.shape != (len(Xn), self.n_obj):
        raise ValueError(f"evaluate_batch returned shape {Fn.shape}, expected {(len(Xn), self.n_obj)}")
      for x, f in zip(Xn, Fn):
        self.row[self._key(x)] = len(self.X)
        self.X.append(x)
        self.F.append(f)
        self.gen.append(generation)
    return self.rows(X)

  def history(self) -> NSGAHistory:
    if not self.X:
      return NSGAHistory.empty(self.n_var, self.n_obj)
    return NSGAHistory(np.stack(self.X).astype(np.int64), np.stack(self.F).astype(float),
                       np.asarray(self.gen, np.int64))


def run_nsga(evaluate_batch: Callable[[np.ndarray], np.ndarray], config: NSGAConfig = NSGAConfig(), *,
             history: NSGAHistory | Mapping | None = None,
             callback: Callable[[int, NSGAHistory], None] | None = None,
             bounds_override: tuple[np.ndarray, np.ndarray] | None = None) -> NSGAResult:
  """NSGA-Net's search by ask/tell, ``evaluate_batch(X (n, n_var) int) -> F (n, 2)`` (both
  minimised) called once per generation on the vectors not in the history (skipped when none is
  new; a vector bred again is served from the history). ``callback(generation, history)`` runs
  after each generation (1 = the initial population); ``history`` (an ``NSGAHistory`` or its
  ``as_dict``) resumes a run of the same config: the same trajectory is replayed from the cache and
  only new vectors are evaluated. ``bounds_override`` (xl, xu) replaces the micro-space bounds (any
  integer problem, e.g. a test's)."""
  xl, xu = bounds(config.n_blocks, config.n_ops) if bounds_override is None else bounds_override
  problem = make_problem(xl, xu)
  if history is None:
    history = NSGAHistory.empty(problem.n_var)
  elif not isinstance(history, NSGAHistory):
    history = NSGAHistory.from_dict(history)
  if history.X.shape[1] != problem.n_var or history.F.shape[1] != N_OBJ:
    raise ValueError(f"history has {history.X.shape[1]} variables and {history.F.shape[1]} objectives, "
                     f"the problem {problem.n_var} and {N_OBJ}")
  cache = _Cache(history)
  algorithm = make_algorithm(config, problem.n_var)
  algorithm.setup(problem, termination=MaximumGenerationTermination(config.n_gens), seed=config.seed, verbose=False)
  generations = []
  while algorithm.has_next():
    generation = algorithm.n_gen if algorithm.is_initialized else 1
    pop = algorithm.ask()
    if pop is None:  # the mating found no new vector: pymoo forces termination
      break
    X = np.asarray(pop.get("X"))
    if not np.all(X == np.rint(X)):
      raise RuntimeError("pymoo produced a non-integer candidate")
    rows = cache.evaluate(X.astype(np.int64), evaluate_batch, generation)
    Evaluator().eval(StaticProblem(problem, F=np.stack([cache.F[r] for r in rows])), pop,
                     skip_already_evaluated=False)
    algorithm.tell(infills=pop)
    generations.append(rows)
    if callback is not None:
      callback(generation, cache.history())
  hist = cache.history()
  population = cache.rows(np.asarray(algorithm.pop.get("X")).astype(np.int64))
  front = population[pareto_front(hist.F[population])]
  return NSGAResult(hist, population, front, tuple(generations))


# ------------------------------------------------------------------------------------------------
# The final front
# ------------------------------------------------------------------------------------------------


def pareto_front(F) -> np.ndarray:
  """Indices of the non-dominated rows of F (n, n_obj), minimised (pymoo ``NonDominatedSorting``)."""
  F = np.asarray(F, float)
  if len(F) == 0:
    return np.zeros(0, np.int64)
  return np.sort(np.asarray(NonDominatedSorting().do(F, only_non_dominated_front=True), np.int64))


def pick(front, F, rule: str = "accuracy") -> int:
  """One architecture from the front (indices into F). NB's rule is not documented, so the default
  "accuracy" takes the best f_1 (ties: smaller f_2). "knee": on the front normalised to [0, 1]
  per objective (ideal -> 0, nadir -> 1), the point farthest below the hyperplane sum f = 1 through
  the extremes, i.e. the largest 1 - sum_m f_m (ties: the accuracy rule)."""
  front = np.asarray(front, np.int64)
  if len(front) == 0:
    raise ValueError("empty front")
  Ff = np.asarray(F, float)[front]
  by_accuracy = np.lexsort(Ff.T[::-1])  # f_1, then f_2, ...
  if rule == "accuracy":
    return int(front[by_accuracy[0]])
  if rule == "knee":
    lo, hi = Ff.min(0), Ff.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    score = 1.0 - ((Ff - lo) / span).sum(1)
    rank = np.empty(len(front), np.int64)
    rank[by_accuracy] = np.arange(len(front))
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return int(front[best[np.argmin(rank[best])]])
  raise ValueError(f"unknown rule {rule!r}: 'accuracy' or 'knee'")
