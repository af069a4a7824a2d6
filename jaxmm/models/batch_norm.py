"""Training-mode BatchNorm (and BatchNorm + ReLU) for jaxmm's ResNets, with fewer passes over
the activations on CPU.

flax's nn.BatchNorm in training mode, differentiated by JAX and fused by XLA, goes over a
ResNet activation [N, H, W, C] about 13 times (reads and writes) between forward and
backward: two reductions for the statistics, the centred activations and the normalised ones
written out, then the ReLU mask, the masked gradient and the centred activations read again
by separate reductions. Here:
  forward:  mean and variance in one pass (`jaxmm_bn_moments`, C++), then the normalisation
            y = (x - mean) a + bias (and ReLU) in one XLA fusion;
  backward: the two per-channel sums the gradients need (of g' and of g' x_hat, g' the
            gradient behind the ReLU) in one pass over g and x (`jaxmm_bn_grad_sums`, C++,
            the ReLU's mask recomputed from x instead of stored), then the input gradient in
            one XLA fusion.
On a 2-core Xeon, forward and backward of the ResNet stem's BatchNorm + ReLU (16 x 112^2 x 64)
take 12.6 ms instead of 27.6, of a first-stage one (16 x 56^2 x 64) 2.4 instead of 4.4.

`train_batch_norm(x, scale, bias, epsilon, relu)` is a custom_jvp; its tangent puts the
per-channel sums behind a primitive linear in them (`BROADCAST`), whose transpose is the C++
kernel (`SUMS`), and the moments are a primitive too (`MOMENTS`, differentiable in x). So
jax.grad reaches the kernels, while jvp, grad of grad in any argument (input-gradient
penalties, hessian-vector products in x) and vmap run too (their extra derivatives go through
the jnp reference implementations). `TrainBatchNorm` is the module: nn.BatchNorm's variables,
names and initialisers, batch statistics only; the ResNets use it where `usable` says so
(float32 on one CPU device with jaxmm's C++ library, as the oneDNN convolutions) and
nn.BatchNorm elsewhere.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from jaxmm.models import conv_ops, onednn_conv


# Whether the ResNets train their BatchNorms with `TrainBatchNorm` where `usable` (read when a
# model is traced). False: flax's nn.BatchNorm everywhere; `python -m jaxmm.benchmark train
# --no-fast_batch_norm` compares.
ENABLED = True


def usable(x: jax.Array) -> bool:
  """Whether `x` may take the C++ reductions: ENABLED and onednn_conv.kernels_usable (float32
  on the one CPU device of this process, jaxmm's library loaded)."""
  return ENABLED and onednn_conv.kernels_usable(x)


def describe() -> str:
  """Which BatchNorm jaxmm's ResNets train float32 models with on this process's devices."""
  if not ENABLED:
    return "flax BatchNorm (--no-fast_batch_norm)"
  if reason := onednn_conv.kernels_excluded():
    return f"flax BatchNorm ({reason})"
  return "jaxmm BatchNorm (C++ reductions)"


def _rows_axes(x):
  return tuple(range(x.ndim - 1))


# ---------------------------------------------------------------- reference implementations

def _moments_reference(x):
  """[2, C]: mean and (biased) variance of x [..., C] over its rows, as nn.BatchNorm's."""
  axes = _rows_axes(x)
  mean = jnp.mean(x, axes)
  return jnp.stack([mean, jnp.maximum(jnp.mean(x * x, axes) - mean * mean, 0.0)])


def _broadcast_reference(w1, w2, x, mean, inv, a, b, *, relu):
  """w1 + x_hat w2 ([C] vectors over x's rows), x_hat = (x - mean) inv, zero where the ReLU
  of y = (x - mean) a + b is (relu=True; b the bias). Linear in (w1, w2)."""
  t = w1 + (x - mean) * inv * w2
  return jnp.where((x - mean) * a + b > 0, t, 0.0) if relu else t


def _sums_reference(g, x, mean, inv, a, b, *, relu):
  """[2, C]: sum g' and sum g' x_hat over the rows, g' = g behind the ReLU (relu=True): the
  transpose of _broadcast_reference in (w1, w2). Linear in g."""
  if relu:
    g = jnp.where((x - mean) * a + b > 0, g, 0.0)
  axes = _rows_axes(x)
  return jnp.stack([jnp.sum(g, axes), jnp.sum(g * ((x - mean) * inv), axes)])


# ---------------------------------------------------------------- the C++ reductions

def _moments_kernel(x):
  """[2, C] mean and variance of x by the C++ kernel."""
  onednn_conv.load()
  return jax.ffi.ffi_call("jaxmm_bn_moments",
                          jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32))(x)


def _sums(g, x, mean, inv, a, b, *, relu):
  onednn_conv.load()  # registers the handlers (cached); raises OneDNNUnavailable saying why not
  return jax.ffi.ffi_call("jaxmm_bn_grad_sums",
                          jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32))(
                              g, x, mean, inv, a, b, relu=int(relu))


def _primitive(name: str, impl: Callable, reference: Callable) -> Primitive:
  """A primitive computed by `impl` (conv_ops.primitive, lowered on any platform; inside
  jax.shard_map, on varying operands, `reference`); its jvp and vmap rules apply jax.jvp and
  jax.vmap to `reference` (the same function in jnp)."""
  p = conv_ops.primitive(name, impl, None, reference)

  def jvp(primals, tangents, **params):
    tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
    return jax.jvp(functools.partial(reference, **params), primals, tangents)

  def vmap(args, dims, **params):
    return jax.vmap(functools.partial(reference, **params), in_axes=dims)(*args), 0

  ad.primitive_jvps[p] = jvp
  batching.primitive_batchers[p] = vmap
  return p


