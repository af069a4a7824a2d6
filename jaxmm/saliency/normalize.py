"""Post-processing of raw maps, always a separate named step (methods return raw values).

Maps are per example: [N, H, W] (or [N, H, W, C] before `reduce_channels`).
"""
import jax
import jax.numpy as jnp

EPS = 1e-12
CHANNEL_REDUCTIONS = ("sum", "abs_sum", "max_abs", "l2")


def reduce_channels(maps: jax.Array, how: str = "sum") -> jax.Array:
  """[N, H, W, C] -> [N, H, W]: signed sum (keeps the sign of IG), sum of |.|, max |.|, or L2."""
  if how == "sum":
    return maps.sum(-1)
  if how == "abs_sum":
    return jnp.abs(maps).sum(-1)
  if how == "max_abs":
    return jnp.abs(maps).max(-1)
  if how == "l2":
    return jnp.sqrt(jnp.square(maps).sum(-1))
  raise ValueError(f"unknown channel reduction {how!r}; valid: {list(CHANNEL_REDUCTIONS)}")


def _per_example(fn, maps):
  flat = maps.reshape(maps.shape[0], -1)
  return fn(flat).reshape((-1,) + (1,) * (maps.ndim - 1))


def signed_unit(maps: jax.Array) -> jax.Array:
  """Divides each map by its max |value|: range [-1, 1], sign and zero kept (paper 004)."""
  scale = _per_example(lambda f: jnp.abs(f).max(1), maps)
  return maps / jnp.maximum(scale, EPS)


def min_max(maps: jax.Array) -> jax.Array:
  """Per-map min-max scaling to [0, 1] (a constant map becomes 0)."""
  low = _per_example(lambda f: f.min(1), maps)
  high = _per_example(lambda f: f.max(1), maps)
  return (maps - low) / jnp.maximum(high - low, EPS)


def positive_unit(maps: jax.Array) -> jax.Array:
  """ReLU then division by the max: [0, 1], zero kept (the usual CAM display scaling)."""
  maps = jax.nn.relu(maps)
  return maps / jnp.maximum(_per_example(lambda f: f.max(1), maps), EPS)


NORMALIZATIONS = {"signed_unit": signed_unit, "min_max": min_max, "positive_unit": positive_unit}


def upsample(maps: jax.Array, size: tuple[int, int], method: str = "bilinear") -> jax.Array:
  """[N, h, w] or [N, h, w, C] -> spatial size `size` (half-pixel centres, as torch's
  interpolate with align_corners=False)."""
  shape = (maps.shape[0],) + tuple(size) + maps.shape[3:]
  return jax.image.resize(maps, shape, method=method)
