"""Array kernels for the DARTS ops, in forms XLA runs fast, NHWC.

XLA:CPU runs ``conv_general_dilated`` with ``feature_group_count=C`` (depthwise) about 100x slower
than PyTorch, and max-pool backward through ``reduce_window`` about 10x slower (design.md,
"Performance traps"). On CPU we therefore write a depthwise convolution as k*k shifted
multiply-adds of the padded input, and give max pooling a custom VJP that routes the cotangent to
the arg-max tap with shifted adds (``lax.pad`` with interior padding for stride 2). On GPU the
library convolutions win; ``impl`` picks the form (``'auto'``: shifts on CPU, XLA convs elsewhere).

All functions take one image batch ``x: (B, H, W, C)``; ``jax.vmap`` adds edge or seed axes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLS = ("auto", "shift", "xla")


def resolve_impl(impl: str) -> str:
  """``'auto'`` -> ``'shift'`` on CPU, ``'xla'`` on accelerators (decided at trace time)."""
  if impl not in IMPLS:
    raise ValueError(f"unknown conv impl {impl!r}; use one of {IMPLS}")
  if impl == "auto":
    return "shift" if jax.default_backend() == "cpu" else "xla"
  return impl


def out_size(size: int, k: int, stride: int, pad: int, dilation: int = 1) -> int:
  """PyTorch's output size: floor((size + 2 pad - dilation (k - 1) - 1) / stride) + 1."""
  return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _taps(xp, k: int, stride: int, dilation: int, ho: int, wo: int):
  """Yield ((i, j), tap) with tap[b, h, w] = xp[b, h*stride + i*dilation, w*stride + j*dilation]."""
  b, _, _, c = xp.shape
  for i in range(k):
    for j in range(k):
      start = (0, i * dilation, j * dilation, 0)
      limit = (b, i * dilation + stride * (ho - 1) + 1, j * dilation + stride * (wo - 1) + 1, c)
      yield (i, j), lax.slice(xp, start, limit, (1, stride, stride, 1))


def _pad_hw(x, pad: int, value=0.0):
  if pad == 0:
    return x
  return lax.pad(x, jnp.asarray(value, x.dtype), ((0, 0, 0), (pad, pad, 0), (pad, pad, 0), (0, 0, 0)))


