"""Finding a planted confounder from explanation outputs alone (synthetic_derm's ruler).

Three pieces of evidence, each a plain record with its test:
  * ROI agreement: among images of the affected class (the class the confounder is most
    frequent in), those with the confounder have lower agreement (two-sample t-test).
  * Mass on the artefact: the share of a map's positive mass inside the confounder mask of
    images that have it, against the same mask laid over the map of a control image of the
    same class without it (so the control has the same place, size, shape and class; only the
    artefact differs); paired t-test, as each pair shares its mask. Controls from every class
    would read a class difference in where maps put their mass as use of the artefact, the
    artefact being frequent in one class.
  * Features: the importance matrix restricted to the artefact's pixels (what each feature
    adds to the affected class from there); its top features are the "confounder features",
    their share of the class's importance is reported, and their FS-CAM (paper 003, Eq. 5) is
    measured on the artefact against the full CAM of the same class (paired t-test).
"""
import numpy as np

from jaxmm.evaluation import roi, stats


def confounder_rates(labels: np.ndarray, confounder: np.ndarray, num_classes: int) -> np.ndarray:
  """P(confounder | class) [C] (NaN for a class without examples)."""
  labels, confounder = np.asarray(labels), np.asarray(confounder).astype(bool)
  return np.array([confounder[labels == c].mean() if np.any(labels == c) else np.nan
                   for c in range(num_classes)])


def affected_class(labels, confounder, num_classes: int) -> int:
  """The class in which the confounder is most frequent."""
  return int(np.nanargmax(confounder_rates(labels, confounder, num_classes)))


def agreement_difference(values: np.ndarray, labels: np.ndarray, confounder: np.ndarray,
                         cls: int) -> dict:
  """Agreement of class `cls` images with vs without the confounder: means and t-test."""
  labels, confounder = np.asarray(labels), np.asarray(confounder).astype(bool)
  with_c = values[(labels == cls) & confounder]
  without = values[(labels == cls) & ~confounder]
  test = stats.two_sample_ttest(with_c, without)
  return {**test, "mean_with": float(np.nanmean(with_c)) if len(with_c) else np.nan,
          "mean_without": float(np.nanmean(without)) if len(without) else np.nan,
          "n_with": int(np.isfinite(with_c).sum()), "n_without": int(np.isfinite(without).sum())}


def control_pairs(confounder: np.ndarray, labels: np.ndarray,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
  """(images with the confounder [M], a control image without it for each [M], how they were
  drawn), fixed by `seed`.

  Each control is drawn from the images of its image's class without the confounder, without
  replacement where the class has at least as many of them as images to pair, else with
  replacement ("replaced_classes"); a class with none draws from every class's
  ("pooled_classes"). No image without the confounder: no controls.
  """
  confounder, labels = np.asarray(confounder).astype(bool), np.asarray(labels)
  with_c, without = np.flatnonzero(confounder), np.flatnonzero(~confounder)
  drawn = {"pooled_classes": [], "replaced_classes": []}
  if not len(with_c) or not len(without):
    return with_c, np.zeros(0, np.int64), drawn
  rng = np.random.default_rng(seed)
  control = np.empty(len(with_c), np.int64)
  for cls in np.unique(labels[with_c]):
    rows = np.flatnonzero(labels[with_c] == cls)
    candidates = without[labels[without] == cls]
    if not len(candidates):
      candidates = without
      drawn["pooled_classes"].append(cls.item())
    replace = len(candidates) < len(rows)
    if replace:
      drawn["replaced_classes"].append(cls.item())
    control[rows] = rng.choice(candidates, len(rows), replace=replace)
  return with_c, control, drawn


def describe_controls(drawn: dict, class_names=None) -> str:
  """How `control_pairs` drew the controls, in words; classes named by `class_names`."""
  name = lambda cls: str(class_names[cls]) if class_names is not None else str(cls)
  text = "same class, without replacement"
  if drawn["replaced_classes"]:
    text += (" (with replacement in " + ", ".join(map(name, drawn["replaced_classes"])) +
             ": fewer images without the confounder than with it)")
  if drawn["pooled_classes"]:
    text += ("; from every class for " + ", ".join(map(name, drawn["pooled_classes"])) +
             " (no image of the class without the confounder)")
  return text


def mass_on_artefact(maps: np.ndarray, masks: np.ndarray, confounder: np.ndarray,
                     labels: np.ndarray, seed: int = 0) -> dict:
  """Positive mass share inside the artefact: each image's own mask on its map vs on its
  control's map (`control_pairs`: same class, without the confounder); paired t-test.
  "pooled_classes" / "replaced_classes" say how the controls were drawn (`describe_controls`
  puts it in words)."""
  with_c, control, drawn = control_pairs(confounder, labels, seed)
  if not len(control):
    return {"test": "ttest_rel", "statistic": np.nan, "p": np.nan, "n": len(with_c),
            "note": "needs images with and without the confounder", **drawn}
  region = np.asarray(masks)[with_c].astype(bool)
  own = np.asarray(roi.mass_fraction(maps[with_c], region))
  placebo = np.asarray(roi.mass_fraction(maps[control], region))
  test = stats.paired_ttest(own, placebo)
  return {**test, "mass": float(np.nanmean(own)), "control_mass": float(np.nanmean(placebo)),
          "area": float(region.mean()), "n_with": len(with_c), **drawn}


def confounder_features(region_importance: np.ndarray, cls: int, fraction: float) -> np.ndarray:
  """bool [F]: the top `fraction` of features by their class-`cls` importance inside the
  confounder's pixels (Eq. 4 restricted to the artefact of the images that have it): the
  features through which the artefact raises the class."""
  column = np.nan_to_num(region_importance[:, cls], nan=-np.inf)
  count = max(1, int(np.ceil(fraction * len(column))))
  keep = np.zeros(len(column), bool)
  keep[np.argsort(-column, kind="stable")[:count]] = True
  return keep


def concentration(importance_column: np.ndarray, features: np.ndarray) -> float:
  """Share of a class column's positive importance held by `features`."""
  positive = np.clip(np.nan_to_num(importance_column), 0, None)
  return float(positive[features].sum() / max(positive.sum(), 1e-12))


def fs_cam_on_artefact(cam: np.ndarray, fs_cam: np.ndarray, masks: np.ndarray,
                       confounder: np.ndarray) -> dict:
  """Mass share on the artefact of the FS-CAM of the confounder features vs the full CAM
  (same class, same images with the confounder; paired t-test)."""
  idx = np.flatnonzero(np.asarray(confounder).astype(bool))
  region = np.asarray(masks)[idx].astype(bool)
  full = np.asarray(roi.mass_fraction(cam[idx], region), np.float64)
  selected = np.asarray(roi.mass_fraction(fs_cam[idx], region), np.float64)
  ok = np.isfinite(full) & np.isfinite(selected)
  return {**stats.paired_ttest(selected, full),
          "fs_cam_mass": float(np.nanmean(selected)) if ok.any() else np.nan,
          "cam_mass": float(np.nanmean(full)) if ok.any() else np.nan,
          "area": float(region.mean()) if len(idx) else np.nan}
