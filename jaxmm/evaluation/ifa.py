"""Integrated feature analysis (IFA) of paper 003 (003_4f19be54e53288e6.txt, sections II-III).

At a target layer with F features (channels), for a selected class c, a gradient CAM method
(a key of `cams.CAM_WEIGHTS`) gives weights w^{f,c} (per channel, or per pixel for pixel-wise
methods) and weighted features w^{f,c} A^f. From them:
  raw_c        sum_f w^{f,c} A^f, signed and unscaled, at the layer's resolution [h, w]
  contribution sum_{h,w} w^{f,c} A^f, feature f's class activation level for class c

The analysis has two parts:
  * distribution analysis (II.A): percentiles of the raw class activation levels over a split
    (`activation_statistics`) give one common tanh intensity scale per class, S-CAM (Eq. 1-2:
    `tanh_scaling`, `s_cam`, `ScalingStats`);
  * feature decomposition (II.B): the importance matrix IM [F, C], the mean contribution of
    each feature to each class over a split (Eq. 3 over all classes, Eq. 4 with each sample's
    true class: `importance_step`, `ImportanceAccumulator`), thresholded into principal
    feature masks for FS-CAM (Eq. 5: `principal_features`, `fs_cam`).
The evaluations of section III: consistency of CAM sums with logits (`consistency`), accuracy
with unselected features blocked (`masked_logits`), average drop / increase
(`average_drop_increase`), and train/test importance-matrix distances (`importance_distance`).

Gradients are those of the logits (paper 003 uses logits, not probabilities), taken with
respect to a zero perturbation of the layer (Linen's `perturb` collection), never the
parameters. Functions of model outputs are pure JAX (usable under jit); the final statistics
(percentiles, correlation tests, distances) are NumPy / SciPy.
"""
import dataclasses
import json
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxmm.saliency import cams, model_fns

ApplyFn = model_fns.ApplyFn
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
SHAPIRO_MAX_N = 5000  # scipy's Shapiro-Wilk p-value is unreliable above this sample size


# --------------------------------------------------------------------------------------------
# Per-feature contributions (weighted features summed over space)
# --------------------------------------------------------------------------------------------

def check_method(method: str) -> None:
  if method not in cams.CAM_WEIGHTS:
    raise ValueError(f"unknown gradient CAM method {method!r}; valid: {sorted(cams.CAM_WEIGHTS)}")


def layer_logits_vjp(apply: ApplyFn, batch, layer: str
                     ) -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
  """(logits [N, K], A [N, h, w, F], vjp) from one forward pass.

  vjp(cotangent [N, K]) = d sum_{n,k} cotangent[n, k] logits[n, k] / d A (one backward pass),
  taken with respect to a zero perturbation of `layer`: no parameter gradients.
  """
  shapes = jax.eval_shape(lambda b: apply(b)[1], batch)
  model_fns.check_layer(shapes, layer)
  zero = jnp.zeros(shapes[layer].shape, shapes[layer].dtype)

  def logits_and_layer(delta):
    logits, out = apply(batch, {layer: delta})
    return logits, out[layer]

  logits, vjp, activations = jax.vjp(logits_and_layer, zero, has_aux=True)
  return logits, activations, lambda cotangent: vjp(cotangent)[0]


def _per_class_cams(a, vjp, logits, method, classes, chunk_size):
  """CAM outputs of every class in `classes`, stacked on a leading class axis."""
  def one_class(c):
    one_hot = jax.nn.one_hot(c, logits.shape[-1], dtype=logits.dtype)
    cam = cams.gradient_cam(method, a, vjp(jnp.broadcast_to(one_hot, logits.shape)), relu=False)
    return {k: cam[k] for k in ("contributions", "raw", "weights")}

  if chunk_size is None:
    return jax.vmap(one_class)(classes)
  return jax.lax.map(one_class, classes, batch_size=chunk_size)