def depthwise_conv(x, w, *, stride: int = 1, padding: int = 0, dilation: int = 1, impl: str = "auto"):
  """Depthwise convolution (PyTorch ``Conv2d(groups=C)``, no bias); ``w: (k, k, C)``."""
  k = w.shape[0]
  if resolve_impl(impl) == "xla":
    return lax.conv_general_dilated(
        x, w[:, :, None, :], (stride, stride), ((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1])
  _, h, wd, _ = x.shape
  ho, wo = out_size(h, k, stride, padding, dilation), out_size(wd, k, stride, padding, dilation)
  xp = _pad_hw(x, padding)
  out = None
  for (i, j), tap in _taps(xp, k, stride, dilation, ho, wo):
    term = tap * w[i, j]
    out = term if out is None else out + term
  return out


def conv(x, w, *, stride=1, padding=0, dilation: int = 1):
  """Dense convolution (PyTorch ``Conv2d``, no bias); ``w: (kh, kw, C_in, C_out)``.

  ``stride`` and ``padding`` may be ints or (h, w) pairs. A 1x1 convolution is a matrix product.
  """
  sh, sw = (stride, stride) if isinstance(stride, int) else stride
  ph, pw = (padding, padding) if isinstance(padding, int) else padding
  if w.shape[:2] == (1, 1) and ph == pw == 0:
    if sh > 1 or sw > 1:
      x = x[:, ::sh, ::sw, :]
    return x @ w[0, 0]
  return lax.conv_general_dilated(
      x, w, (sh, sw), ((ph, ph), (pw, pw)), rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def avg_pool(x, k: int = 3, stride: int = 1, padding: int = 1, count_include_pad: bool = False):
  """Average pooling; by default the padding is excluded from the count (PyTorch
  ``AvgPool2d(count_include_pad=False)``, as quark0 uses)."""
  _, h, wd, _ = x.shape
  ho, wo = out_size(h, k, stride, padding), out_size(wd, k, stride, padding)
  xp = _pad_hw(x, padding)
  total = None
  for _, tap in _taps(xp, k, stride, 1, ho, wo):
    total = tap if total is None else total + tap
  if count_include_pad or padding == 0:
    return total / (k * k)
  ones = np.pad(np.ones((h, wd), np.float32), padding)
  counts = np.zeros((ho, wo), np.float32)
  for i in range(k):
    for j in range(k):
      counts += ones[i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
  return total * jnp.asarray(1.0 / counts, x.dtype)[None, :, :, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, k: int = 3, stride: int = 1, padding: int = 1):
  """Max pooling, padding with -inf (PyTorch ``MaxPool2d``), with a fast custom VJP."""
  return _max_pool_fwd(x, k, stride, padding)[0]


def _max_pool_fwd(x, k, stride, padding):
  _, h, wd, _ = x.shape
  ho, wo = out_size(h, k, stride, padding), out_size(wd, k, stride, padding)
  xp = _pad_hw(x, padding, -jnp.inf)
  best = arg = None
  for t, (_, tap) in enumerate(_taps(xp, k, stride, 1, ho, wo)):
    if best is None:
      best, arg = tap, jnp.zeros(tap.shape, jnp.int8)
    else:
      better = tap > best  # strict: the first maximal tap wins, as in PyTorch
      best, arg = jnp.where(better, tap, best), jnp.where(better, jnp.int8(t), arg)
  return best, (arg, x.shape)


def _max_pool_bwd(k, stride, padding, residuals, g):
  """Route each output's cotangent to its arg-max tap: one shifted (interior-padded) add per tap."""
  arg, (_, h, wd, _) = residuals
  ho, wo = arg.shape[1:3]
  hp, wp = h + 2 * padding, wd + 2 * padding
  zero = jnp.zeros((), g.dtype)
  grad = None
  for t in range(k * k):
    i, j = divmod(t, k)
    contrib = lax.pad(jnp.where(arg == t, g, zero), zero, (
        (0, 0, 0),
        (i, hp - i - stride * (ho - 1) - 1, stride - 1),
        (j, wp - j - stride * (wo - 1) - 1, stride - 1),
        (0, 0, 0)))
    grad = contrib if grad is None else grad + contrib
  return (grad[:, padding:padding + h, padding:padding + wd, :],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def batch_norm(x, stats, *, train: bool, scale=None, bias=None, momentum: float = 0.1, eps: float = 1e-5):
  """BatchNorm over (B, H, W) per channel, as PyTorch ``BatchNorm2d``.

  Train mode normalises with the batch statistics and returns running statistics updated as
  ``new = (1 - momentum) old + momentum batch`` (the variance term unbiased, n / (n - 1));
  eval mode normalises with the running statistics and returns them unchanged.

  Args:
    x: ``(B, H, W, C)``.
    stats: ``{'mean': (C,), 'var': (C,)}`` running statistics.
    scale, bias: ``(C,)`` affine parameters, or ``None`` (affine off, as in the DARTS search).

  Returns:
    ``(y, new_stats)``.
  """
  if train:
    axes = tuple(range(x.ndim - 1))
    # One pass, E[x^2] - E[x]^2 (as flax's ``use_fast_variance``): 3x faster on XLA:CPU than two.
    mean = jnp.mean(x, axis=axes)
    var = jnp.maximum(jnp.mean(jnp.square(x), axis=axes) - jnp.square(mean), 0.0)
    n = x.size // x.shape[-1]
    new_stats = {
        "mean": (1 - momentum) * stats["mean"] + momentum * lax.stop_gradient(mean),
        "var": (1 - momentum) * stats["var"] + momentum * lax.stop_gradient(var) * (n / max(n - 1, 1)),
    }
  else:
    mean, var, new_stats = stats["mean"], stats["var"], stats
  inv = lax.rsqrt(var + eps)
  if scale is not None:
    inv = inv * scale
  y = (x - mean) * inv
  if bias is not None:
    y = y + bias
  return y, new_stats
