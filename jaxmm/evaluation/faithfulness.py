"""Deletion and insertion curves: does the score depend on the pixels a map calls important?

Petsiuk et al. 2018 (RISE), Sec. 4.1 "causal metrics". Pixels are taken in order of decreasing
saliency. Deletion starts from the image and replaces them, most salient first, with a
baseline: a faithful map makes the target score fall fast, a LOW area under the curve (AUC).
Insertion starts from the baseline and puts the image's pixels back in the same order: a
faithful map makes the score rise fast, a HIGH AUC. The score is the target's probability
(softmax over classes, or the label's sigmoid for a multilabel model), as in RISE.

A map is only faithful relative to a reference: `random_order_auc` gives the AUCs of random
pixel orders, which a faithful map beats (lower deletion AUC, higher insertion AUC).

Baselines: RISE deletes to black (zeros; for normalised images the normalised black,
-mean / std per channel, passed as a per-channel baseline) and inserts into a blurred copy of the
image (`blurred_baseline`, std RISE_BLUR_SIGMA pixels by default), because inserting into black
makes images far off the data distribution whose scores react to any pixel, not to the salient
ones.

A map holding a NaN or an infinity has no pixel order (argsort would put NaN first and give a
plausible curve), so its curves and AUCs are NaN, as the ROI metrics treat such maps.

The `steps + 1` perturbation levels of a curve are vmapped over in chunks of `chunk_size`
levels (a `lax.scan` over chunks), so peak memory is that of chunk_size * N images.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.evaluation.roi import constant_maps, nonfinite_maps
from jaxmm.saliency.targets import target_scores

MODES = ("deletion", "insertion")
# RISE's evaluation blurs 224 px images with a Gaussian of std 5 px (its `gkern(11, 5)`, a
# kernel cut at 11 taps; `blurred_baseline` cuts at 4 std, as scipy's gaussian_filter).
RISE_BLUR_SIGMA = 5.0
ModelFn = Callable[[jax.Array], jax.Array]  # images [N, H, W, C] -> logits [N, K]


def pixel_order(maps: jax.Array) -> jax.Array:
  """Flat pixel indices by decreasing saliency, ties in increasing index. [N, H, W] -> [N, H*W].

  Meaningless for a map with a NaN (sorted first); `perturbation_curve` gives such maps NaN."""
  return jnp.argsort(maps.reshape(maps.shape[0], -1), axis=-1, descending=True, stable=True)


def pixel_ranks(maps: jax.Array) -> jax.Array:
  """Each pixel's position in `pixel_order` (0 = most salient). [N, H, W] -> int [N, H, W]."""
  return jnp.argsort(pixel_order(maps), axis=-1).reshape(maps.shape)


def perturbed_counts(num_pixels: int, steps: int) -> np.ndarray:
  """Pixels perturbed at step k = 0..steps: round(k / steps * num_pixels), halves rounded up.

  int32 [steps + 1], from 0 to num_pixels."""
  k = np.arange(steps + 1, dtype=np.int64)
  return ((2 * k * num_pixels + steps) // (2 * steps)).astype(np.int32)


def perturbed_images(x: jax.Array, baseline: jax.Array, ranks: jax.Array, count: jax.Array,
                     mode: str) -> jax.Array:
  """x with its `count` most salient pixels (all channels) set to the baseline (deletion), or
  the baseline with those pixels of x (insertion). x, baseline [N, H, W, C]; ranks [N, H, W]."""
  first = (ranks < count)[..., None]
  return jnp.where(first, baseline, x) if mode == "deletion" else jnp.where(first, x, baseline)


def map_over_chunks(fn: Callable[[jax.Array], Any], items: jax.Array, chunk_size: int) -> Any:
  """[fn(item) for item in items], stacked: vmapped within chunks of `chunk_size` items, a scan
  over chunks (a loop: peak memory is one chunk's), the shorter last chunk vmapped on its own."""
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  size = min(chunk_size, items.shape[0])
  full, rest = divmod(items.shape[0], size)
  head = items[:full * size].reshape((full, size) + items.shape[1:])
  _, out = jax.lax.scan(lambda carry, chunk: (carry, jax.vmap(fn)(chunk)), None, head)
  out = jax.tree.map(lambda a: a.reshape((full * size,) + a.shape[2:]), out)
  if rest:
    tail = jax.vmap(fn)(items[full * size:])
    out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, tail)
  return out