def class_contributions(apply: ApplyFn, batch, layer: str, method: str = "gradcam",
                        classes: Sequence[int] | jax.Array | None = None,
                        chunk_size: int | None = None) -> dict[str, jax.Array]:
  """The CAM of every selected class at `layer`: one forward pass, one vmapped backward pass.

  jax.vjp once, then vmap over one-hot cotangents of the logits: d logit_c / d A for every
  class c at once (`chunk_size` classes at a time with lax.map, to bound memory for many
  classes). classes: class indices [C] (None: all K). Returns
    "logits" [N, K], "activations" [N, h, w, F], "classes" int32 [C],
    "contributions" float32 [N, F, C], "raw" float32 [N, C, h, w] (signed maps),
    "weights" [N, C, F] (channel weights) or [N, C, h, w, F] (pixel-wise methods).
  """
  check_method(method)
  logits, a, vjp = layer_logits_vjp(apply, batch, layer)
  classes = (jnp.arange(logits.shape[-1], dtype=jnp.int32) if classes is None
             else jnp.asarray(classes, jnp.int32))
  per_class = _per_class_cams(a, vjp, logits, method, classes, chunk_size)
  return {"logits": logits, "activations": a, "classes": classes,
          "contributions": jnp.moveaxis(per_class["contributions"], 0, -1),
          "raw": jnp.moveaxis(per_class["raw"], 0, 1),
          "weights": jnp.moveaxis(per_class["weights"], 0, 1)}


def target_contributions(apply: ApplyFn, batch, layer: str, targets: jax.Array,
                         method: str = "gradcam") -> dict[str, jax.Array]:
  """The CAM of one class per example (targets int [N]): one forward, one backward pass.

  Returns "logits" [N, K], "activations" [N, h, w, F], "contributions" float32 [N, F],
  "raw" float32 [N, h, w], "weights" [N, F] or [N, h, w, F].
  """
  check_method(method)
  logits, a, vjp = layer_logits_vjp(apply, batch, layer)
  g = vjp(jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))
  cam = cams.gradient_cam(method, a, g, relu=False)
  return {"logits": logits, "activations": a, "contributions": cam["contributions"],
          "raw": cam["raw"], "weights": cam["weights"]}


# --------------------------------------------------------------------------------------------
# Importance matrix (Eq. 3 and Eq. 4)
# --------------------------------------------------------------------------------------------

def importance_partial_sums(contributions_all: jax.Array | None,
                            contributions_true: jax.Array | None, labels: jax.Array,
                            num_classes: int, valid: jax.Array) -> dict[str, jax.Array]:
  """One batch's sums for the importance matrix; invalid (padded) rows are ignored.

  contributions_all [N, F, C]: every class's contributions (Eq. 3), or None.
  contributions_true [N, F]: each sample's contributions for its TRUE class (Eq. 4: weights
  from d logit_{gt_n} / d A), or None to take them from contributions_all[n, :, gt_n].
  Returns "eq4_sum" [F, C] (contributions_true[n] summed into column labels[n]),
  "class_counts" [C], "count" (valid samples) and, with contributions_all, "eq3_sum" [F, C].
  """
  valid = jnp.asarray(valid, bool)
  labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  if contributions_true is None:
    contributions_true = jnp.take_along_axis(contributions_all, labels[:, None, None], 2)[..., 0]
  # where, not a product: a padded row's NaN must not leak into the sums.
  true = jnp.where(valid[:, None], contributions_true.astype(jnp.float32), 0.0)
  segments = jnp.where(valid, labels, num_classes)  # invalid rows go to a dropped segment
  sums = {"eq4_sum": jax.ops.segment_sum(true, segments, num_classes + 1)[:num_classes].T,
          "class_counts": jax.ops.segment_sum(valid.astype(jnp.float32), segments,
                                              num_classes + 1)[:num_classes],
          "count": valid.sum(dtype=jnp.float32)}
  if contributions_all is not None:
    sums["eq3_sum"] = jnp.where(valid[:, None, None], contributions_all.astype(jnp.float32),
                                0.0).sum(0)
  return sums


