"""NSGA-Net's GA (jnas.search.nsga_ga): encoding, operators, front recovery, evaluation counts."""

import itertools
import zlib

import numpy as np
import pytest
from pymoo.core.population import Population
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance

from jnas.search import nsga_ga as ng

XL, XU = ng.bounds(5, 9)


def _random_vectors(n, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(XL, XU + 1, size=(n, len(XL)))


def _random_objective(calls=None, seen=None):
  """A cheap deterministic 'random' (f_1, f_2) per vector; records the batch sizes and vectors."""
  def evaluate(X):
    if calls is not None:
      calls.append(len(X))
    if seen is not None:
      for x in X:
        k = x.tobytes()
        assert k not in seen, "vector evaluated twice"
        seen.add(k)
    b = [x.astype(np.int64).tobytes() for x in X]
    return np.array([[zlib.crc32(s) % 10000 / 100, zlib.adler32(s) % 997] for s in b], float)
  return evaluate


# ---------------------------------------------------------------- 1. encoding


def test_bounds():
  assert ng.NSGA_OPS[0] == "max_pool_3x3" and ng.NSGA_OPS[8] == "conv_7x1_1x7" and len(ng.NSGA_OPS) == 9
  assert XL.shape == XU.shape == (40,) and np.all(XL == 0)
  cell = XU[:20].reshape(5, 4)
  np.testing.assert_array_equal(cell[:, [0, 2]], 8)  # ops
  np.testing.assert_array_equal(cell[:, 1], np.arange(1, 6))  # block b's inputs in [0, b + 1]
  np.testing.assert_array_equal(cell[:, 3], np.arange(1, 6))
  np.testing.assert_array_equal(XU[20:], XU[:20])  # reduce = normal
  assert ng.NSGAConfig().n_var == 40 and ng.NSGAConfig().n_evals == 620


def test_arc_round_trip():
  x = np.arange(40) % 2  # [op, in, op, in] = [0, 1, 0, 1]
  arc = ng.vector_to_arc(x)
  assert arc["ops"].shape == arc["inputs"].shape == (2, 5, 2)
  np.testing.assert_array_equal(arc["ops"], 0)
  np.testing.assert_array_equal(arc["inputs"], 1)
  x = np.zeros(40, int)
  x[20 + 4 * 3: 20 + 4 * 4] = [7, 4, 2, 0]  # reduce cell, block 3
  arc = ng.vector_to_arc(x)
  assert arc["ops"][1, 3].tolist() == [7, 2] and arc["inputs"][1, 3].tolist() == [4, 0]
  for v in _random_vectors(50):
    np.testing.assert_array_equal(ng.arc_to_vector(ng.vector_to_arc(v)), v)
  with pytest.raises(ValueError):
    ng.vector_to_arc(np.zeros(39, int))


def test_sampling_and_is_valid():
  cfg = ng.NSGAConfig()
  problem = ng.make_problem(XL, XU)
  X = ng.make_algorithm(cfg).initialization.sampling.do(problem, 2000, random_state=np.random.default_rng(1)).get("X")
  assert np.issubdtype(X.dtype, np.integer) and X.shape == (2000, 40)
  assert ng.is_valid(X).all()
  np.testing.assert_array_equal(X.min(0), XL)
  np.testing.assert_array_equal(X.max(0), XU)  # every value reached (uniform over [xl, xu])
  assert ng.is_valid(XL) and ng.is_valid(XU)
  for i, bad in [(1, 2), (5, 3), (39, 6), (0, 9), (2, -1)]:  # block 0 input 2, block 1 input 3, ...
    x = XL.copy()
    x[i] = bad
    assert not ng.is_valid(x), (i, bad)
  assert not ng.is_valid(XL + 0.5) and not ng.is_valid(XL[:39])
  assert ng.is_valid(XL.astype(float))


# ---------------------------------------------------------------- 2. operators


def test_mutation_keeps_valid_and_rate():
  cfg = ng.NSGAConfig()
  problem = ng.make_problem(XL, XU)
  mutation = ng.make_algorithm(cfg).mating.mutation
  X = _random_vectors(2000, seed=2)
  Y = mutation.do(problem, Population.new("X", X), inplace=False, random_state=np.random.default_rng(3)).get("X")
  assert np.issubdtype(Y.dtype, np.integer) and ng.is_valid(Y).all()
  # per-gene probability 1/40; about half the perturbations round back to the same integer
  changed = (Y != X).mean() * 40
  assert 0.3 < changed < 1.0, changed
  # on very wide bounds every perturbation changes the integer: the rate is the gene probability
  wide = ng.make_problem(np.zeros(40, int), np.full(40, 10 ** 6))
  X = np.full((4000, 40), 5 * 10 ** 5)
  Y = mutation.do(wide, Population.new("X", X), inplace=False, random_state=np.random.default_rng(4)).get("X")
  assert abs((Y != X).mean() - 1 / 40) < 0.1 / 40
  # x = 1 in [0, 2], eta 3: with the widened bounds [-0.5, 2.5 - 1e-16] (width 3) the gene moves
  # when |delta_q| > 1/6, i.e. with probability 2 (16 (5/6)^4 - 1) / 30 = 0.4477; on the plain
  # bounds (width 2: |delta_q| > 1/4) it would be 2 (16 (3/4)^4 - 1) / 30 = 0.2708
  two = ng.make_problem(np.zeros(40, int), np.full(40, 2))
  X = np.ones((8000, 40), int)
  Y = mutation.do(two, Population.new("X", X), inplace=False, random_state=np.random.default_rng(5)).get("X")
  p_move = 2 * (16 * (5 / 6) ** 4 - 1) / 30
  assert abs((Y != 1).mean() * 40 / p_move - 1) < 0.08
  moved = Y[Y != 1]
  assert set(np.unique(moved)) == {0, 2} and abs((moved == 0).mean() - 0.5) < 0.05


def test_crossover_two_point_always():
  problem = ng.make_problem(XL, XU)
  crossover = ng.make_algorithm(ng.NSGAConfig()).mating.crossover
  X = _random_vectors(4000, seed=6)
  parents = np.arange(4000).reshape(-1, 2)
  off = crossover.do(problem, Population.new("X", X), parents, random_state=np.random.default_rng(7)).get("X")
  assert off.shape == (4000, 40) and np.issubdtype(off.dtype, np.integer) and ng.is_valid(off).all()
  # pymoo returns the first children of all matings, then the second ones
  c1, c2 = off[:2000], off[2000:]
  p1, p2 = X[parents[:, 0]], X[parents[:, 1]]
  np.testing.assert_array_equal(np.sort([c1, c2], 0), np.sort([p1, p2], 0))  # each position: the parents' genes
  n_crossed = 0
  for a, b, u, v in zip(p1, p2, c1, c2):
    swapped = np.flatnonzero((u != a) & (a != b))
    np.testing.assert_array_equal(v[u == a], b[u == a])  # complementary children
    if len(swapped):
      n_crossed += 1
      lo, hi = swapped[0], swapped[-1]
      assert 1 <= lo and hi <= 38  # cut points in 1 .. n_var - 1, genes in [r_1, r_2) swapped
      seg = slice(lo, hi + 1)
      np.testing.assert_array_equal(u[seg], b[seg])  # one contiguous segment
  assert n_crossed > 0.95 * 2000  # always applied (a miss only when the segment's genes agree)


def test_tournament_rule():
  from pymoo.algorithms.moo.nsga2 import binary_tournament
  algorithm = ng.make_algorithm(ng.NSGAConfig())
  algorithm.random_state = np.random.default_rng(0)
  pop = Population.new("F", np.array([[1.0, 1.0], [2.0, 2.0], [0.0, 3.0], [3.0, 0.0]]),
                       "crowding", np.array([0.1, 5.0, 0.2, 0.3]), "CV", np.zeros((4, 1)))
  P = np.array([[0, 1], [1, 0], [2, 3], [3, 2], [0, 2]])
  S = binary_tournament(pop, P, algorithm)[:, 0]
  assert S.tolist() == [0, 0, 3, 3, 2]  # dominance first, else larger crowding
  ties = [binary_tournament(Population.new("F", np.array([[0.0, 1.0], [1.0, 0.0]]), "crowding", np.ones(2),
                                           "CV", np.zeros((2, 1))), np.array([[0, 1]]), algorithm)[0, 0]
          for _ in range(200)]
  assert 50 < sum(ties) < 150  # else random


def test_nsganet_crowding():
  # ties take the nearest non-zero gap: [0, 1, 1, 3] -> ends 1e14, both 1s (1 + 2) / 3
  np.testing.assert_allclose(ng.nsganet_crowding(np.array([[0.0], [1.0], [1.0], [3.0]])), [1e14, 1, 1, 1e14])
  np.testing.assert_array_equal(ng.nsganet_crowding(np.ones((2, 2))), [1e14, 1e14])
  # without ties it is pymoo's crowding distance (inf -> 1e14)
  F = np.random.default_rng(8).random((30, 2))
  cd = calc_crowding_distance(F)
  np.testing.assert_allclose(ng.nsganet_crowding(F), np.where(np.isinf(cd), 1e14, cd))
  # a constant objective adds nothing, even at the ends
  F = np.array([[0.0, 5.0], [1.0, 5.0], [3.0, 5.0]])
  np.testing.assert_allclose(ng.nsganet_crowding(F), [1e14, (1 + 2) / 3 / 2, 1e14])


# ---------------------------------------------------------------- 3. front recovery

W = np.sqrt([2.0, 3.0, 5.0, 7.0, 11.0, 13.0])  # independent over Q: no ties in F
C = np.array([6, 3, 8])


def _toy(X):
  """x_0 in 0..20, x_1..3 in 0..10; h >= 0 is 0 only at x_{1..3} = C (asymmetric weights);
  f_1 = x_0 + h / 10, f_2 = 10 (1 + h)(1 - sqrt(x_0 / 20)): the front is x_{1..3} = C, 21 points."""
  X = np.asarray(X, float)
  d = X[:, 1:] - C
  h = np.maximum(d, 0) @ W[:3] + np.maximum(-d, 0) @ W[3:]
  return np.stack([X[:, 0] + 0.1 * h, 10 * (1 + h) * (1 - np.sqrt(X[:, 0] / 20))], 1)


def test_recovers_toy_front():
  xl, xu = np.zeros(4, int), np.array([20, 10, 10, 10])
  grid = np.array(list(itertools.product(*[range(u + 1) for u in xu])))
  Fg = _toy(grid)
  assert len({tuple(f) for f in Fg}) == len(grid)
  true_front = {tuple(f) for f in Fg[ng.pareto_front(Fg)]}
  assert len(true_front) == 21
  for seed in (0, 1):  # the interior optimum C needs more than the default 30 generations
    calls = []
    cfg = ng.NSGAConfig(n_gens=60, seed=seed)
    result = ng.run_nsga(lambda X: (calls.append(len(X)), _toy(X))[1], cfg, bounds_override=(xl, xu))
    assert len(calls) == 60 and sum(calls) == len(result.history) < len(grid) // 20
    got = {tuple(f) for f in result.history.F[result.front]}
    assert got <= true_front  # no dominated point
    assert len(got) >= 0.8 * len(true_front), (seed, len(got))
    assert set(result.front) <= set(result.population) and len(result.population) == 40
    np.testing.assert_array_equal(result.history.F, _toy(result.history.X))


def test_pareto_front_and_pick():
  F = np.array([[1.0, 5.0], [2.0, 2.0], [5.0, 1.0], [3.0, 3.0], [1.0, 6.0], [2.5, 2.5]])
  front = ng.pareto_front(F)
  assert front.tolist() == [0, 1, 2]
  assert ng.pick(front, F) == 0  # best f_1
  assert ng.pick(front, F, "knee") == 1
  assert ng.pick([4, 0], F) == 0  # tie in f_1: smaller f_2
  with pytest.raises(ValueError):
    ng.pick(front, F, "median")


# ---------------------------------------------------------------- 4. evaluation count, resume


def test_evaluation_count_and_resume():
  cfg = ng.NSGAConfig()
  calls, seen, snapshots = [], set(), {}
  full = ng.run_nsga(_random_objective(calls, seen), cfg, callback=lambda g, h: snapshots.setdefault(g, h))
  # 40, then 20 offspring per generation: 620 candidates; pymoo removes duplicates of the current
  # population only, so a vector dropped earlier can come back; it is served from the cache
  assert [len(g) for g in full.generations] == [40] + [20] * 29
  first = np.concatenate(full.generations)
  n_new = [len(set(g.tolist()) - set(first[:sum(map(len, full.generations[:i]))].tolist()))
           for i, g in enumerate(full.generations)]
  assert calls == [n for n in n_new if n] and sum(calls) == len(full.history) == len(seen) > 600
  assert sorted(snapshots) == list(range(1, 31))
  assert [len(snapshots[g]) for g in (1, 2, 30)] == [40, 60, len(full.history)]
  np.testing.assert_array_equal(np.bincount(full.history.generation)[1:], calls)
  assert ng.is_valid(full.history.X).all()
  assert len(full.population) == 40 and set(full.front) <= set(full.population)
  np.testing.assert_array_equal(full.front, full.population[ng.pareto_front(full.history.F[full.population])])

  # deterministic given the seed
  again = ng.run_nsga(_random_objective(), cfg)
  np.testing.assert_array_equal(again.history.X, full.history.X)
  np.testing.assert_array_equal(again.population, full.population)

  # interrupted after generation 10, resumed from its (JSON-able) history: nothing evaluated twice
  class Stop(Exception):
    pass

  saved, seen = {}, set()

  def stop_at_10(g, h):
    saved["h"] = h.as_dict()
    if g == 10:
      raise Stop

  with pytest.raises(Stop):
    ng.run_nsga(_random_objective(None, seen), cfg, callback=stop_at_10)
  assert len(seen) == len(saved["h"]["X"]) == sum(n_new[:10])
  calls = []
  resumed = ng.run_nsga(_random_objective(calls, seen), cfg, history=saved["h"])
  assert calls == [n for n in n_new[10:] if n] and len(seen) == len(full.history)
  np.testing.assert_array_equal(resumed.history.X, full.history.X)
  np.testing.assert_array_equal(resumed.history.generation, full.history.generation)
  np.testing.assert_array_equal(resumed.population, full.population)

  # a finished history: no evaluation at all
  calls = []
  ng.run_nsga(_random_objective(calls), cfg, history=full.history)
  assert calls == []
