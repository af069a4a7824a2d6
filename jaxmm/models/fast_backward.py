"""Convs and max pool with gradients that are fast on CPU.

`conv_general_dilated` (the ResNets' convs) runs float32 convs on CPU devices on oneDNN
(`onednn_conv`: forward and both gradients). Elsewhere, and for the max pool, the values are
those of `lax.conv_general_dilated` / `nn.max_pool`; only how the gradient with respect to
the input is computed changes (the parameter gradient is the standard one, and XLA drops it
when only input gradients are taken, as in saliency):
  * strided conv: XLA computes d input as a convolution of the lhs-dilated output gradient,
    which wastes (stride^2 - 1) / stride^2 of its work on inserted zeros (the 7x7/2 ResNet
    stem: 153 ms vs 42 ms forward for 16 images at 224 px, 2-core CPU). Here it is one
    stride-1 convolution of the output gradient with the stride^2 polyphase sub-kernels
    (stacked as output channels), then depth-to-space: 60 ms.
  * max pool: XLA's select-and-scatter takes 253 ms vs 23 ms forward (3x3/2, 16 x 112^2 x 64);
    here the gradient goes to the first maximum of each window through k^2 masked, padded
    adds into stride^2 phase planes: a few elementwise passes (47 ms). On one CPU device in
    float32 the pool and this gradient run in jaxmm's library instead (max_pool.cc, the same
    values): 1.9 ms forward (XLA's 7.9), 18 ms gradient.
All of them are `conv_ops` primitives whose derivatives are primitives too, so jax.jvp, grad of
grad (input-gradient penalties) and hessian-vector products work through the ResNets and
reach the same fast kernels. Inside jax.shard_map, on values that vary over its manual axes,
they are lax's ops (`conv_ops.primitive`).
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmm.models import conv_ops, onednn_conv

NHWC = ("NHWC", "HWIO", "NHWC")

# Whether `conv_general_dilated` and `max_pool` take the fast gradients (read when a model is
# traced). False: plain lax ops and XLA's own gradients (select-and-scatter for the pool, which
# is non-deterministic on GPU). `python -m jaxmm.benchmark train --no-fast_backward` compares.
ENABLED = True


def polyphase_input_gradient(g: jax.Array, kernel: jax.Array, stride: int,
                             padding: Sequence[tuple[int, int]],
                             input_hw: tuple[int, int]) -> jax.Array:
  """d input of y = conv(x, kernel, stride, padding) given g = d y. g [N, Oh, Ow, Cout],
  kernel [Kh, Kw, Cin, Cout] -> [N, H, W, Cin].

  Input row i receives sum_j g[q - j] kernel[s j + r] with i + pad = s q + r: for each phase r
  a stride-1 correlation of g with the flipped sub-kernel kernel[r::s], all phases at once.
  """
  s = stride
  kh, kw, cin, cout = kernel.shape
  n, oh, ow, _ = g.shape
  jh, jw = -(-kh // s), -(-kw // s)
  qh = (input_hw[0] - 1 + padding[0][0]) // s + 1
  qw = (input_hw[1] - 1 + padding[1][0]) // s + 1
  k = jnp.pad(kernel, ((0, s * jh - kh), (0, s * jw - kw), (0, 0), (0, 0)))
  k = k.reshape(jh, s, jw, s, cin, cout)[::-1, :, ::-1]
  k = k.transpose(0, 2, 5, 1, 3, 4).reshape(jh, jw, cout, s * s * cin)
  z = lax.conv_general_dilated(
      g, k.astype(g.dtype), (1, 1), ((jh - 1, max(0, qh - oh)), (jw - 1, max(0, qw - ow))),
      dimension_numbers=NHWC)[:, :qh, :qw]
  z = z.reshape(n, qh, qw, s, s, cin).transpose(0, 1, 3, 2, 4, 5).reshape(
      n, qh * s, qw * s, cin)
  return z[:, padding[0][0]:padding[0][0] + input_hw[0],
           padding[1][0]:padding[1][0] + input_hw[1]]


def _polyphase_input_grad(g, kernel, *, stride, padding, input_hw):
  return polyphase_input_gradient(g, kernel, stride, padding, input_hw)


STRIDED = conv_ops.conv_ops("jaxmm_strided_conv", conv_ops.lax_conv, _polyphase_input_grad,
                            conv_ops.lax_kernel_grad)


def strided_conv(x: jax.Array, kernel: jax.Array, stride: int,
                 padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """NHWC / HWIO convolution with equal strides in both dimensions (no dilation, groups); its
  input gradient is `polyphase_input_gradient`, its kernel gradient XLA's."""
  return STRIDED.forward.bind(x, kernel, stride=stride, padding=padding)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """Drop-in for `lax.conv_general_dilated` (flax nn.Conv's `conv_general_dilated`) for
  square-strided, undilated, ungrouped NHWC convs: on oneDNN where `onednn_conv.usable` (float32
  on CPU devices), else kernels wider than stride + 1 go to `strided_conv`."""
  plain = (ENABLED and lhs.ndim == 4 and len(set(window_strides)) == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and feature_group_count == 1 and not isinstance(padding, str)
           and precision is None and not kwargs and dimension_numbers is not None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))
  stride = int(window_strides[0]) if plain else 0
  padding = tuple(map(tuple, padding)) if plain else padding
  plain = plain and min(min(pair) for pair in padding) >= 0  # negative padding crops: XLA's
  if plain and onednn_conv.usable(lhs, rhs):
    return onednn_conv.conv(lhs, rhs, stride, padding)
  # Only kernels wider than stride + 1 (the 7x7/2 stem): for 3x3/2 and 1x1/2 XLA's own
  # gradient is as fast or faster (measured on a 2-core CPU).
  if plain and stride > 1 and min(rhs.shape[:2]) > stride + 1:
    return strided_conv(lhs, rhs, stride, padding)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision,
                                  **kwargs)