def importance_step(apply: ApplyFn, batch, labels: jax.Array, valid: jax.Array, layer: str,
                    method: str, num_classes: int, per_class: bool = True,
                    chunk_size: int | None = None) -> dict[str, jax.Array]:
  """The importance-matrix partial sums of one batch (`importance_partial_sums`).

  per_class=True: every class's gradient (one vmapped backward pass over K cotangents), Eq. 3
  and Eq. 4 in the same pass. per_class=False: only the true class's gradient (one backward
  pass), Eq. 4 only ("eq3_sum" absent), the paper's shortcut for many classes. Jit it with
  the static arguments bound:
    step = jax.jit(functools.partial(importance_step, apply, layer=..., method=...,
                                     num_classes=..., per_class=...))
    acc.add(step(batch, labels, valid))
  """
  if per_class:
    out = class_contributions(apply, batch, layer, method, chunk_size=chunk_size)
    if out["logits"].shape[-1] != num_classes:
      raise ValueError(f"the model has {out['logits'].shape[-1]} logits, num_classes is "
                       f"{num_classes}")
    return importance_partial_sums(out["contributions"], None, labels, num_classes, valid)
  targets = jnp.where(jnp.asarray(valid, bool), labels, 0)
  out = target_contributions(apply, batch, layer, targets, method)
  return importance_partial_sums(None, out["contributions"], labels, num_classes, valid)


class ImportanceAccumulator:
  """Sums `importance_partial_sums` over batches (float64, host side) into the matrices.

  finalize() -> {"eq3": [F, C], "eq4": [F, C], "class_counts": [C], "count"}:
    Eq. 3: IM^{f,c} = sum_n w_n^{f,c} A_n^f / N, over all N valid samples, class c selected;
    Eq. 4: IM^{f,c} = sum_{n: gt_n = c} w_n^{f,c} A_n^f / (N - num_{gt != c}); the printed
      denominator N - num_{gt != c} is the number of samples of class c, so column c is the
      mean over class c's samples (NaN for a class absent from the split).
  "eq3" is present only if every batch had "eq3_sum" (per_class=True).
  """

  def __init__(self):
    self.sums: dict[str, np.ndarray] | None = None

  def add(self, partial_sums: Mapping[str, Any]) -> None:
    batch = {k: np.asarray(v, np.float64) for k, v in partial_sums.items()}
    if self.sums is None:
      self.sums = batch
      return
    keys = self.sums.keys() & batch.keys()
    self.sums = {k: self.sums[k] + batch[k] for k in keys}

  def finalize(self) -> dict[str, Any]:
    if self.sums is None:
      raise ValueError("no batch was added to the accumulator")
    counts = self.sums["class_counts"]
    with np.errstate(invalid="ignore", divide="ignore"):
      eq4 = np.where(counts > 0, self.sums["eq4_sum"] / counts, np.nan)
    out = {"eq4": eq4, "class_counts": counts, "count": float(self.sums["count"])}
    if "eq3_sum" in self.sums:
      out["eq3"] = self.sums["eq3_sum"] / self.sums["count"]
    return out


# --------------------------------------------------------------------------------------------
# Distribution analysis and common intensity scaling (Eq. 1-2)
# --------------------------------------------------------------------------------------------

def activation_statistics(values, percentiles: Sequence[float] = PERCENTILES
                          ) -> dict[str, float]:
  """Statistics of the flattened class activation levels (raw CAM values of one method and
  selected class over a split): "p<k>" for each percentile k, "mean", "std", "min", "max",
  "count". Percentiles of layer-resolution maps and of upsampled maps differ slightly: scale
  maps at the resolution the statistics were taken at."""
  v = np.asarray(values, np.float64).ravel()
  if v.size == 0:
    raise ValueError("no values to summarise")
  out = {f"p{k:g}": float(p) for k, p in zip(percentiles, np.percentile(v, percentiles))}
  out.update(mean=float(v.mean()), std=float(v.std()), min=float(v.min()), max=float(v.max()),
             count=float(v.size))
  return out


