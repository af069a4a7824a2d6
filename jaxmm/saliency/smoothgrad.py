"""SmoothGrad as a wrapper around any gradient method, and IG + SmoothGrad as paper 004 uses it.

`smoothgrad(method, ...)` returns a method with the same signature that averages `method` over
noisy copies x + eps_s of the input, eps_s ~ N(0, sigma^2), sigma = noise_level x (max - min)
of each example (Smilkov et al.; PAIR saliency's stdev_spread). Noise sample s is drawn from
`fold_in(key, s)`, so the result does not depend on the chunk size and the same key gives the
same map. Kinds: "smoothgrad" (mean), "smoothgrad_squared" (mean of squares) and "vargrad"
(variance, summed from deviations from the first sample's map so that float32 keeps a spread
small next to the mean).
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxmm.saliency import chunking
from jaxmm.saliency import gradients

PyTree = Any
KINDS = ("smoothgrad", "smoothgrad_squared", "vargrad")


def example_range(a: jax.Array) -> jax.Array:
  """max - min of each example of a [N, ...], shaped [N, 1, ..., 1] for broadcasting."""
  flat = a.reshape(a.shape[0], -1)
  return (flat.max(axis=1) - flat.min(axis=1)).reshape((-1,) + (1,) * (a.ndim - 1))


def per_example(key: jax.Array) -> bool:
  """Whether `key` is one typed key per example ([N], jax.random.key) rather than one key."""
  return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1


def fold_in(key: jax.Array, data) -> jax.Array:
  """jax.random.fold_in of one key, or of each key of a per-example batch."""
  if per_example(key):
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(key)
  return jax.random.fold_in(key, data)


def split(key: jax.Array, num: int) -> jax.Array:
  """jax.random.split of one key [num], or of each per-example key [num, N]."""
  if per_example(key):
    return jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, num))(key), 1, 0)
  return jax.random.split(key, num)


def normal(key: jax.Array, a: jax.Array) -> jax.Array:
  """Standard normal noise shaped like a [N, ...]: from one key, or example i's from key[i]
  alone (so it does not depend on the batch the example is in)."""
  if per_example(key):
    return jax.vmap(lambda k, row: jax.random.normal(k, row.shape, row.dtype))(key, a)
  return jax.random.normal(key, a.shape, a.dtype)


def noise_sample(key: jax.Array, index: jax.Array, x: PyTree, sigma: PyTree) -> PyTree:
  """Noise sample `index`: N(0, sigma^2) per element of every leaf of x, drawn from
  fold_in(key, index) (`key`: one key, or one per example)."""
  leaves, treedef = jax.tree.flatten(x)
  keys = split(fold_in(key, index), len(leaves))
  noise = [s * normal(k, a) for k, a, s in zip(keys, leaves, jax.tree.leaves(sigma))]
  return jax.tree.unflatten(treedef, noise)


def check_noise(noise: PyTree, x: PyTree, num_samples: int) -> None:
  """ValueError unless every leaf of the given `noise` is [num_samples] + its leaf of x's
  shape (indexing would clamp a short sample axis and broadcast a wrong batch axis)."""
  noise_leaves, x_leaves = jax.tree.leaves(noise), jax.tree.leaves(x)
  if jax.tree.structure(noise) != jax.tree.structure(x):
    raise ValueError(f"noise must have the structure of the input: {jax.tree.structure(noise)} "
                     f"vs {jax.tree.structure(x)}")
  for n, a in zip(noise_leaves, x_leaves):
    if tuple(n.shape) != (num_samples,) + tuple(a.shape):
      raise ValueError(f"noise of shape {tuple(n.shape)} for an input of shape "
                       f"{tuple(a.shape)}: expected {(num_samples,) + tuple(a.shape)} "
                       f"(num_samples={num_samples} first)")


def shifted_variance(maps: Callable[[jax.Array], PyTree], samples: jax.Array,
                     chunk_size: int) -> PyTree:
  """The variance over samples of maps(samples) (each leaf [S, ...] -> [...]), accumulated
  chunk by chunk (`chunking.sum_over_chunks`, a loop) from deviations d = m - K from K, the
  first sample's map: var = E[d^2] - E[d]^2.

  E[m^2] - E[m]^2 cancels catastrophically in float32 when the spread is small next to the
  mean (a gradient of 3 +- 3e-4 came out exactly 0 at 58% of the pixels); d is of the size
  of the spread, so the subtraction keeps the variance's digits. The first chunk is computed
  outside the loop, to give K without an extra sample.
  """
  size = min(chunk_size, samples.shape[0])
  first = maps(samples[:size])
  shift = jax.tree.map(lambda m: m[0], first)

  def deviation_moments(chunk_maps):
    d = jax.tree.map(lambda m, k: m - k, chunk_maps, shift)
    return jax.tree.map(lambda e: e.sum(0), d), jax.tree.map(lambda e: jnp.square(e).sum(0), d)

  total, total_sq = deviation_moments(first)
  if samples.shape[0] > size:
    rest = chunking.sum_over_chunks(lambda indices: deviation_moments(maps(indices)),
                                    samples[size:], chunk_size)
    total, total_sq = jax.tree.map(jnp.add, (total, total_sq), rest)
  n = samples.shape[0]
  # Rounding can still leave a zero variance slightly negative; a variance is not.
  return jax.tree.map(lambda s, s2: jnp.maximum(s2 / n - jnp.square(s / n), 0.0), total,
                      total_sq)


def smoothgrad(method: Callable, *, num_samples: int = 25, noise_level: float = 0.15,
               kind: str = "smoothgrad", chunk_size: int = 5) -> Callable:
  """Wraps `method(f, x, targets, *, key, **options)` into its SmoothGrad version.

  The wrapped method takes `key` (required: the noise) and optionally `noise`, a pytree like x
  with a leading sample axis [num_samples, N, ...] to use instead of drawing it (e.g. to
  reproduce another library's samples). Samples are vmapped `chunk_size` at a time. `key` is
  one key, or one typed key per example [N] (jax.random.key): then an example's noise comes
  from its own key only, whatever batch it is computed in (the dataset runner keys examples
  by their index in the split).
  """
  if kind not in KINDS:
    raise ValueError(f"unknown SmoothGrad kind {kind!r}; valid kinds: {list(KINDS)}")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")

  @functools.wraps(method)
  def smoothed(f, x, targets, *, key: jax.Array, noise: PyTree | None = None, **options):
    if noise is not None:
      check_noise(noise, x, num_samples)
    sigma = jax.tree.map(lambda a: noise_level * example_range(a), x)
    noise_key, method_key = split(key, 2)

    def attribution(index):
      eps = (noise_sample(noise_key, index, x, sigma) if noise is None
             else jax.tree.map(lambda n: n[index], noise))
      noisy = jax.tree.map(jnp.add, x, eps)
      return method(f, noisy, targets, key=fold_in(method_key, index), **options)

    maps = jax.vmap(attribution)
    samples = jnp.arange(num_samples)
    if kind == "vargrad":
      return shifted_variance(maps, samples, chunk_size)
    moment = (lambda m: m) if kind == "smoothgrad" else jnp.square
    total = chunking.sum_over_chunks(
        lambda indices: jax.tree.map(lambda m: moment(m).sum(0), maps(indices)), samples,
        chunk_size)
    return jax.tree.map(lambda t: t / num_samples, total)

  return smoothed


def ig_smoothgrad(f, x, targets, *, key: jax.Array, baseline: PyTree | None = None,
                  steps: int = 50, rule: str = "riemann_right", num_samples: int = 10,
                  noise_level: float = 0.15, path_chunk_size: int = 10,
                  sample_chunk_size: int = 1, score: str = "logit",
                  multilabel: bool = False) -> PyTree:
  """Integrated Gradients averaged over SmoothGrad noise, as paper 004 (section 2.3, 3.3):
  `steps` (50) points between the (black) baseline and each noisy input, by default with the
  paper's formula, the right Riemann sum (x - x') / m sum_{k=1..m} grad F(x' + k/m (x - x'))
  (`rule="riemann_trapezoid"` or "gausslegendre" are closer to the integral for as many
  steps). Raw values; the paper's [-1, 1] normalisation is the separate step
  `normalize.signed_unit`."""
  method = smoothgrad(gradients.integrated_gradients, num_samples=num_samples,
                      noise_level=noise_level, chunk_size=sample_chunk_size)
  return method(f, x, targets, key=key, baseline=baseline, steps=steps, rule=rule,
                chunk_size=path_chunk_size, score=score, multilabel=multilabel)
