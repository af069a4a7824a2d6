"""The integrated feature analysis of paper 003 over dataset splits, one compiled step per batch.

Two passes per CAM method at one layer:
  * `reference_pass` (the training split, as the paper prefers): every class's CAM of every
    example (one forward, one vmapped backward pass per batch), accumulated into the
    importance matrix (Eq. 3 and Eq. 4 together, also per group of examples, and, where a
    confounder mask is given, restricted to the confounder's pixels of the images with it),
    and the class activation levels collected per class for the distribution analysis that
    fixes the common intensity scale (S-CAM, Eq. 2).
  * `evaluation_pass` (the evaluated split): the same importance matrix (for the overfitting
    check), and for each example's selected class (the predicted one) the raw CAM, the FS-CAMs
    of the principal features (Eq. 5), logits with the layer's non-selected features blocked
    (section III.C), and the target probability on the input masked by the CAM and FS-CAMs
    (average drop / increase), plus optional confounder measurements.
Statistics and scaling are taken at the layer's resolution, where the maps are computed; maps
are upsampled to the input size only to mask inputs or to compare with pixel masks.
Batches are dicts with the model inputs, "label" [N], "valid" bool [N] (False on padding) and,
for the confounder measurements, "confounder_mask" [N, H, W].
"""
import dataclasses
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.evaluation import ifa
from jaxmm.saliency import normalize

ApplyBuilder = Callable[[dict], Callable]  # variables -> apply(batch, perturbations)


@dataclasses.dataclass(frozen=True)
class Selection:
  """What the evaluation pass applies, fixed from the reference pass.

  principal bool [P, F, C]: per class column the top fraction of features (one per fraction);
  ranked bool [P, F]: one feature set per fraction for blocking features at inference, where
  the class is not known in advance; alpha, beta [C]: the S-CAM coefficients per class;
  group_features bool [F] (or None): a feature set whose FS-CAM of `group_class` is measured
  against the confounder mask.
  """
  fractions: tuple
  principal: np.ndarray
  ranked: np.ndarray
  alpha: np.ndarray
  beta: np.ndarray
  group_features: np.ndarray | None = None
  group_class: int = 0


def reference_step(apply_builder: ApplyBuilder, layer: str, method: str) -> Callable:
  """jit(variables, batch) -> logits, contributions [N, F, C], raw [N, C, h, w], and with a
  "confounder_mask" in the batch "region_contributions" [N, F, C]: the part of each
  contribution inside the (pooled) mask."""

  def step(variables, batch):
    out = ifa.class_contributions(apply_builder(variables), model_inputs(batch), layer, method)
    result = {k: out[k] for k in ("logits", "contributions", "raw")}
    if "confounder_mask" in batch:
      result["region_contributions"] = region_contributions(out, batch["confounder_mask"])
    return result

  return jax.jit(step)


def region_contributions(out: dict, mask: jax.Array) -> jax.Array:
  """sum over the region of the weighted features, per feature and class: [N, F, C]."""
  a = out["activations"].astype(jnp.float32)
  region = pooled_mask(mask, a.shape[1:3])                         # [N, h, w]
  w = out["weights"]                                               # [N, C, F] | [N, C, h, w, F]
  w = w[:, :, None, None, :] if w.ndim == 3 else w
  return jnp.einsum("nchwf,nhwf,nhw->nfc", w, a, region)


def model_inputs(batch: Mapping) -> dict:
  return {k: v for k, v in batch.items()
          if k in ("image", "meta", "text_ids", "text_mask")}


def reference_pass(step: Callable, variables, batches: Iterable[Mapping], num_classes: int,
                   groups: Mapping[str, Callable[[Mapping], np.ndarray]] | None = None) -> dict:
  """Importance matrices (all examples, and per named group) and per-class activation levels.

  groups: name -> fn(batch) -> bool [N] selecting examples of the group (e.g. with the
  confounder). Returns {"importance": {"all": finalize(), name: ...}, "statistics": {c: ...},
  "levels": {c: float32 values}}.
  """
  accumulators = {name: ifa.ImportanceAccumulator() for name in ("all", *(groups or {}))}
  region = ifa.ImportanceAccumulator()
  levels = [[] for _ in range(num_classes)]
  for batch in batches:
    inputs = {k: v for k, v in batch.items() if k not in ("label", "valid", "confounder")}
    out = jax.device_get(step(variables, inputs))
    valid = np.asarray(batch["valid"], bool)
    for name, accumulator in accumulators.items():
      keep = valid if name == "all" else valid & groups[name](batch)
      accumulator.add(ifa.importance_partial_sums(
          out["contributions"], None, batch["label"], num_classes, keep))
    if "region_contributions" in out:
      keep = valid & np.asarray(batch["confounder"]).astype(bool)
      region.add(ifa.importance_partial_sums(out["region_contributions"], None,
                                             batch["label"], num_classes, keep))
    for c in range(num_classes):
      levels[c].append(np.asarray(out["raw"])[valid, c].ravel())
  levels = {c: np.concatenate(v) for c, v in enumerate(levels)}
  importance = {name: acc.finalize() for name, acc in accumulators.items()}
  if region.sums is not None and region.sums["count"] > 0:
    importance["confounder_region"] = region.finalize()
  return {"importance": importance,
          "statistics": {c: ifa.activation_statistics(v) for c, v in levels.items()}}


