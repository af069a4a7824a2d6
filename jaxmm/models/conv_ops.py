"""Convolutions and max pooling as JAX primitives whose derivatives are primitives too.

A convolution y = conv(x, kernel) is bilinear, and so are its two gradients:
  input_grad(g, kernel) = d<g, conv(x, kernel)>/dx
  kernel_grad(x, g) = d<g, conv(x, kernel)>/dkernel
Each of the three transposes into the others (<dx, input_grad(g, k)> = <conv(dx, k), g> =
<k, kernel_grad(dx, g)>), so three primitives with `ad.defbilinear` rules are closed under
jvp and transposition: jax.grad, jax.jvp, grad of grad (input-gradient penalties), hessians and
vmap of any of them all reach the backend's own forward and gradient kernels, which a
custom_vjp cannot (no forward mode; its backward is not differentiable when it is a custom
call). `conv_ops` builds such a family from three implementations (oneDNN custom calls, or
lax ops with a faster input gradient).

Max pooling is the same with two linear maps: the tangent of a max pool is the input tangent
at each window's first maximum (`gather`), and its transpose sends each window's cotangent
there (`scatter`); `max_pool_ops` builds the pool, gather and scatter primitives.

Under vmap, operands whose vmapped axis is the only one are folded into the images (one larger
call: a conv's forward and input gradient, and every pooling primitive, are per image);
otherwise the calls run one after another with lax.map.

Inside jax.shard_map, where an operand varies over the manual mesh axes, each primitive computes
its `reference` in lax ops instead (`primitive`): the kernels' results do not carry that type,
so their cotangents would not match the operands' (an error), or JAX would take per-device
values for replicated ones (wrong kernel gradients over several devices).
"""
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir


class ConvOps(NamedTuple):
  forward: Primitive  # (x [N,H,W,I], kernel [Kh,Kw,I,O]; stride, padding) -> [N,Oh,Ow,O]
  input_grad: Primitive  # (g [N,Oh,Ow,O], kernel; stride, padding, input_hw) -> [N,H,W,I]
  kernel_grad: Primitive  # (x, g; stride, padding, kernel_hw) -> [Kh,Kw,I,O]


# Each ConvOps primitive and its field name (for FLOP counts: `model_flops`).
_CONV_ROLES: dict = {}


def model_flops(eqn) -> float | None:
  """2 x the multiply-adds of a jaxpr equation of a ConvOps primitive (each of the three does
  as many as the forward convolution: output elements x Kh x Kw x I), None for any other."""
  role = _CONV_ROLES.get(eqn.primitive)
  if role is None:
    return None
  a, b = (v.aval.shape for v in eqn.invars)
  out = eqn.outvars[0].aval.shape
  # forward (x, k) -> y; input_grad (g, k) -> dx; kernel_grad (x, g) -> dk.
  y, kernel = {"forward": (out, b), "input_grad": (a, b), "kernel_grad": (b, out)}[role]
  return 2.0 * math.prod(y) * math.prod(kernel[:3])


class PoolOps(NamedTuple):
  pool: Primitive  # (x [N,H,W,C]; window, stride, padding) -> [N,Oh,Ow,C]
  gather: Primitive  # (t [N,H,W,C], x; ...) -> [N,Oh,Ow,C]: t at each window's first max
  scatter: Primitive  # (g [N,Oh,Ow,C], x; ...) -> [N,H,W,C]: the transpose of gather


def varying(x) -> bool:
  """Whether x varies over manual mesh axes (a value per device inside jax.shard_map)."""
  aval = jax.typeof(x)
  axis_type = getattr(aval, "manual_axis_type", None)  # JAX 0.10; `vma` before
  return bool(axis_type.varying if axis_type is not None else getattr(aval, "vma", ()))


class _Primitive(Primitive):
  """A Primitive that binds as `reference(*operands, **params)` (plain JAX code, which types
  and differentiates per-device values) where an operand is `varying`."""

  def __init__(self, name: str, reference: Callable):
    super().__init__(name)
    self.reference = reference

  def bind(self, *args, **params):
    if any(map(varying, args)):
      return self.reference(*args, **params)
    return super().bind(*args, **params)