# BROADCAST(w1, w2, x, mean, inv, a, b; relu) -> [..., C], linear in (w1, w2): jnp.
# SUMS(g, x, mean, inv, a, b; relu) -> [2, C], linear in g, its transpose: the C++ kernel.
BROADCAST = _primitive("jaxmm_bn_broadcast", _broadcast_reference, _broadcast_reference)
SUMS = _primitive("jaxmm_bn_sums", _sums, _sums_reference)
# MOMENTS(x) -> [2, C]: the C++ kernel; differentiated in x (a BatchNorm's input differentiated
# twice: the custom_jvp's rule itself differentiated) by `_moments_jvp`.
MOMENTS = conv_ops.primitive("jaxmm_bn_moments", _moments_kernel, None, _moments_reference)


def _moments(x):
  """[2, C] mean and variance of x [..., C] over its rows."""
  return MOMENTS.bind(x)


def _moments_jvp(primals, tangents):
  """The primal from the kernel; the tangent, linear in tx, in jnp (differentiable again, its
  mean being MOMENTS'): d mean = mean(tx), d var = 2 mean((x - mean) tx)."""
  (x,), (tx,) = primals, tangents
  moments = MOMENTS.bind(x)
  tx = ad.instantiate_zeros(tx)
  axes = _rows_axes(x)
  return moments, jnp.stack([jnp.mean(tx, axes), 2.0 * jnp.mean((x - moments[0]) * tx, axes)])


def _moments_batch(args, dims):
  """One kernel call per element (the statistics are per element)."""
  (x,), (dim,) = args, dims
  return lax.map(MOMENTS.bind, jnp.moveaxis(x, dim, 0)), 0


ad.primitive_jvps[MOMENTS] = _moments_jvp
batching.primitive_batchers[MOMENTS] = _moments_batch


def _broadcast_transpose(ct, w1, w2, x, mean, inv, a, b, *, relu):
  assert not any(ad.is_undefined_primal(v) for v in (x, mean, inv, a, b))
  if type(ct) is ad.Zero:
    return (None,) * 7
  s = SUMS.bind(ct, x, mean, inv, a, b, relu=relu)
  return (s[0] if ad.is_undefined_primal(w1) else None,
          s[1] if ad.is_undefined_primal(w2) else None) + (None,) * 5


def _sums_transpose(ct, g, x, mean, inv, a, b, *, relu):
  assert ad.is_undefined_primal(g)
  assert not any(ad.is_undefined_primal(v) for v in (x, mean, inv, a, b))
  if type(ct) is ad.Zero:
    return (None,) * 6
  return (BROADCAST.bind(ct[0], ct[1], x, mean, inv, a, b, relu=relu),) + (None,) * 5


ad.primitive_transposes[BROADCAST] = _broadcast_transpose
ad.primitive_transposes[SUMS] = _sums_transpose


# ---------------------------------------------------------------- the normalisation

def _normalize(x, scale, bias, mean, var, epsilon, relu):
  """(y, inv, a): y = (x - mean) a + bias (ReLU'd when relu), a = scale inv. Centred before
  the scaling: with one value per channel (batch 1, a 1x1 map) y is exactly bias, where
  x a + (bias - mean a) kept the rounding of x a, a = scale / sqrt(epsilon) ~ 1000 there."""
  inv = lax.rsqrt(var + epsilon)
  a = scale * inv
  y = (x - mean) * a + bias
  return (jnp.maximum(y, 0.0) if relu else y), inv, a


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def train_batch_norm(x, scale, bias, epsilon: float, relu: bool):
  """BatchNorm with the batch statistics of x [..., C] (all axes but the last), float32:
  (y, mean, var), y = (x - mean) / sqrt(var + epsilon) * scale + bias, ReLU'd when relu;
  var is the biased variance, as nn.BatchNorm's."""
  mean, var = _moments(x)
  return _normalize(x, scale, bias, mean, var, epsilon, relu)[0], mean, var


@train_batch_norm.defjvp
def _train_batch_norm_jvp(epsilon, relu, primals, tangents):
  x, scale, bias = primals
  tx, tscale, tbias = tangents
  mean, var = _moments(x)
  y, inv, a = _normalize(x, scale, bias, mean, var, epsilon, relu)
  # dmean = u, dvar = 2 v / inv, and with x_hat = (x - mean) inv:
  #   d((x - mean) a + bias) = a tx + (tbias - a u) + x_hat (tscale - a v),
  # the last two terms per channel over the rows: BROADCAST, whose transpose (the backward)
  # is one pass of the C++ kernel.
  axes = _rows_axes(x)
  u = jnp.mean(tx, axes)
  v = jnp.mean(tx * ((x - mean) * inv), axes)
  direct = tx * a
  if relu:
    direct = jnp.where((x - mean) * a + bias > 0, direct, 0.0)
  ty = direct + BROADCAST.bind(tbias - a * u, tscale - a * v, x, mean, inv, a, bias, relu=relu)
  return (y, mean, var), (ty, u, 2.0 * v / inv)


class TrainBatchNorm(nn.Module):
  """nn.BatchNorm in training mode (batch statistics; the running averages updated unless
  initialising), with the same variables (params scale, bias; batch_stats mean, var), names
  and initialisers, by `train_batch_norm`; relu=True returns relu(BatchNorm(x)). float32, the
  channels last.

  x: [..., C] -> [..., C].
  """
  momentum: float = 0.99
  epsilon: float = 1e-5
  relu: bool = False
  scale_init: Callable[..., Any] = nn.initializers.ones
  bias_init: Callable[..., Any] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    scale = self.param("scale", self.scale_init, features, jnp.float32)
    bias = self.param("bias", self.bias_init, features, jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                            features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    y, mean, var = train_batch_norm(x, scale, bias, self.epsilon, self.relu)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