def tanh_scaling(p10: float, p90: float, low: float = 0.1, high: float = 0.9
                 ) -> tuple[float, float]:
  """(alpha, beta) of Eq. 2, sigma(x) = tanh(alpha x + beta), with sigma(P10) = low and
  sigma(P90) = high.

  From alpha P10 + beta = atanh(low) and alpha P90 + beta = atanh(high):
    alpha = (atanh(high) - atanh(low)) / (P90 - P10)
    beta  = atanh(low) - alpha P10 = (P90 atanh(low) - P10 atanh(high)) / (P90 - P10).
  (The authors' Rescaler in github.com/YanliLi27/IFA, cam_components/core/rescale.py, computes
  the same beta.)
  """
  if not -1.0 < low < high < 1.0:
    raise ValueError(f"need -1 < low < high < 1, got low={low}, high={high}")
  if not p90 > p10:
    raise ValueError(f"P90 must exceed P10 for a tanh scale, got P10={p10}, P90={p90}")
  alpha = (math.atanh(high) - math.atanh(low)) / (p90 - p10)
  # Paper 003 prints beta = (P90 atanh 0.9 - P10 atanh 0.1) / (P10 - P00) below Eq. 2, a typo
  # (P00 is never defined and that beta does not map P10 to 0.1); solved form above.
  beta = (p90 * math.atanh(low) - p10 * math.atanh(high)) / (p90 - p10)
  return alpha, beta


def s_cam(raw: jax.Array, alpha, beta) -> jax.Array:
  """S-CAM, Eq. 1-2: tanh(alpha raw + beta) of a raw (signed, unscaled) map. No ReLU and no
  per-image min-max: a level well below P10 stays negative, as negative evidence."""
  return jnp.tanh(alpha * raw.astype(jnp.float32) + beta)


@dataclasses.dataclass(frozen=True)
class ScalingStats:
  """One common intensity scale per selected class, so that a later map is scaled exactly as
  the split's maps were. per_class: {class: {"p10", "p90", "alpha", "beta"}}."""
  per_class: dict[int, dict[str, float]]
  low: float = 0.1
  high: float = 0.9
  method: str = ""
  layer: str = ""

  @classmethod
  def from_statistics(cls, statistics: Mapping[int, Mapping[str, float]], low: float = 0.1,
                      high: float = 0.9, method: str = "", layer: str = "") -> "ScalingStats":
    """From {class: activation_statistics(...)} (any dicts holding "p10" and "p90")."""
    per_class = {}
    for c, s in statistics.items():
      alpha, beta = tanh_scaling(s["p10"], s["p90"], low, high)
      per_class[int(c)] = {"p10": float(s["p10"]), "p90": float(s["p90"]), "alpha": alpha,
                           "beta": beta}
    return cls(per_class, low, high, method, layer)

  def coefficients(self, classes) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) for a class index or an index array [N]."""
    classes = np.asarray(classes)
    alpha = np.vectorize(lambda c: self.per_class[int(c)]["alpha"], otypes=[np.float64])
    beta = np.vectorize(lambda c: self.per_class[int(c)]["beta"], otypes=[np.float64])
    return alpha(classes), beta(classes)

  def scale(self, raw: jax.Array, classes) -> jax.Array:
    """s_cam of raw [N, ...] with each example's class scale (classes int or int [N])."""
    alpha, beta = self.coefficients(classes)
    shape = alpha.shape + (1,) * (raw.ndim - alpha.ndim)
    return s_cam(raw, jnp.asarray(alpha.reshape(shape), jnp.float32),
                 jnp.asarray(beta.reshape(shape), jnp.float32))

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "ScalingStats":
    d = json.loads(text)
    d["per_class"] = {int(c): v for c, v in d["per_class"].items()}
    return cls(**d)


# --------------------------------------------------------------------------------------------
# Feature selection (Eq. 5)
# --------------------------------------------------------------------------------------------

