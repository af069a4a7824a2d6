"""Agreement of saliency maps with binary regions of interest (ROI), per image, in JAX.

Every function takes maps float [N, H, W] and masks bool / uint8 [N, H, W] (non-zero = inside
the ROI) and returns one value per image, [N]. Maps come already normalised by the caller
(signed maps in [-1, 1], CAMs in [0, 1]; see `jaxmm.saliency.normalize`): thresholds apply to
the map as given, and a pixel is "salient at t" iff map >= t.

  dice_curve / best_threshold_dice   thresholded Dice on a 0.01 grid, best per image
                                     (Sec. 3.5 of 004_0180605a8214b9d6.txt)
  spearman_with_mask                 Spearman's rank correlation of map and mask (same section)
  roc_auc_with_mask                  Mann-Whitney AUC of the map as a score for the mask
  pointing_game                      the map's maximum lies in the (dilated) mask
  relevance_mass / relevance_rank    Arras et al. 2022 ("CLEVR-XAI") mass and rank accuracy
  mass_fraction                      positive mass on any region (e.g. a confounder mask)
  roi_metrics                        all of the above over a dataset, in bounded-memory batches

An empty mask gives NaN for every metric (there is nothing to agree with); so does a full mask
for the rank metrics (Spearman, ROC-AUC), whose second class is then empty, and so does a map
with a NaN or infinite value (a failed attribution: its ranks, maximum and mass are undefined,
and a score for it would be counted as a real one). A constant map (an all-zero CAM) has no
maximum, order or positive mass: Spearman, the pointing game, relevance mass and relevance
rank are NaN for it (the first maximum and a stable sort had scored it by where its ROI lay,
a "hit" for an ROI at the top-left corner); its Dice (at threshold 0) and ROC-AUC (0.5, every
pixel tied) are defined.
"""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

# Multiples of 0.01 from 0 to 1, each the float32 nearest k / 100 (Sec. 3.5 of 004_...txt).
THRESHOLDS = (np.arange(101) / 100).astype(np.float32)
METRICS = ("dice", "dice_threshold", "spearman", "roc_auc", "pointing_game", "relevance_mass",
           "relevance_rank")
# The agreement scores, all "higher is better"; "dice_threshold" is where the best Dice is
# reached, not a score, so it is left out.
HIGHER_IS_BETTER = frozenset(METRICS) - {"dice_threshold"}