def perturbation_curve(f: ModelFn, x: jax.Array, maps: jax.Array, targets: jax.Array, *,
                       mode: str = "deletion", steps: int = 20, baseline: Any = 0.0,
                       chunk_size: int = 5, multilabel: bool = False,
                       score: str = "probability") -> dict[str, jax.Array]:
  """The deletion or insertion curve of each example and its AUC.

  f: images [N, H, W, C] -> logits [N, K]; x [N, H, W, C]; maps [N, H, W]; targets int [N];
  baseline: scalar, per channel [C] or images [N, H, W, C]. Step k perturbs the first
  `perturbed_counts(H*W, steps)[k]` pixels of `pixel_order(maps)`. score: "probability"
  (softmax, or sigmoid if multilabel) or "logit". Jittable with f, mode, steps, chunk_size,
  multilabel and score static.
  Returns {"fractions": [steps + 1] perturbed fraction of pixels (0 .. 1), "curve":
  [N, steps + 1] target scores, "auc": [N] trapezoid area under the curve over fractions};
  curve and AUC are NaN for a map holding a non-finite value (`nonfinite_maps`) or a constant
  one (`constant_maps`: no pixel order, which its row-major ranks had stood in for).
  """
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; valid modes: {list(MODES)}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if maps.shape != x.shape[:3]:
    raise ValueError(f"maps must be [N, H, W] = {tuple(x.shape[:3])}, got {tuple(maps.shape)}")
  baseline = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
  ranks = pixel_ranks(maps)
  counts = perturbed_counts(ranks[0].size, steps)

  def score_at(count):
    logits = f(perturbed_images(x, baseline, ranks, count, mode))
    return target_scores(logits, targets, score, multilabel)

  curve = map_over_chunks(score_at, jnp.asarray(counts), chunk_size).T
  curve = jnp.where((nonfinite_maps(maps) | constant_maps(maps))[:, None], jnp.nan, curve)
  fractions = jnp.asarray(counts / ranks[0].size, jnp.float32)
  return {"fractions": fractions, "curve": curve,
          "auc": jnp.trapezoid(curve, fractions, axis=-1)}


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised 1-D Gaussian taps out to radius int(truncate * sigma + 0.5), as scipy's
  `gaussian_filter`. float32 [2 * radius + 1]."""
  radius = int(truncate * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def blurred_baseline(x: jax.Array, sigma: float = RISE_BLUR_SIGMA,
                     truncate: float = 4.0) -> jax.Array:
  """Gaussian blur of each image and channel over H and W (std `sigma` pixels, separable).

  The insertion baseline of RISE: it removes the fine detail a classifier reads while keeping
  the image's colours and layout, so inserting pixels does not start from an out-of-distribution
  black image. (For deletion RISE uses black.) Borders are mirrored ("reflect" in scipy's
  `gaussian_filter`), so a constant image stays constant. Blurring normalised images equals
  normalising blurred ones (the normalisation is affine per channel). x [N, H, W, C] -> same.
  """
  if sigma <= 0:
    return x
  k = jnp.asarray(gaussian_kernel(sigma, truncate), x.dtype)
  r, c = k.shape[0] // 2, x.shape[-1]
  padded = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
  conv = lambda y, kernel: jax.lax.conv_general_dilated(
      y, jnp.tile(kernel, (1, 1, 1, c)), (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
      precision=jax.lax.Precision.HIGHEST)
  return conv(conv(padded, k.reshape(-1, 1, 1, 1)), k.reshape(1, -1, 1, 1))


def deletion_insertion(f: ModelFn, x: jax.Array, maps: jax.Array, targets: jax.Array, *,
                       baseline: Any = 0.0, insertion_baseline: Any = None,
                       **options) -> dict[str, jax.Array]:
  """Deletion and insertion curves of the same maps (`perturbation_curve` options).

  baseline: what deletion replaces pixels with; insertion_baseline: what insertion starts
  from (None: `baseline`; RISE uses `blurred_baseline(x, sigma)`).
  Returns {"fractions": [S+1], "deletion": [N, S+1], "insertion": [N, S+1],
  "deletion_auc": [N] (lower = more faithful), "insertion_auc": [N] (higher = more faithful)}.
  """
  insertion_baseline = baseline if insertion_baseline is None else insertion_baseline
  deletion = perturbation_curve(f, x, maps, targets, mode="deletion", baseline=baseline,
                                **options)
  insertion = perturbation_curve(f, x, maps, targets, mode="insertion",
                                 baseline=insertion_baseline, **options)
  return {"fractions": deletion["fractions"], "deletion": deletion["curve"],
          "insertion": insertion["curve"], "deletion_auc": deletion["auc"],
          "insertion_auc": insertion["auc"]}


def random_order_auc(f: ModelFn, x: jax.Array, targets: jax.Array, key: jax.Array, *,
                     num_orders: int = 1, **options) -> dict[str, jax.Array]:
  """`deletion_insertion` for uniformly random pixel orders, averaged over `num_orders`
  orders drawn from `key` (curves and AUCs): the reference a faithful map must beat.

  Same options and outputs as `deletion_insertion`; x [N, H, W, C], targets [N]."""
  runs = [deletion_insertion(f, x, jax.random.uniform(k, x.shape[:3]), targets, **options)
          for k in jax.random.split(key, num_orders)]
  return jax.tree.map(lambda *values: jnp.mean(jnp.stack(values), axis=0), *runs)