def _top_k_mask(scores: jax.Array, fraction: float) -> jax.Array:
  """bool mask of the top ceil(fraction * F) (at least 1) entries of each row of [R, F]."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  num_features = scores.shape[-1]
  k = max(1, math.ceil(fraction * num_features))
  _, top = jax.lax.top_k(jnp.where(jnp.isnan(scores), -jnp.inf, scores), k)
  return jax.nn.one_hot(top, num_features, dtype=jnp.int32).sum(-2) > 0


def principal_features(importance: jax.Array, fraction: float) -> jax.Array:
  """Per class column of the importance matrix [F, C], its top ceil(fraction F) features
  (at least 1): bool [F, C]. An all-NaN column (a class absent from the split) selects none."""
  importance = jnp.asarray(importance, jnp.float32)
  mask = _top_k_mask(importance.T, fraction).T
  return mask & ~jnp.all(jnp.isnan(importance), axis=0)


def ranked_principal_features(importance: jax.Array, fraction: float) -> jax.Array:
  """One feature set for a layer: the top ceil(fraction F) features by their row maximum over
  classes, bool [F].

  Used to mask a layer at inference, where the class is not known in advance: a feature is
  kept if it is among the most important for some class (row max), so no class loses its
  strongest features; the row mean would instead favour features shared by all classes.
  NaN columns (absent classes) are ignored.
  """
  importance = jnp.asarray(importance, jnp.float32)
  row_max = jnp.max(jnp.where(jnp.isnan(importance), -jnp.inf, importance), axis=1)
  return _top_k_mask(row_max[None], fraction)[0]


def feature_set_mask(indices, num_features: int) -> jax.Array:
  """bool [F], True at `indices`."""
  return jnp.zeros(num_features, bool).at[jnp.asarray(indices, jnp.int32)].set(True)


def fs_cam(activations: jax.Array, weights: jax.Array, mask: jax.Array) -> jax.Array:
  """FS-CAM before scaling, Eq. 5: sum_f mask_f w_f A_f, raw [N, h, w].

  activations [N, h, w, F]; weights [N, F] or [N, h, w, F]; mask bool [F] (one set) or
  [N, F] (per example, e.g. principal_features(...)[:, targets].T). An all-true mask gives the
  CAM's raw map."""
  mask = jnp.asarray(mask).astype(jnp.float32)
  if mask.ndim == 2 and weights.ndim == 4:
    mask = mask[:, None, None, :]
  return cams.weighted_cam(activations, weights * mask, relu=False)["raw"]


# --------------------------------------------------------------------------------------------
# Evaluation (section III)
# --------------------------------------------------------------------------------------------

def cam_sum(maps: jax.Array) -> jax.Array:
  """The total class activation level of each map, [N, ...] -> [N]."""
  return maps.reshape(maps.shape[0], -1).sum(1)


def _is_normal(x: np.ndarray, alpha: float) -> tuple[bool, str]:
  if x.size <= SHAPIRO_MAX_N:
    return bool(stats.shapiro(x).pvalue > alpha), "shapiro"
  return bool(stats.normaltest(x).pvalue > alpha), "normaltest"


def consistency(cam_sums, logits, alpha: float = 0.05) -> dict[str, Any]:
  """Consistency of CAM sums [N] with the selected class's logits [N] (section III.B).

  Pearson's r if both samples pass a normality test at level `alpha` (Shapiro-Wilk for
  n <= 5000, else D'Agostino-Pearson `normaltest`), Spearman's rho otherwise. The paper asks
  for bivariate normality; normal marginals are the necessary condition tested here.
  Returns "method", "r", "p", "n", "normal_cam", "normal_logit", "normality_test"; r, p NaN
  and method None, with a "note", when n < 3 or either sample is constant (Shapiro-Wilk
  calls a constant sample normal, and Pearson's r of it is NaN). Non-finite values are a
  ValueError.
  """
  x = np.asarray(cam_sums, np.float64).ravel()
  y = np.asarray(logits, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"cam_sums {x.shape} and logits {y.shape} differ in size")
  for name, values in (("cam_sums", x), ("logits", y)):
    if not np.isfinite(values).all():
      raise ValueError(f"{name} has {int((~np.isfinite(values)).sum())} non-finite values of "
                       f"{values.size}")
  n = x.size
  undefined = {"method": None, "r": math.nan, "p": math.nan, "n": n, "normal_cam": False,
               "normal_logit": False, "normality_test": None}
  if n < 3:
    return {**undefined, "note": "fewer than 3 examples"}
  if np.ptp(x) == 0 or np.ptp(y) == 0:
    constant = "cam_sums" if np.ptp(x) == 0 else "logits"
    return {**undefined, "note": f"constant {constant}: no correlation is defined"}
  normal_cam, test = _is_normal(x, alpha)
  normal_logit, _ = _is_normal(y, alpha)
  method = "pearson" if normal_cam and normal_logit else "spearman"
  result = stats.pearsonr(x, y) if method == "pearson" else stats.spearmanr(x, y)
  return {"method": method, "r": float(result.statistic), "p": float(result.pvalue), "n": n,
          "normal_cam": normal_cam, "normal_logit": normal_logit, "normality_test": test}