def make_selection(reference: dict, fractions, importance_key: str = "eq4",
                   group_features: np.ndarray | None = None, group_class: int = 0
                   ) -> tuple[Selection, ifa.ScalingStats]:
  """Principal features from the reference importance matrix, S-CAM coefficients per class.

  A class absent from the reference split has an all-NaN importance column and no principal
  features (ifa.principal_features); the ranked feature sets ignore its column."""
  # NaN goes through as NaN: -inf would hide the absent class from principal_features' guard
  # and give it the first ceil(p F) channels.
  im = jnp.asarray(reference["importance"]["all"][importance_key], jnp.float32)
  scaling = ifa.ScalingStats.from_statistics(reference["statistics"])
  classes = sorted(reference["statistics"])
  alpha, beta = scaling.coefficients(classes)
  selection = Selection(
      fractions=tuple(fractions),
      principal=np.stack([np.asarray(ifa.principal_features(im, p)) for p in fractions]),
      ranked=np.stack([np.asarray(ifa.ranked_principal_features(im, p)) for p in fractions]),
      alpha=np.asarray(alpha, np.float32), beta=np.asarray(beta, np.float32),
      group_features=group_features, group_class=group_class)
  return selection, scaling


def masked_input_probabilities(f, x, raws, targets, baseline):
  """Target probability on baseline + M (x - baseline) for each map of raws [M, N, h, w];
  M is the ReLU'd map scaled to [0, 1] per image and upsampled (Chattopadhay et al.)."""

  def one(raw):
    cam01 = normalize.upsample(normalize.positive_unit(raw), x.shape[1:3])
    return ifa.average_drop_increase(f, x, cam01, targets, baseline)["o"]

  return jax.lax.map(one, raws)


def area_weights(source: int, target: int) -> np.ndarray:
  """[target, source]: the share of each of `source` unit pixels in each of `target` equal
  cells spanning the same length (row i covers [i s / t, (i + 1) s / t)); rows sum to 1."""
  width = source / target
  lo = np.arange(target)[:, None] * width
  pixel = np.arange(source)[None, :]
  overlap = np.clip(np.minimum(lo + width, pixel + 1) - np.maximum(lo, pixel), 0, None)
  return (overlap / width).astype(np.float32)


def pooled_mask(mask: jax.Array, size: tuple) -> jax.Array:
  """A pixel mask [N, H, W] averaged down to the layer's grid [N, h, w]: each cell holds the
  fraction of its area inside the mask (exact box averaging; an interpolating resize would
  spill a cell's mask into its neighbours)."""
  rows, cols = (area_weights(n, m) for n, m in zip(mask.shape[1:3], size))
  return jnp.einsum("yH,nHW,xW->nyx", rows, mask.astype(jnp.float32), cols,
                    precision=jax.lax.Precision.HIGHEST)