def primitive(name: str, impl: Callable, platform: str | None,
              reference: Callable | None = None) -> Primitive:
  """A primitive computed by `impl(*operands, **params)` (JAX code, traced when lowered), and
  by `reference` (the same function in lax ops; default `impl`) inside jax.shard_map where an
  operand varies over its manual axes."""
  p = _Primitive(name, reference or impl)
  p.def_impl(impl)

  @p.def_abstract_eval
  def _(*avals, **params):
    out = jax.eval_shape(functools.partial(impl, **params),
                         *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
    return jax.core.ShapedArray(out.shape, out.dtype)

  # Not cacheable: a cached lowering is emitted without the devices, and an implementation
  # may be partitioned over them (onednn_conv's custom_partitioning).
  mlir.register_lowering(p, mlir.lower_fun(impl, multiple_results=False), platform=platform,
                         cacheable=False)
  return p


def _to_front(x, dim, size):
  """x with its vmapped axis first (broadcast when it has none)."""
  if dim is None:
    return jnp.broadcast_to(x, (size,) + x.shape)
  return jnp.moveaxis(x, dim, 0)


def _batch_rule(p: Primitive, per_image: tuple[bool, ...]):
  """vmap rule for a primitive whose result is per image in the operands marked in
  `per_image` (their leading axis is the images): when only such operands are vmapped, the
  vmapped axis folds into the images (an unmapped per-image operand is repeated to match);
  otherwise one call per element (lax.map), closing over the unmapped operands."""
  def rule(args, dims, **params):
    mapped = [d is not None for d in dims]
    size = next(a.shape[d] for a, d, m in zip(args, dims, mapped) if m)
    if all(per for per, m in zip(per_image, mapped) if m):
      fronts = [_to_front(a, d, size) if per else a
                for a, d, per in zip(args, dims, per_image)]
      out = p.bind(*(f.reshape((-1,) + f.shape[2:]) if per else f
                     for f, per in zip(fronts, per_image)), **params)
      return out.reshape((size, -1) + out.shape[1:]), 0
    moving = [_to_front(a, d, size) for a, d, m in zip(args, dims, mapped) if m]

    def one(elements):
      it = iter(elements)
      return p.bind(*(next(it) if m else a for a, m in zip(args, mapped)), **params)

    return lax.map(one, moving), 0

  return rule


def lax_conv(x, kernel, *, stride, padding):
  """The NHWC / HWIO convolution in lax: every ConvOps family's values, and its reference."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def lax_input_grad(g, kernel, *, stride, padding, input_hw):
  """d<g, lax_conv(x, kernel)>/dx, x [N, *input_hw, I]."""
  x = jax.ShapeDtypeStruct((g.shape[0], *input_hw, kernel.shape[2]), g.dtype)
  return jax.linear_transpose(lambda x: lax_conv(x, kernel, stride=stride, padding=padding),
                              x)(g)[0]


def lax_kernel_grad(x, g, *, stride, padding, kernel_hw):
  """d<g, lax_conv(x, kernel)>/dkernel, kernel [*kernel_hw, I, O]."""
  kernel = jax.ShapeDtypeStruct((*kernel_hw, x.shape[-1], g.shape[-1]), x.dtype)
  return jax.linear_transpose(lambda k: lax_conv(x, k, stride=stride, padding=padding),
                              kernel)(g)[0]


def conv_ops(name: str, forward: Callable, input_grad: Callable, kernel_grad: Callable,
             platform: str | None = None) -> ConvOps:
  """The three bilinear convolution primitives `name`_{forward,input_grad,kernel_grad}, from
  implementations forward(x, kernel, *, stride, padding), input_grad(g, kernel, *, stride,
  padding, input_hw) and kernel_grad(x, g, *, stride, padding, kernel_hw); `platform`
  restricts where they lower (None: everywhere). Their references are lax_conv,
  lax_input_grad and lax_kernel_grad."""
  ops = ConvOps(primitive(f"{name}_forward", forward, platform, lax_conv),
                primitive(f"{name}_input_grad", input_grad, platform, lax_input_grad),
                primitive(f"{name}_kernel_grad", kernel_grad, platform, lax_kernel_grad))

  def conv(x, kernel, stride, padding):
    return ops.forward.bind(x, kernel, stride=stride, padding=padding)

  def dx(g, kernel, stride, padding, x_aval):
    return ops.input_grad.bind(g, kernel, stride=stride, padding=padding,
                               input_hw=tuple(x_aval.shape[1:3]))

  def dk(x, g, stride, padding, kernel_aval):
    return ops.kernel_grad.bind(x, g, stride=stride, padding=padding,
                                kernel_hw=tuple(kernel_aval.shape[:2]))

  # forward(x, k): transposes are input_grad(ct, k) and kernel_grad(x, ct).
  ad.defbilinear(ops.forward,
                 lambda ct, x, k, **p: dx(ct, k, p["stride"], p["padding"], x.aval),
                 lambda ct, x, k, **p: dk(x, ct, p["stride"], p["padding"], k.aval))
  # input_grad(g, k): <dx, input_grad(g, k)> = <conv(dx, k), g> = <k, kernel_grad(dx, g)>.
  ad.defbilinear(ops.input_grad,
                 lambda ct, g, k, **p: conv(ct, k, p["stride"], p["padding"]),
                 lambda ct, g, k, **p: dk(ct, g, p["stride"], p["padding"], k.aval))
  # kernel_grad(x, g): <dk, kernel_grad(x, g)> = <conv(x, dk), g> = <x, input_grad(g, dk)>.
  ad.defbilinear(ops.kernel_grad,
                 lambda ct, x, g, **p: dx(g, ct, p["stride"], p["padding"], x.aval),
                 lambda ct, x, g, **p: conv(x, ct, p["stride"], p["padding"]))
  _CONV_ROLES.update({p: role for role, p in ops._asdict().items()})
  # The forward and the input gradient are per image in their first operand; the kernel
  # gradient sums over the images.
  batching.primitive_batchers[ops.forward] = _batch_rule(ops.forward, (True, False))
  batching.primitive_batchers[ops.input_grad] = _batch_rule(ops.input_grad, (True, False))
  batching.primitive_batchers[ops.kernel_grad] = _batch_rule(ops.kernel_grad, (False, False))
  return ops


def max_pool_ops(name: str, pool: Callable, gather: Callable, scatter: Callable,
                 references: tuple[Callable, Callable, Callable]) -> PoolOps:
  """The max-pool primitives from pool(x, *, window, stride, padding), gather(t, x, ...) and
  scatter(g, x, ...) (the last two linear in their first operand; the choice of maximum is
  locally constant in x, so x carries no derivative), and their references in lax ops."""
  ops = PoolOps(*(primitive(f"{name}_{role}", impl, None, reference) for role, impl, reference
                  in zip(PoolOps._fields, (pool, gather, scatter), references)))

  ad.defjvp(ops.pool, lambda t, x, **params: ops.gather.bind(t, x, **params))
  for linear, transpose in ((ops.gather, ops.scatter), (ops.scatter, ops.gather)):
    ad.defjvp(linear, functools.partial(lambda p, dt, t, x, **params: p.bind(dt, x, **params),
                                        linear), None)
    ad.primitive_transposes[linear] = functools.partial(_linear_transpose, transpose)
  # All three are per image in every operand.
  for p in ops:
    batching.primitive_batchers[p] = _batch_rule(p, (True,) * (1 if p is ops.pool else 2))
  return ops


def _linear_transpose(transpose: Primitive, ct, t, x, **params):
  assert ad.is_undefined_primal(t) and not ad.is_undefined_primal(x)
  if type(ct) is ad.Zero:
    return ad.Zero(t.aval.to_ct_aval()), None
  return transpose.bind(ct, x, **params), None
