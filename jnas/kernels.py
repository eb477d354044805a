"""Array kernels for the DARTS ops, in forms XLA runs fast, NHWC.

XLA:CPU runs ``conv_general_dilated`` with ``feature_group_count=C`` (depthwise) about 100x slower
than PyTorch, and max-pool backward through ``reduce_window`` about 10x slower (design.md,
"Performance traps"). On CPU we therefore write a depthwise convolution as k*k shifted
multiply-adds of the padded input, and give it and the pooling ops custom VJPs whose input
gradients are stride-1 stencils over the dilated, padded cotangent. ``materialize`` keeps XLA from
recomputing a stencil's operand once per tap. On GPU the library convolutions should win; ``impl``
picks the form (``'auto'``: shifts on CPU, XLA convs elsewhere).

All functions take one image batch ``x: (B, H, W, C)``; ``jax.vmap`` adds edge or seed axes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLS = ("auto", "shift", "xla")

# Images per chunk of the depthwise weight gradient: about 1 MB of float32 per operand.
_DW_GRAD_CHUNK_ELEMENTS = 2**18


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


@jax.custom_batching.custom_vmap
def _is_number(x):
  """``x``'s first element is not NaN; unbatched under ``vmap`` (it then tests the whole batch),
  so that ``output_barrier``'s ``lax.cond`` stays a conditional instead of becoming a select."""
  flat = x.reshape(-1)
  return flat[0] == flat[0]


@_is_number.def_vmap
def _is_number_vmap(axis_size, in_batched, x):
  del axis_size, in_batched
  return _is_number(x), False


@jax.custom_jvp
def materialize(x):
  """``x``, computed into its own buffer before any consumer reads it.

  XLA:CPU fuses a cheap producer into every consumer, even a stencil that reads it at k*k shifted
  offsets, and then recomputes the producer chain once per offset (in the supernet backward pass
  this made one fusion take 600 ms). ``lax.optimization_barrier`` is removed before fusion on CPU,
  so the boundary is a while loop whose trip count (1, or 0 if ``x`` holds a NaN: then the value
  passes through unchanged either way) XLA cannot know, which it must run on a real buffer. The
  body adds ``0.0 * i`` so the loop is not recognised as a no-op. Costs one pass over ``x``.
  Differentiable (a custom JVP: the identity), to any order.
  """
  n = _is_number(x).astype(jnp.int32)  # unbatched under vmap: the loop stays a loop, not a select

  def body(carry):
    i, v = carry
    return i + 1, v + (i.astype(v.dtype) * jnp.zeros((), v.dtype))

  return lax.while_loop(lambda c: c[0] < n, body, (jnp.zeros((), jnp.int32), x))[1]


@materialize.defjvp
def _materialize_jvp(primals, tangents):
  # The identity: its derivative is the identity, so second-order DARTS can differentiate
  # through the custom backward passes that use it (a while loop has no reverse-mode rule).
  (x,), (t,) = primals, tangents
  return materialize(x), t


def output_barrier(x):
  """``x``, computed into its own buffer; unlike ``materialize``, reverse-differentiable inside a
  ``lax.scan`` at any order (second-order DARTS differentiates the forward pass of an inner
  gradient, and JAX dropped ``materialize``'s custom JVP there).

  The boundary is a ``lax.cond`` on ``x``'s first element, which XLA cannot decide at compile
  time: the identity if it is a number, ``x + nan`` if it is NaN (then the value is NaN either
  way). The predicate sees ``x`` through ``stop_gradient``, so differentiation never enters it.
  """
  nan = jnp.asarray(jnp.nan, x.dtype)
  return lax.cond(_is_number(lax.stop_gradient(x)), lambda v: v, lambda v: v + nan, x)