def _broadcast_keep(keep: jax.Array, a: jax.Array) -> jax.Array:
  keep = jnp.asarray(keep).astype(a.dtype)
  if keep.ndim == 2:  # [N, F] per example
    keep = keep.reshape((keep.shape[0],) + (1,) * (a.ndim - 2) + (keep.shape[1],))
  return keep


def masked_logits(apply: ApplyFn, batch, layer: str, keep: jax.Array) -> jax.Array:
  """Logits with the unselected features of `layer` blocked (section III.C).

  The first pass gets A; the second perturbs the layer by A (keep - 1), so its output is
  A keep. keep: bool [F] (or [N, F]). The channel is zeroed everywhere downstream reads the
  layer's (perturbed) output, including skip connections taken from it; paths that read the
  tensor before the perturb point are untouched. The model must be deterministic (eval mode)
  so both passes see the same A.
  """
  _, out = apply(batch)
  model_fns.check_layer(out, layer)
  a = jax.lax.stop_gradient(out[layer])
  return apply(batch, {layer: a * (_broadcast_keep(keep, a) - 1)})[0]


def average_drop_increase(f: Callable[[jax.Array], jax.Array], x: jax.Array,
                          cam01: jax.Array, targets: jax.Array, baseline=0.0
                          ) -> dict[str, jax.Array]:
  """Average drop / increase in confidence (Chattopadhay et al.; paper 003 section III.A).

  Y = softmax(f(x))[target], O = softmax(f(baseline + cam01 (x - baseline)))[target], with
  x [N, H, W, C] images, cam01 [N, H, W] in [0, 1], f: images -> logits. Per example
  "drop" = max(0, Y - O) / Y and "increase" = O > Y; "average_drop" and "average_increase"
  are their means in percent.
  """
  masked = baseline + cam01[..., None] * (x - baseline)
  rows = jnp.arange(x.shape[0])
  y = jax.nn.softmax(f(x).astype(jnp.float32), axis=-1)[rows, targets]
  o = jax.nn.softmax(f(masked).astype(jnp.float32), axis=-1)[rows, targets]
  drop = jnp.maximum(0.0, y - o) / y
  increase = o > y
  return {"drop": drop, "increase": increase, "average_drop": 100 * drop.mean(),
          "average_increase": 100 * increase.mean(), "y": y, "o": o}


def importance_distance(im_a, im_b) -> dict[str, Any]:
  """Distances between two importance matrices [F, C] (e.g. train vs test: overfitting).

  "relative_l2" ||a - b||_F / ||a||_F, "pearson" of the flattened matrices, "cosine" [C] and
  "mean_cosine" (of the columns), "max_abs_centered" [C]: max_f |(a - mean_f a) - (b -
  mean_f b)| per column, as the paper's line graphs subtract each column's mean level (Fig.
  11). Columns with a NaN in either matrix (absent classes) are skipped (NaN in per-column
  outputs); "columns" counts the columns compared.
  """
  a, b = np.asarray(im_a, np.float64), np.asarray(im_b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"importance matrices differ in shape: {a.shape} vs {b.shape}")
  keep = ~(np.isnan(a).any(0) | np.isnan(b).any(0))
  ak, bk = a[:, keep], b[:, keep]
  with np.errstate(invalid="ignore", divide="ignore"):
    cosine = np.full(a.shape[1], np.nan)
    cosine[keep] = (ak * bk).sum(0) / (np.linalg.norm(ak, axis=0) * np.linalg.norm(bk, axis=0))
    centered = np.full(a.shape[1], np.nan)
    centered[keep] = np.abs((ak - ak.mean(0)) - (bk - bk.mean(0))).max(0, initial=0.0)
    relative = np.linalg.norm(ak - bk) / np.linalg.norm(ak)
  pearson = (float(stats.pearsonr(ak.ravel(), bk.ravel()).statistic) if ak.size >= 2
             else math.nan)
  return {"relative_l2": float(relative), "pearson": pearson, "cosine": cosine,
          "mean_cosine": float(np.nanmean(cosine)) if keep.any() else math.nan,
          "max_abs_centered": centered, "columns": int(keep.sum())}
