"""Statistics of the NAS evaluation protocol of Yang et al. (ICLR 2020).

``top1_accuracy`` runs on the device inside ``jit``. Everything else is host-side NumPy over small
vectors of final accuracies (one per seed or per architecture): summaries over seeds, the relative
improvement of a search method over random sampling (paper §3.1, Table 1), and the rank statistics
of paper §5 (Kendall tau between seeds, between depths, between epochs). The rank statistics match
``scipy.stats.kendalltau``, ``spearmanr`` and ``rankdata`` (scipy is used only in the tests).

Accuracies may be fractions or percentages: every function here is unit-free.

References:
  Yang, Esperança, Carlucci, "NAS evaluation is frustratingly hard", ICLR 2020 (arXiv:1912.12522);
  antoyang/NAS-Benchmark ``Plots/PLOTS_Benchmark_SUPPL.ipynb``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

__all__ = [
    "top1_accuracy",
    "mean_std",
    "summarize",
    "relative_improvement",
    "rank",
    "kendall_tau",
    "spearman_rho",
    "rank_displacement",
    "moving_average",
    "epoch_rank_correlation",
]


def top1_accuracy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Fraction of examples whose arg-max logit is the label (jittable).

  Args:
    logits: (..., num_classes) scores.
    labels: integer labels of shape logits.shape[:-1], or one-hot / soft labels of the same shape
      as ``logits`` (their arg-max is the label).

  Returns:
    A float32 scalar in [0, 1] (multiply by 100 for the paper's percentages).
  """
  if labels.ndim == logits.ndim:
    labels = jnp.argmax(labels, axis=-1)
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"labels shape {labels.shape} does not match logits shape {logits.shape}")
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels, dtype=jnp.float32)


def _vector(values, name: str) -> np.ndarray:
  """Values as a finite, non-empty float64 vector (a scalar counts as one value)."""
  v = np.asarray(values, dtype=np.float64)
  if v.ndim == 0:
    v = v.reshape(1)
  if v.ndim != 1:
    raise ValueError(f"{name} must be a scalar or a 1-D sequence, got shape {v.shape}")
  if v.size == 0:
    raise ValueError(f"{name} is empty")
  if not np.all(np.isfinite(v)):
    raise ValueError(f"{name} contains NaN or inf: {v}")
  return v


def mean_std(values: Sequence[float], ddof: int = 1) -> tuple[float, float]:
  """Mean and standard deviation of a set of runs.

  std = sqrt(sum_i (x_i - mean)^2 / (n - ddof)). The paper mixes conventions: the stds behind
  Fig. 1 (8 runs per method and dataset) are population stds, ddof=0 (NAS-Benchmark notebook),
  while the training-protocol ablation (§4, Fig. 3) is reproduced with sample stds, ddof=1. The
  default here is ddof=1; pass ddof=0 to reproduce Fig. 1.

  Args:
    values: 1-D sequence of numbers (e.g. one final test accuracy per seed).
    ddof: delta degrees of freedom.

  Returns:
    (mean, std) as Python floats. std is NaN when n <= ddof (e.g. a single run with ddof=1).
  """
  v = _vector(values, "values")
  std = float(np.std(v, ddof=ddof)) if v.size > ddof else float("nan")
  return float(np.mean(v)), std


def summarize(values: Sequence[float], ddof: int = 1) -> dict:
  """dict(mean, std, min, max, n) of a set of runs; std as in ``mean_std`` (default ddof=1)."""
  v = _vector(values, "values")
  mean, std = mean_std(v, ddof=ddof)
  return dict(mean=mean, std=std, min=float(v.min()), max=float(v.max()), n=int(v.size))


def relative_improvement(searched, random) -> float:
  """Relative improvement of a search method over random sampling, in percent.

  RI = 100 * (Acc_m - Acc_r) / Acc_r, with Acc_m the mean accuracy of the searched architectures
  and Acc_r the mean accuracy of randomly sampled ones (Yang et al. 2020, §3.1 / Table 1).
  Example: DARTS on CIFAR-10, means 97.23 and 96.92, gives RI = 0.3198..., printed as 0.32.

  Args:
    searched: a mean accuracy, or the accuracies of the searched architectures.
    random: a mean accuracy, or the accuracies of the random architectures (same units).

  Returns:
    RI in percent, as a Python float.
  """
  acc_m = float(np.mean(_vector(searched, "searched accuracies")))
  acc_r = float(np.mean(_vector(random, "random accuracies")))
  if acc_r == 0.0:
    raise ValueError("mean accuracy of the random architectures is 0: RI is undefined")
  return 100.0 * (acc_m - acc_r) / acc_r