def evaluation_step(apply_builder: ApplyBuilder, layer: str, method: str, baseline,
                    target: str = "predicted") -> Callable:
  """jit(variables, batch, selection arrays) -> the per-example arrays of one batch; the
  selected class of each example is its predicted class (paper 003's default) or, with
  target="true", its label."""
  if target not in ("predicted", "true"):
    raise ValueError(f"unknown IFA target {target!r}; valid: ['predicted', 'true']")

  def step(variables, batch, arrays):
    apply = apply_builder(variables)
    out = ifa.class_contributions(apply, model_inputs(batch), layer, method)
    targets = (batch["label"] if target == "true" else jnp.argmax(out["logits"], -1))
    targets = targets.astype(jnp.int32)
    rows = jnp.arange(targets.shape[0])
    a, weights = out["activations"], out["weights"][rows, targets]
    raw = out["raw"][rows, targets]
    principal = jnp.moveaxis(arrays["principal"], -1, 1)[:, targets]     # [P, N, F]
    fs = jax.vmap(lambda m: ifa.fs_cam(a, weights, m))(principal)         # [P, N, h, w]
    keeps = jnp.concatenate([arrays["ranked"], ~arrays["ranked"]])       # [2P, F]
    masked = jax.vmap(lambda k: ifa.masked_logits(apply, model_inputs(batch), layer, k))(keeps)
    result = {"logits": out["logits"], "contributions": out["contributions"], "raw": raw,
              "target": targets,
              "fs_raw": fs, "masked_logits": masked}
    if "image" in batch:
      image_fn = lambda x: apply({**model_inputs(batch), "image": x})[0]
      result["masked_probability"] = masked_input_probabilities(
          image_fn, batch["image"], jnp.concatenate([raw[None], fs]), targets, baseline)
    if "confounder_mask" in batch and "group_features" in arrays:
      result.update(confounder_step(out, arrays, batch["confounder_mask"]))
    return result

  return jax.jit(step)


def confounder_step(out: dict, arrays: dict, mask: jax.Array) -> dict:
  """Per feature, the share of its positive activation inside the confounder region; and the
  CAM and the FS-CAM of `group_features` for `group_class`, upsampled to the mask's size."""
  a = out["activations"].astype(jnp.float32)
  region = pooled_mask(mask, a.shape[1:3])[..., None]
  positive = jax.nn.relu(a)
  share = (positive * region).sum((1, 2)) / jnp.maximum(positive.sum((1, 2)), 1e-12)
  c = arrays["group_class"]
  weights = out["weights"][:, c]
  group_fs = ifa.fs_cam(a, weights, arrays["group_features"])
  size = mask.shape[1:3]
  return {"feature_confounder_share": share,
          "group_cam": normalize.upsample(out["raw"][:, c], size),
          "group_fs_cam": normalize.upsample(group_fs, size)}


def selection_arrays(selection: Selection) -> dict:
  arrays = {"principal": jnp.asarray(selection.principal), "ranked": jnp.asarray(selection.ranked)}
  if selection.group_features is not None:
    arrays["group_features"] = jnp.asarray(selection.group_features)
    arrays["group_class"] = jnp.asarray(selection.group_class, jnp.int32)
  return arrays


STACKED = ("fs_raw", "masked_logits", "masked_probability")  # [M, N, ...] outputs


def evaluation_pass(step: Callable, variables, batches: Iterable[Mapping], num_classes: int,
                    selection: Selection) -> dict:
  """Runs `evaluation_step` over a split: the split's importance matrix and the per-example
  arrays (valid rows only, concatenated along the example axis; NaN FS-CAMs where the
  selected class has no principal features, see without_undefined_fs_cams)."""
  accumulator = ifa.ImportanceAccumulator()
  arrays = selection_arrays(selection)
  parts = []
  for batch in batches:
    valid = np.asarray(batch["valid"], bool)
    out = jax.device_get(step(variables, {k: v for k, v in batch.items() if k != "valid"},
                              arrays))
    accumulator.add(ifa.importance_partial_sums(
        out.pop("contributions"), None, batch["label"], num_classes, valid))
    record = {k: np.asarray(v)[:, valid] if k in STACKED else np.asarray(v)[valid]
              for k, v in out.items()}
    record["label"] = np.asarray(batch["label"])[valid]
    parts.append(record)
  per_example = {k: np.concatenate([p[k] for p in parts], axis=1 if k in STACKED else 0)
                 for k in parts[0]}
  return {"importance": accumulator.finalize(),
          "per_example": without_undefined_fs_cams(per_example, selection)}


def without_undefined_fs_cams(per_example: dict, selection: Selection) -> dict:
  """The per-example arrays with NaN for the FS-CAMs that do not exist: those of an example
  whose selected class has no principal features (a class absent from the reference split),
  which would otherwise be all-zero maps of no feature. Adds "principal_defined" bool [P, N]
  (False there) so that consumers can leave those examples out and count them."""
  defined = np.asarray(selection.principal).any(1)[:, per_example["target"]]  # [P, N]
  out = {**per_example, "principal_defined": defined}
  out["fs_raw"] = np.where(defined[:, :, None, None], per_example["fs_raw"], np.nan)
  if "masked_probability" in per_example:  # [1 + P, N]: the CAM's, then the FS-CAMs'
    cam, fs = per_example["masked_probability"][:1], per_example["masked_probability"][1:]
    out["masked_probability"] = np.concatenate([cam, np.where(defined, fs, np.nan)])
  return out