def _transpose_pad(g, k: int, stride: int, dilation: int, hp: int, wp: int, value=0.0):
  """g dilated by ``stride`` and padded by (k-1)*dilation, materialised: a stride-1 correlation
  of it with the flipped kernel is the transpose of the strided k x k stencil (the input
  gradient), computed as shifted multiply-adds that XLA fuses (k*k padded copies it does not)."""
  _, ho, wo, _ = g.shape
  edge = (k - 1) * dilation
  return materialize(lax.pad(g, jnp.asarray(value, g.dtype), (
      (0, 0, 0), (edge, hp - stride * (ho - 1) - 1, stride - 1),
      (edge, wp - stride * (wo - 1) - 1, stride - 1), (0, 0, 0))))


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
  """Depthwise convolution (PyTorch ``Conv2d(groups=C)``, no bias); ``w: (k, k, C)``.

  ``impl='shift'``: the forward pass is k*k shifted multiply-adds (one fused loop); the input
  gradient is the same stencil over the dilated, padded cotangent with the flipped kernel; the
  weight gradient reduces all k*k taps per cache-sized chunk of images (a ``lax.scan``).
  """
  if resolve_impl(impl) == "xla":
    return lax.conv_general_dilated(
        x, w[:, :, None, :], (stride, stride), ((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1])
  return _depthwise_shift(x, w, stride, padding, dilation)


def _dw_forward(x, w, stride, padding, dilation):
  k = w.shape[0]
  _, h, wd, _ = x.shape
  ho, wo = out_size(h, k, stride, padding, dilation), out_size(wd, k, stride, padding, dilation)
  out = None
  for (i, j), tap in _taps(_pad_hw(x, padding), k, stride, dilation, ho, wo):
    term = tap * w[i, j][None, None, None, :]
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_shift(x, w, stride, padding, dilation):
  # Its own buffer: inside a ``lax.scan`` (the cells) this output is also a residual that XLA
  # writes into the stacked residual buffer, and it fused the whole stencil into that
  # dynamic-update-slice, which XLA:CPU runs on one thread (14 ms instead of 2 ms per conv at
  # 96x32x32x36). Interleaved A/B in one process: DARTS_V2 grad step 13.3 -> 12.8 s (10.6 -> 9.4 s
  # with the while-loop ``materialize`` in a faster hour), supernet grad step 8.19 -> 7.76 s.
  return output_barrier(_dw_forward(x, w, stride, padding, dilation))


def _depthwise_shift_fwd(x, w, stride, padding, dilation):
  return output_barrier(_dw_forward(x, w, stride, padding, dilation)), (x, w)


def _depthwise_shift_bwd(stride, padding, dilation, res, g):
  x, w = res
  g = materialize(g)
  k = w.shape[0]
  b, h, wd, c = x.shape
  ho, wo = g.shape[1:3]
  hp, wp = h + 2 * padding, wd + 2 * padding
  # Input gradient: the stride-1 correlation of the dilated, padded g with the flipped kernel.
  gd = _transpose_pad(g, k, stride, dilation, hp, wp)
  dxp = _dw_forward(gd, w[::-1, ::-1], 1, 0, dilation)
  # Materialised so this stencil stays one fusion of its own (next to the other ops' gradients
  # XLA hit its fusion-size limit and wrote intermediate terms to memory).
  dx = materialize(dxp[:, padding:padding + h, padding:padding + wd, :])
  # Weight gradient: dw[i, j] = sum_{b,h,w} tap_ij * g. A scan over chunks of a few images
  # computes all k*k tap reductions of a chunk while it sits in cache: looping over taps instead
  # re-read the whole input and cotangent k*k times (the depthwise weight gradient was the
  # largest cost of the supernet backward pass).
  chunk = max(d for d in range(1, b + 1) if b % d == 0 and (d == 1 or d * h * wd * c <= _DW_GRAD_CHUNK_ELEMENTS))
  xp = _pad_hw(x, padding)
  xs = xp.reshape((b // chunk, chunk) + xp.shape[1:])
  gs = g.reshape((b // chunk, chunk) + g.shape[1:])

  def chunk_grad(acc, xg):
    xc, gc = xg
    taps = [jnp.sum(tap * gc, axis=(0, 1, 2)) for _, tap in _taps(xc, k, stride, dilation, ho, wo)]
    return acc + jnp.stack(taps), None

  dw, _ = lax.scan(chunk_grad, jnp.zeros((k * k, c), g.dtype), (xs, gs))
  dw = dw.reshape(k, k, c)
  return dx, dw.astype(w.dtype)


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


def pointwise(x, w, *, impl: str = "auto"):
  """1x1 convolution, ``x: (..., C_in)``, ``w: (C_in, C_out)``: a matrix product on CPU, a convolution elsewhere.

  With ``impl='shift'`` on CPU: ``x @ w`` with its own weight gradient (``_pointwise_dot``).
  Otherwise (``impl='xla'``, or any accelerator): a 1x1 ``conv_general_dilated`` on NHWC inputs,
  which cuDNN runs. As a dot after a reshape, XLA 0.11's GPU compiler aborted in its Triton GEMM
  fusion pass ("triton_tiling_propagation.cc: Check failed: subdim_size_accumulator == dim_size")
  on the supernet's weight step (H100, jax 0.11.2).
  """
  if x.ndim == 4 and (resolve_impl(impl) == "xla" or jax.default_backend() != "cpu"):
    return lax.conv_general_dilated(x, w[None, None], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return _pointwise_dot(x, w)


@jax.custom_vjp
def _pointwise_dot(x, w):
  """``x @ w`` with the weight gradient written as ``x^T g``, ``x`` transposed explicitly.

  Left to itself, XLA:CPU transposed the cotangent instead, fusing the whole BN/conv backward chain
  into that transpose and recomputing it (60 ms instead of a few ms per 1x1 conv in the DARTS_V2 step).
  """
  return x @ w


def _pointwise_fwd(x, w):
  return x @ w, (x, w)


def _pointwise_bwd(res, g):
  x, w = res
  x2 = x.reshape(-1, x.shape[-1])
  g2 = g.reshape(-1, g.shape[-1])
  dw = jnp.transpose(x2) @ g2
  return g @ jnp.transpose(w), dw


_pointwise_dot.defvjp(_pointwise_fwd, _pointwise_bwd)


def conv(x, w, *, stride=1, padding=0, dilation: int = 1, impl: str = "auto"):
  """Dense convolution (PyTorch ``Conv2d``, no bias); ``w: (kh, kw, C_in, C_out)``.

  ``stride`` and ``padding`` may be ints or (h, w) pairs. A 1x1 convolution is ``pointwise``.
  """
  sh, sw = (stride, stride) if isinstance(stride, int) else stride
  ph, pw = (padding, padding) if isinstance(padding, int) else padding
  if w.shape[:2] == (1, 1) and ph == pw == 0:
    if sh > 1 or sw > 1:
      x = x[:, ::sh, ::sw, :]
    return pointwise(x, w[0, 0], impl=impl)
  return lax.conv_general_dilated(
      x, w, (sh, sw), ((ph, ph), (pw, pw)), rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _avg_counts(h, wd, k, stride, padding, count_include_pad):
  ho, wo = out_size(h, k, stride, padding), out_size(wd, k, stride, padding)
  if count_include_pad or padding == 0:
    return np.full((ho, wo), float(k * k), np.float32)
  ones = np.pad(np.ones((h, wd), np.float32), padding)
  counts = np.zeros((ho, wo), np.float32)
  for i in range(k):
    for j in range(k):
      counts += ones[i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
  return counts


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def avg_pool(x, k: int = 3, stride: int = 1, padding: int = 1, count_include_pad: bool = False):
  """Average pooling; by default the padding is excluded from the count (PyTorch
  ``AvgPool2d(count_include_pad=False)``, as quark0 uses)."""
  _, h, wd, _ = x.shape
  counts = _avg_counts(h, wd, k, stride, padding, count_include_pad)
  ho, wo = counts.shape
  total = None
  for _, tap in _taps(_pad_hw(x, padding), k, stride, 1, ho, wo):
    total = tap if total is None else total + tap
  return total * jnp.asarray(1.0 / counts, x.dtype)[None, :, :, None]


def _avg_pool_fwd(x, k, stride, padding, count_include_pad):
  return avg_pool(x, k, stride, padding, count_include_pad), x.shape


def _avg_pool_bwd(k, stride, padding, count_include_pad, shape, g):
  """Scatter g / count back to every tap: one shifted add per tap, on a materialised g."""
  _, h, wd, _ = shape
  counts = _avg_counts(h, wd, k, stride, padding, count_include_pad)
  ho, wo = counts.shape
  hp, wp = h + 2 * padding, wd + 2 * padding
  gd = _transpose_pad(g * jnp.asarray(1.0 / counts, g.dtype)[None, :, :, None], k, stride, 1, hp, wp)
  grad = None
  for _, tap in _taps(gd, k, 1, 1, hp, wp):
    grad = tap if grad is None else grad + tap
  return (materialize(grad[:, padding:padding + h, padding:padding + wd, :]),)


avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, k: int = 3, stride: int = 1, padding: int = 1):
  """Max pooling, padding with -inf (PyTorch ``MaxPool2d``), with a fast custom VJP."""
  return _max_pool_fwd(x, k, stride, padding)[0]


def _max_pool_fwd(x, k, stride, padding):
  _, h, wd, _ = x.shape
  ho, wo = out_size(h, k, stride, padding), out_size(wd, k, stride, padding)
  # reduce_window (not the shifted maxima) so XLA materialises ``out``.
  out = lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, stride, stride, 1),
                          ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  # The window offset (row-major, 0 .. k*k-1) of each output's first maximal tap: PyTorch's
  # arg-max (it keeps the first maximum), so tied windows route their cotangent to one input.
  xp = _pad_hw(x, padding, -jnp.inf)
  arg = jnp.full(out.shape, k * k, x.dtype)
  for (i, j), tap in reversed(list(_taps(xp, k, stride, 1, ho, wo))):
    arg = jnp.where(tap == out, jnp.asarray(i * k + j, x.dtype), arg)
  return out, (x.shape, arg)


def _max_pool_bwd(k, stride, padding, residuals, g):
  """Route each output's cotangent to its first maximal tap (PyTorch's arg-max).

  A stride-1 stencil over the dilated, padded g and arg-max offsets: stencil tap (i, j) reads the
  window for which the input pixel sits at offset (k-1-i, k-1-j); the pixel collects g there
  when that offset is the window's arg-max.
  """
  shape, arg = residuals
  _, h, wd, _ = shape
  hp, wp = h + 2 * padding, wd + 2 * padding
  gd = _transpose_pad(g, k, stride, 1, hp, wp)
  ad = _transpose_pad(arg, k, stride, 1, hp, wp, value=-1.0)  # -1 matches no offset
  zero = jnp.zeros((), g.dtype)
  grad = None
  for ((i, j), g_tap), (_, a_tap) in zip(_taps(gd, k, 1, 1, hp, wp), _taps(ad, k, 1, 1, hp, wp)):
    term = jnp.where(a_tap == (k - 1 - i) * k + (k - 1 - j), g_tap, zero)
    grad = term if grad is None else grad + term
  return (materialize(grad[:, padding:padding + h, padding:padding + wd, :]),)


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
  y = (x - mean.reshape((1,) * (x.ndim - 1) + (-1,))) * inv.reshape((1,) * (x.ndim - 1) + (-1,))
  if bias is not None:
    y = y + bias.reshape((1,) * (x.ndim - 1) + (-1,))
  return y, new_stats
