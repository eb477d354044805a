"""Tests for jnas.metrics: hand-worked values, then agreement with scipy.stats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jnas import metrics


# --- accuracy and summaries -------------------------------------------------------------------

def test_top1_accuracy_int_and_one_hot_labels():
  logits = jnp.array([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])  # arg-max: 1, 0, 1
  labels = jnp.array([1, 0, 0])  # right, right, wrong -> 2/3
  acc = jax.jit(metrics.top1_accuracy)(logits, labels)
  assert acc.dtype == jnp.float32
  np.testing.assert_allclose(acc, 2 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics.top1_accuracy(logits, jax.nn.one_hot(labels, 2)), 2 / 3,
                             rtol=1e-6)


def test_top1_accuracy_shape_mismatch():
  with pytest.raises(ValueError, match="does not match"):
    metrics.top1_accuracy(jnp.zeros((3, 2)), jnp.zeros((4,), jnp.int32))


def test_mean_std_by_hand():
  # [1, 2, 3, 4]: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5.
  mean, std = metrics.mean_std([1, 2, 3, 4])  # default ddof=1: sqrt(5 / 3)
  assert mean == 2.5 and std == pytest.approx(np.sqrt(5 / 3))
  assert metrics.mean_std([1, 2, 3, 4], ddof=0)[1] == pytest.approx(np.sqrt(5 / 4))
  # One run: the sample std is undefined, the population std is 0.
  assert np.isnan(metrics.mean_std([97.0])[1])
  assert metrics.mean_std([97.0], ddof=0) == (97.0, 0.0)


def test_summarize():
  s = metrics.summarize(np.array([96.5, 97.0, 97.5]))
  assert s == dict(mean=pytest.approx(97.0), std=pytest.approx(0.5), min=96.5, max=97.5, n=3)
  assert all(isinstance(v, float) for k, v in s.items() if k != "n")


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [[1.0, 2.0]]])
def test_summaries_reject_bad_input(bad):
  with pytest.raises(ValueError):
    metrics.mean_std(bad)


# --- relative improvement ---------------------------------------------------------------------

def test_relative_improvement_paper_value():
  # DARTS on CIFAR-10 (paper Table 1): 100 * (97.23 - 96.92) / 96.92 = 31 / 96.92 = 0.31985...
  assert metrics.relative_improvement(97.23, 96.92) == pytest.approx(0.3198514238547, abs=1e-10)
  assert round(metrics.relative_improvement(97.23, 96.92), 2) == 0.32
  # Sequences are averaged first: means 97.0 and 96.0 -> 100 / 96.
  assert metrics.relative_improvement([96.5, 97.5], [95.0, 97.0]) == pytest.approx(100 / 96)
  assert metrics.relative_improvement([96.0], [97.0]) < 0


def test_relative_improvement_errors():
  with pytest.raises(ValueError, match="searched accuracies is empty"):
    metrics.relative_improvement([], [96.0])
  with pytest.raises(ValueError, match="random accuracies is empty"):
    metrics.relative_improvement([96.0], [])
  with pytest.raises(ValueError, match="is 0"):
    metrics.relative_improvement([96.0], [0.0, 0.0])


# --- ranks, by hand ---------------------------------------------------------------------------

def test_rank_by_hand():
  # 97.1 twice shares places 1 and 2 -> 1.5 each; then 96.5 is 3rd and 96.0 4th.
  np.testing.assert_array_equal(metrics.rank([97.1, 96.5, 97.1, 96.0]), [1.5, 3, 1.5, 4])
  np.testing.assert_array_equal(metrics.rank([97.1, 96.5, 97.1, 96.0], descending=False),
                                [3.5, 2, 3.5, 1])


def test_kendall_tau_permutation_by_hand():
  # y swaps items 2 and 3. Of the 6 pairs only (2, 3) is discordant: n_c = 5, n_d = 1,
  # tau = (5 - 1) / 6 = 2/3.
  assert metrics.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
  assert metrics.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_kendall_tau_b_with_tie_by_hand():
  # x = [1, 2, 2, 3], y = [1, 3, 2, 4]. Pair (2, 3) is tied in x (n_x = 1, n_y = 0); the other 5
  # pairs are all concordant: n_c = 5, n_d = 0, n_0 = 6.
  # tau_b = (5 - 0) / sqrt((6 - 1) * (6 - 0)) = 5 / sqrt(30) = 0.91287...
  assert metrics.kendall_tau([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / np.sqrt(30))


def test_spearman_by_hand():
  # No ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)); d = [0, 1, 1, 0] -> 1 - 12 / 60 = 0.8.
  assert metrics.spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_rank_displacement_by_hand():
  # Ranks (1 = largest): x -> [1, 2, 3, 4], y -> [4, 3, 2, 1]; |diff| = [3, 1, 1, 3].
  d = metrics.rank_displacement([4, 3, 2, 1], [1, 2, 3, 4])
  assert d["max"] == 3.0 and d["mean"] == 2.0
  np.testing.assert_array_equal(d["per_item"], [3, 1, 1, 3])
  # With a tie: x ranks [1.5, 1.5, 3], y ranks [1, 2, 3] -> [0.5, 0.5, 0].
  assert metrics.rank_displacement([5, 5, 1], [3, 2, 1])["max"] == 0.5


def test_rank_statistics_errors():
  with pytest.raises(ValueError, match="same length"):
    metrics.kendall_tau([1, 2, 3], [1, 2])
  with pytest.raises(ValueError, match="same length"):
    metrics.spearman_rho([1, 2, 3], [1, 2])
  with pytest.raises(ValueError, match="at least 2"):
    metrics.kendall_tau([1], [1])
  assert np.isnan(metrics.kendall_tau([1, 1, 1], [1, 2, 3]))  # constant input, as scipy
  assert np.isnan(metrics.spearman_rho([1, 2, 3], [2, 2, 2]))


# --- ranks, against scipy ---------------------------------------------------------------------

def _random_pairs():
  rng = np.random.default_rng(0)
  for n in (2, 3, 10, 32, 214, 700):  # 700 > the 512-row block of kendall_tau
    yield rng.normal(size=n), rng.normal(size=n)  # no ties
    yield rng.integers(0, 5, size=n), rng.integers(0, 3, size=n)  # many ties
    x = np.round(rng.normal(97, 0.2, size=n), 2)  # accuracies with 2 decimals, some ties
    yield x, np.round(x + rng.normal(0, 0.15, size=n), 2)


@pytest.mark.parametrize("x,y", list(_random_pairs()))
def test_rank_statistics_match_scipy(x, y):
  np.testing.assert_allclose(metrics.rank(x, descending=False), stats.rankdata(x))
  np.testing.assert_allclose(metrics.rank(x), stats.rankdata(-x))
  with np.errstate(all="ignore"):
    tau, rho = stats.kendalltau(x, y).statistic, stats.spearmanr(x, y).statistic
  np.testing.assert_allclose(metrics.kendall_tau(x, y), tau, rtol=1e-12, equal_nan=True)
  np.testing.assert_allclose(metrics.spearman_rho(x, y), rho, rtol=1e-12, atol=1e-14,
                             equal_nan=True)
  d = np.abs(stats.rankdata(-x) - stats.rankdata(-y))
  got = metrics.rank_displacement(x, y)
  assert got["max"] == d.max() and got["mean"] == pytest.approx(d.mean())


# --- epoch curves -----------------------------------------------------------------------------

def test_moving_average_by_hand():
  c = [1.0, 2.0, 3.0, 4.0, 5.0]
  np.testing.assert_allclose(metrics.moving_average(c, 1), c)
  np.testing.assert_allclose(metrics.moving_average(c, 2), [1, 1.5, 2.5, 3.5, 4.5])
  np.testing.assert_allclose(metrics.moving_average(c, 3), [1, 1.5, 2, 3, 4])
  np.testing.assert_allclose(metrics.moving_average(c, 10), [1, 1.5, 2, 2.5, 3])
  with pytest.raises(ValueError, match="window"):
    metrics.moving_average(c, 0)


def test_moving_average_batched():
  curves = np.random.default_rng(1).normal(size=(4, 30))
  want = np.stack([[curves[i, max(0, e - 6):e + 1].mean() for e in range(30)] for i in range(4)])
  np.testing.assert_allclose(metrics.moving_average(curves, 7), want, rtol=1e-12)


def test_epoch_rank_correlation():
  rng = np.random.default_rng(2)
  # Curves that rise towards a per-architecture final value, plus noise.
  final = rng.normal(97, 0.2, size=(40, 1))
  t = np.arange(1, 61) / 60
  curves = final * t + rng.normal(0, 0.3, size=(40, 60)) * (1 - t)
  epochs = [1, 10, 30, 59, 60]
  got = metrics.epoch_rank_correlation(curves, epochs)
  want = [stats.kendalltau(curves[:, e - 1], curves[:, -1]).statistic for e in epochs]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert got[-1] == 1.0  # the final epoch against itself

  smooth = metrics.epoch_rank_correlation(curves, epochs, window=5)
  ma = metrics.moving_average(curves, 5)
  want = [stats.kendalltau(ma[:, e - 1], curves[:, -1]).statistic for e in epochs]
  np.testing.assert_allclose(smooth, want, rtol=1e-12)

  best = metrics.epoch_rank_correlation(curves, [30], final="best")
  np.testing.assert_allclose(best, [stats.kendalltau(curves[:, 29], curves.max(1)).statistic])


def test_epoch_rank_correlation_errors():
  curves = np.zeros((3, 10))
  with pytest.raises(ValueError, match="1-based"):
    metrics.epoch_rank_correlation(curves, [0])
  with pytest.raises(ValueError, match="1-based"):
    metrics.epoch_rank_correlation(curves, [11])
  with pytest.raises(ValueError, match="n_archs, n_epochs"):
    metrics.epoch_rank_correlation(np.zeros(10), [1])
  with pytest.raises(ValueError, match="final"):
    metrics.epoch_rank_correlation(curves, [1], final="first")