def rank(x: Sequence[float], descending: bool = True) -> np.ndarray:
  """Ranks 1..n with ties given their average rank (scipy.stats.rankdata 'average').

  With descending=True (default) rank 1 is the largest value, i.e. the best accuracy.
  Example: rank([97.1, 96.5, 97.1, 96.0]) = [1.5, 3, 1.5, 4].
  """
  v = _vector(x, "x")
  _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
  # Ascending: the group of k tied values occupying positions s+1..s+k gets rank s + (k+1)/2.
  start = np.cumsum(counts) - counts
  ranks = (start + (counts + 1) / 2.0)[inverse.reshape(-1)]
  return (v.size + 1) - ranks if descending else ranks


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
  x, y = _vector(x, "x"), _vector(y, "y")
  if x.size != y.size:
    raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
  if x.size < 2:
    raise ValueError("rank correlation needs at least 2 items")
  return x, y


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
  """Kendall's tau-b, ties accounted for (scipy.stats.kendalltau's default).

  tau_b = (n_c - n_d) / sqrt((n_0 - n_x) (n_0 - n_y)), with n_c / n_d the concordant / discordant
  pairs, n_0 = n(n-1)/2 and n_x, n_y the pairs tied in x, in y. Equivalently
  sum_{i<j} sgn(x_i - x_j) sgn(y_i - y_j) / sqrt(#{i<j: x_i != x_j} #{i<j: y_i != y_j}).
  O(n^2) time, O(n * 512) memory; fine for the paper's sizes (n <= a few thousand).

  Returns:
    tau_b in [-1, 1] as a Python float; NaN if x or y is constant (as scipy).
  """
  x, y = _pair(x, y)
  s = nx = ny = 0
  for i in range(0, x.size, 512):  # row blocks of the n x n sign matrices
    sx = np.sign(x[i:i + 512, None] - x[None, :])
    sy = np.sign(y[i:i + 512, None] - y[None, :])
    s += int(np.sum(sx * sy))
    nx += int(np.sum(sx != 0))
    ny += int(np.sum(sy != 0))
  # Each unordered pair was counted twice (i, j) and (j, i); the factor cancels in the ratio.
  if nx == 0 or ny == 0:
    return float("nan")
  return float(s / np.sqrt(float(nx) * float(ny)))


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rho: Pearson correlation of the average ranks (scipy.stats.spearmanr).

  Returns:
    rho in [-1, 1] as a Python float; NaN if x or y is constant (as scipy).
  """
  x, y = _pair(x, y)
  rx, ry = rank(x) - (x.size + 1) / 2.0, rank(y) - (y.size + 1) / 2.0
  denom = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
  return float(np.sum(rx * ry) / denom) if denom > 0 else float("nan")


def rank_displacement(x: Sequence[float], y: Sequence[float]) -> dict:
  """How far items move between two rankings: |rank_x - rank_y| with tie-averaged ranks.

  Yang et al. 2020 §5.3 (8 vs 20 cells, 32 architectures): up to 18 positions; with tie-averaged
  ranks the data give max 18.5, mean 5.1.

  Returns:
    dict(max=float, mean=float, per_item=np.ndarray of shape (n,)).
  """
  x, y = _pair(x, y)
  d = np.abs(rank(x) - rank(y))
  return dict(max=float(d.max()), mean=float(d.mean()), per_item=d)


def moving_average(curve, window: int) -> np.ndarray:
  """Trailing moving average along the last axis (epochs).

  out[..., e] = mean(curve[..., max(0, e - window + 1) : e + 1]): the mean over the ``window``
  epochs ending at e, or over all epochs so far for the first window - 1 epochs. Used for the
  smoothed tau(epoch e, final) curve of Yang et al. 2020 §5.1 / Fig. 5 (w = 20).

  Args:
    curve: (..., n_epochs) array, e.g. (n_archs, n_epochs) test accuracies per epoch.
    window: number of epochs averaged, >= 1.

  Returns:
    float64 array with the shape of ``curve``.
  """
  c = np.asarray(curve, dtype=np.float64)
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  if c.ndim == 0 or c.shape[-1] == 0:
    raise ValueError(f"curve needs a non-empty last (epoch) axis, got shape {c.shape}")
  csum = np.cumsum(c, axis=-1)
  lagged = np.zeros_like(csum)
  lagged[..., window:] = csum[..., :-window]
  count = np.minimum(np.arange(1, c.shape[-1] + 1), window)
  return (csum - lagged) / count


def epoch_rank_correlation(curves, epochs: Sequence[int], window: int | None = None,
                           final: str = "last") -> np.ndarray:
  """Kendall tau between the accuracy at epoch e and the final accuracy, for each e in ``epochs``.

  Yang et al. 2020 §5.1 / Fig. 5: on 214 random DARTS architectures trained 600 epochs, tau grows
  slowly (about 0.28 at e = 50, 0.63 at e = 500, 0.85 at e = 580); a moving average over w = 20
  epochs raises it (0.30 ... 0.88).

  Args:
    curves: (n_archs, n_epochs) accuracy of each architecture after each epoch.
    epochs: 1-based epoch numbers (epoch e is column e - 1; epoch n_epochs is the last).
    window: if given, the accuracy at epoch e is the mean over the ``window`` epochs ending at e
      (``moving_average``); the final accuracy is never smoothed.
    final: "last" (accuracy after the last epoch) or "best" (maximum over epochs, which is what
      the paper's 97.03 +- 0.23 of §5.1 summarises).

  Returns:
    float64 array of shape (len(epochs),).
  """
  c = np.asarray(curves, dtype=np.float64)
  if c.ndim != 2:
    raise ValueError(f"curves must have shape (n_archs, n_epochs), got {c.shape}")
  if final not in ("last", "best"):
    raise ValueError(f"final must be 'last' or 'best', got {final!r}")
  n_epochs = c.shape[1]
  bad = [e for e in epochs if not 1 <= e <= n_epochs]
  if bad:
    raise ValueError(f"epochs must lie in 1..{n_epochs} (1-based), got {bad}")
  ref = c[:, -1] if final == "last" else c.max(axis=1)
  at = moving_average(c, window) if window is not None else c
  return np.array([kendall_tau(at[:, e - 1], ref) for e in epochs])