def _flat(maps: jax.Array, masks: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[N, H, W] maps and masks -> float32 [N, P] and bool [N, P], P = H * W."""
  n = maps.shape[0]
  return (jnp.asarray(maps, jnp.float32).reshape(n, -1),
          (jnp.asarray(masks) != 0).reshape(n, -1))


def _nan_where(invalid: jax.Array, values: jax.Array) -> jax.Array:
  return jnp.where(invalid, jnp.nan, values)


def nonfinite_maps(maps) -> jax.Array | np.ndarray:
  """Maps [N, ...] holding a NaN or an infinity, bool [N]: jax in, jax out (jittable);
  NumPy in, NumPy out (float64 maps are checked as they are). The ROI metrics, the
  faithfulness curves and the sanity similarities of such a map are NaN."""
  xp = jnp if isinstance(maps, jax.Array) else np
  return ~xp.isfinite(maps.reshape(maps.shape[0], -1)).all(1)


def constant_maps(maps) -> jax.Array | np.ndarray:
  """Maps [N, ...] whose values are all equal, bool [N] (jax in, jax out; NumPy in, NumPy
  out): they rank no pixel above another."""
  flat = maps.reshape(maps.shape[0], -1)
  return flat.max(1) == flat.min(1)


def warn_nonfinite(broken, names, subject: str, consequence: str, stacklevel: int = 2) -> None:
  """RuntimeWarning '<k> of <n> <subject> NaN or infinite values (examples <the first five of
  `names` [n] flagged in `broken` [n]>); <consequence>'. stacklevel: as warnings.warn's,
  counted from the caller."""
  broken = np.asarray(broken)
  bad = np.asarray(names)[broken]
  warnings.warn(f"{len(bad)} of {len(broken)} {subject} NaN or infinite values (examples "
                f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}); "
                f"{consequence}", RuntimeWarning, stacklevel=stacklevel + 1)


def _threshold_counts(maps: jax.Array, masks: jax.Array,
                      thresholds: jax.Array) -> tuple[jax.Array, jax.Array]:
  """|S(t)| and TP(t) = |S(t) & ROI| for every threshold, int32 [N, T] each.

  Each pixel falls in bin b = number of thresholds <= value (searchsorted, side='right'), so it
  is salient at t_j iff b > j; a reverse cumulative sum of the per-image bin histograms gives
  the counts for all T thresholds without a [N, T, H, W] tensor.
  """
  x, roi = _flat(maps, masks)
  n, num_t = x.shape[0], thresholds.shape[0]
  bins = jnp.searchsorted(thresholds, x, side="right")  # NaN sorts last: bin T (masked later)
  segment = (jnp.arange(n)[:, None] * (num_t + 1) + bins).ravel()

  def histogram(weights):
    counts = jax.ops.segment_sum(weights.ravel(), segment, num_segments=n * (num_t + 1))
    counts = counts.reshape(n, num_t + 1)
    return jnp.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]

  return histogram(jnp.ones_like(bins)), histogram(roi.astype(jnp.int32))


def dice_curve(maps: jax.Array, masks: jax.Array, thresholds=THRESHOLDS) -> jax.Array:
  """Dice(t) = 2 TP(t) / (|S(t)| + |ROI|) with S(t) = {map >= t}, float32 [N, T].

  `thresholds` [T] must be sorted ascending. An empty ROI or a non-finite map gives NaN at
  every t; otherwise the denominator is at least 1 and an empty S(t) gives 0.
  """
  thresholds = jnp.asarray(thresholds, jnp.float32)
  salient, tp = _threshold_counts(maps, masks, thresholds)
  x, roi = _flat(maps, masks)
  roi_size = roi.sum(1, keepdims=True)
  dice = (2 * tp).astype(jnp.float32) / (salient + roi_size).astype(jnp.float32)
  return _nan_where((roi_size == 0) | nonfinite_maps(x)[:, None], dice)


def best_threshold_dice(maps: jax.Array, masks: jax.Array,
                        thresholds=THRESHOLDS) -> dict[str, jax.Array]:
  """The best Dice over the threshold grid and the threshold achieving it, [N] each.

  Sec. 3.5 of 004_...txt picks, per image, the multiple of 0.01 in [0, 1] maximising Dice.
  Ties go to the smallest such threshold. An empty ROI or a non-finite map gives NaN for both.
  """
  thresholds = jnp.asarray(thresholds, jnp.float32)
  curve = dice_curve(maps, masks, thresholds)
  invalid = jnp.isnan(curve).all(1)
  best = jnp.argmax(jnp.where(jnp.isnan(curve), -1.0, curve), axis=1)  # first maximum
  dice = jnp.take_along_axis(curve, best[:, None], axis=1)[:, 0]
  return {"dice": _nan_where(invalid, dice), "threshold": _nan_where(invalid, thresholds[best])}


def _average_ranks_1d(x: jax.Array) -> jax.Array:
  """1-based ranks of x [P], ties sharing the mean of their ranks (scipy.stats.rankdata)."""
  sorted_x = jnp.sort(x)
  first = jnp.searchsorted(sorted_x, x, side="left")
  after_last = jnp.searchsorted(sorted_x, x, side="right")
  # Tied values fill 0-based positions first .. after_last - 1: mean 1-based rank below.
  return (first + after_last + 1).astype(jnp.float32) / 2


def average_ranks(x: jax.Array) -> jax.Array:
  """Average ranks of each row of x [N, P] (ties get the mean of their 1-based ranks)."""
  return jax.vmap(_average_ranks_1d)(x)


def binary_average_ranks(roi: jax.Array) -> jax.Array:
  """`average_ranks` of bool rows [N, P] in closed form: the n0 False values share rank
  (n0 + 1) / 2, the n1 True values n0 + (n1 + 1) / 2 (no sort needed)."""
  n1 = roi.sum(1, keepdims=True).astype(jnp.float32)
  n0 = roi.shape[1] - n1
  return jnp.where(roi, n0 + (n1 + 1) / 2, (n0 + 1) / 2)


def _rank_correlation(ranks_a: jax.Array, ranks_b: jax.Array) -> jax.Array:
  """Pearson correlation of rows of average ranks [N, P]; NaN where a row is all ties.

  Average ranks of P values always have mean (P + 1) / 2, so centring is exact (half-integers)
  and a constant row becomes exactly zero; dividing by P keeps float32 sums accurate at 224 px.
  """
  num_pixels = ranks_a.shape[1]
  a = (ranks_a - (num_pixels + 1) / 2) / num_pixels
  b = (ranks_b - (num_pixels + 1) / 2) / num_pixels
  denom = jnp.sqrt((a * a).sum(1) * (b * b).sum(1))
  return _nan_where(denom == 0, (a * b).sum(1) / jnp.where(denom == 0, 1.0, denom))


def spearman_with_mask(maps: jax.Array, masks: jax.Array) -> jax.Array:
  """Spearman's rho between each map and its binary mask, [N] (Sec. 3.5 of 004_...txt).

  The Pearson correlation of the average ranks of the map's pixels and of the mask's, as
  scipy.stats.spearmanr. NaN when the mask is empty or full or the map is constant or not
  finite.
  """
  x, roi = _flat(maps, masks)
  return _nan_where(nonfinite_maps(x),
                    _rank_correlation(average_ranks(x), binary_average_ranks(roi)))


def roc_auc_with_mask(maps: jax.Array, masks: jax.Array) -> jax.Array:
  """AUC of the map as a score separating ROI from other pixels, [N].

  Mann-Whitney: (sum of the ROI pixels' average ranks - n1 (n1 + 1) / 2) / (n1 n0), as
  sklearn.metrics.roc_auc_score(mask.ravel(), map.ravel()); ties count one half. NaN when the
  mask is empty or full or the map is not finite.
  """
  x, roi = _flat(maps, masks)
  n1 = roi.sum(1).astype(jnp.float32)
  n0 = x.shape[1] - n1
  invalid = (n1 == 0) | (n0 == 0) | nonfinite_maps(x)
  # The same sum as the formula, spread over the ROI pixels so each term is O(1) in float32.
  terms = (average_ranks(x) - (n1[:, None] + 1) / 2) / jnp.where(invalid, 1.0, n0)[:, None]
  return _nan_where(invalid, jnp.where(roi, terms, 0.0).sum(1) / jnp.where(invalid, 1.0, n1))


def dilate(masks: jax.Array, tolerance: int) -> jax.Array:
  """Square dilation of bool masks [N, H, W] by `tolerance` pixels (a (2t+1)^2 max-pool)."""
  masks = jnp.asarray(masks) != 0
  if tolerance == 0:
    return masks
  size = 2 * tolerance + 1
  return jax.lax.reduce_window(masks, False, jax.lax.max, (1, size, size), (1, 1, 1), "SAME")


def pointing_game(maps: jax.Array, masks: jax.Array, tolerance: int = 0) -> jax.Array:
  """1.0 if the map's maximum lies in the mask dilated by `tolerance` pixels, else 0.0, [N].

  The maximum is the first one in row-major order. An empty mask, or a constant or non-finite
  map, gives NaN.
  """
  x, roi = _flat(maps, masks)
  near_roi = dilate(masks, tolerance).reshape(x.shape[0], -1)
  hit = jnp.take_along_axis(near_roi, jnp.argmax(x, axis=1)[:, None], axis=1)[:, 0]
  invalid = ~roi.any(1) | nonfinite_maps(x) | constant_maps(x)
  return _nan_where(invalid, hit.astype(jnp.float32))


def mass_fraction(maps: jax.Array, region: jax.Array) -> jax.Array:
  """Positive mass inside `region` / total positive mass, [N].

  With region = the ROI it is the relevance mass accuracy of Arras et al. 2022; with a
  confounder mask (ruler, ink, hair) it is the share of the evidence spent on the confounder.
  NaN when the map has no positive value or is not finite, or the region is empty.
  """
  x, inside = _flat(maps, region)
  positive = jnp.maximum(x, 0.0)
  total = positive.sum(1)
  invalid = (total == 0) | ~inside.any(1) | nonfinite_maps(x)
  mass_inside = jnp.where(inside, positive, 0.0).sum(1)
  return _nan_where(invalid, mass_inside / jnp.where(invalid, 1.0, total))


def relevance_mass(maps: jax.Array, masks: jax.Array) -> jax.Array:
  """Relevance mass accuracy (Arras et al. 2022): positive mass in the ROI / all of it, [N]."""
  return mass_fraction(maps, masks)


def relevance_rank(maps: jax.Array, masks: jax.Array) -> jax.Array:
  """Relevance rank accuracy (Arras et al. 2022), [N].

  With K = |ROI|, the fraction of the K highest-valued pixels that lie in the ROI. Ties are
  broken by a stable descending sort: of equal values, the lower flat index ranks first.
  NaN for an empty mask or a constant or non-finite map.
  """
  x, roi = _flat(maps, masks)
  k = roi.sum(1)
  order = jnp.argsort(x, axis=1, descending=True, stable=True)
  in_top_k = jnp.arange(x.shape[1])[None, :] < k[:, None]
  hits = (jnp.take_along_axis(roi, order, axis=1) & in_top_k).sum(1)
  return _nan_where((k == 0) | nonfinite_maps(x) | constant_maps(x), hits / jnp.maximum(k, 1))


@functools.partial(jax.jit, static_argnames="tolerance")
def _batch_metrics(maps: jax.Array, masks: jax.Array, tolerance: int) -> dict[str, jax.Array]:
  """Every metric of METRICS for one batch, [B] each."""
  best = best_threshold_dice(maps, masks)
  return {"dice": best["dice"], "dice_threshold": best["threshold"],
          "spearman": spearman_with_mask(maps, masks),
          "roc_auc": roc_auc_with_mask(maps, masks),
          "pointing_game": pointing_game(maps, masks, tolerance),
          "relevance_mass": relevance_mass(maps, masks),
          "relevance_rank": relevance_rank(maps, masks)}


def roi_metrics(maps, masks, *, batch_size: int = 64, tolerance: int = 0) -> dict[str, np.ndarray]:
  """All METRICS for maps [N, H, W] and masks [N, H, W] (numpy or JAX), float64 [N] each.

  Consecutive slices of `batch_size` images go through one jitted function, so memory is that
  of one batch; the last slice is padded with empty masks (one compilation) and trimmed.
  """
  maps, masks = np.asarray(maps, np.float32), np.asarray(masks) != 0
  num_images = maps.shape[0]
  batch_size = max(1, min(batch_size, num_images))  # no padding of a small set to a full batch
  columns = {name: [] for name in METRICS}
  for start in range(0, num_images, batch_size):
    batch_maps, batch_masks = maps[start:start + batch_size], masks[start:start + batch_size]
    pad = ((0, batch_size - batch_maps.shape[0]), (0, 0), (0, 0))
    out = _batch_metrics(np.pad(batch_maps, pad), np.pad(batch_masks, pad), tolerance)
    for name in METRICS:
      columns[name].append(np.asarray(out[name], np.float64)[:batch_maps.shape[0]])
  return {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in columns.items()}