def _pool_max(x, *, window, stride, padding):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                           ((0, 0), padding, padding, (0, 0)))


def max_pool(x: jax.Array, window: int, stride: int, padding: tuple[int, int]) -> jax.Array:
  """Square max pool of NHWC x (padding with -inf), as `nn.max_pool`; its gradient goes to
  the first maximum of each window (`_scatter_to_first_max`) when ENABLED."""
  padding = tuple(padding)
  if not ENABLED:
    return _pool_max(x, window=window, stride=stride, padding=padding)
  return POOL.pool.bind(x, window=window, stride=stride, padding=padding)


def _window_slice(xp, a, b, out_hw, stride):
  n, _, _, c = xp.shape
  return lax.slice(xp, (0, a, b, 0), (n, a + stride * (out_hw[0] - 1) + 1,
                                      b + stride * (out_hw[1] - 1) + 1, c),
                   (1, stride, stride, 1))


def _first_max(x, window, stride, padding):
  """-inf-padded x and, per window, the row-major offset of its first maximum: a running
  strict `>` over the window's positions, as max_pool.cc (a window of -inf values: 0; a window
  holding NaN: its last position).

  The maximum is never compared with a separately computed pool value: XLA may compute the
  same max of a fused producer (BatchNorm + ReLU in the same jit) with different rounding, and
  then no position equals it (119 of 2,304 windows of a ResNet stem sent their gradient to the
  last position)."""
  xp = jnp.pad(x, ((0, 0), padding, padding, (0, 0)), constant_values=-jnp.inf)
  out_hw = tuple((xp.shape[i] - window) // stride + 1 for i in (1, 2))
  offsets = [(a, b) for a in range(window) for b in range(window)]
  best = _window_slice(xp, 0, 0, out_hw, stride)
  first = jnp.zeros(best.shape, jnp.int32)
  has_nan = jnp.isnan(best)
  for k, (a, b) in enumerate(offsets[1:], start=1):
    value = _window_slice(xp, a, b, out_hw, stride)
    above = value > best
    best = jnp.where(above, value, best)
    first = jnp.where(above, k, first)
    has_nan = has_nan | jnp.isnan(value)
  return xp, jnp.where(has_nan, len(offsets) - 1, first)


def _gather_first_max(t, x, *, window, stride, padding):
  """The tangent of the pool: t at each window's first maximum."""
  _, first = _first_max(x, window, stride, padding)
  tp = jnp.pad(t, ((0, 0), padding, padding, (0, 0)))
  out = jnp.zeros(first.shape, t.dtype)
  for k, (a, b) in enumerate((a, b) for a in range(window) for b in range(window)):
    out = jnp.where(first == k, _window_slice(tp, a, b, first.shape[1:3], stride), out)
  return out


def _scatter_to_first_max(g, x, *, window, stride, padding):
  """The transpose of `_gather_first_max`: the gradient of each window goes to its first
  maximum (row-major window order). Each of the stride^2 phase planes of the (padded) input
  gathers the gradients of the windows whose maximum it holds (XLA's select-and-scatter takes
  253 ms vs 23 ms forward for 3x3/2 on 16 x 112^2 x 64, 2-core CPU; this is a few elementwise
  passes)."""
  xp, first = _first_max(x, window, stride, padding)
  n, h, w, c = x.shape
  oh, ow = first.shape[1:3]
  qh, qw = -(-xp.shape[1] // stride), -(-xp.shape[2] // stride)
  offsets = [(a, b) for a in range(window) for b in range(window)]
  # Plane position q receives window q - a // stride of offset a: read shifted windows from
  # copies of `first` and g padded once (an out-of-range window reads offset -1, gradient 0).
  lo = (window - 1) // stride
  pad = ((0, 0), (lo, qh - oh), (lo, qw - ow), (0, 0))
  first_p = jnp.pad(first, pad, constant_values=-1)
  g_p = jnp.pad(g, pad)
  planes = {}
  for k, (a, b) in enumerate(offsets):
    start = (0, lo - a // stride, lo - b // stride, 0)
    limit = (n, start[1] + qh, start[2] + qw, c)
    part = jnp.where(lax.slice(first_p, start, limit) == k, lax.slice(g_p, start, limit),
                     jnp.zeros((), g.dtype))
    key = (a % stride, b % stride)
    planes[key] = part if key not in planes else planes[key] + part
  zero = jnp.zeros((n, qh, qw, c), g.dtype)
  grid = jnp.stack([jnp.stack([planes.get((ra, rb), zero) for rb in range(stride)], 3)
                    for ra in range(stride)], 2)  # [n, qh, s, qw, s, c]
  dx = grid.reshape(n, qh * stride, qw * stride, c)
  return dx[:, padding[0]:padding[0] + h, padding[0]:padding[0] + w]


def _pool_attrs(window, stride, padding) -> dict:
  return {k: np.int64(v) for k, v in dict(window=window, stride=stride, pad_lo=padding[0],
                                          pad_hi=padding[1]).items()}


def _pool(x, *, window, stride, padding):
  """The pool's forward: max_pool.cc where onednn_conv.kernels_usable, else XLA's."""
  if not onednn_conv.kernels_usable(x):
    return _pool_max(x, window=window, stride=stride, padding=padding)
  y = jax.eval_shape(functools.partial(_pool_max, window=window, stride=stride,
                                       padding=padding), x)
  return jax.ffi.ffi_call("jaxmm_max_pool", y)(x, **_pool_attrs(window, stride, padding))


def _scatter(g, x, *, window, stride, padding):
  """The pool's backward: max_pool.cc where onednn_conv.kernels_usable, else XLA's."""
  if not (onednn_conv.kernels_usable(x) and g.dtype == jnp.float32):
    return _scatter_to_first_max(g, x, window=window, stride=stride, padding=padding)
  return jax.ffi.ffi_call("jaxmm_max_pool_scatter", jax.ShapeDtypeStruct(x.shape, x.dtype))(
      g, x, **_pool_attrs(window, stride, padding))


# The gather (the pool's tangent, forward mode only) stays XLA's on every platform. Inside
# jax.shard_map (operands varying over its manual axes) the pool is lax's, with XLA's gradient.
POOL = conv_ops.max_pool_ops("jaxmm_max_pool", _pool, _gather_first_max, _scatter,
                             (_pool_max, _gather_first_max, _scatter_to_first_max))
