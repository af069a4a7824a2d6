"""Finding a planted confounder from explanation outputs alone (synthetic_derm's ruler).

Three pieces of evidence, each a plain record with its test:
  * ROI agreement: among images of the affected class (the class the confounder is most
    frequent in), those with the confounder have lower agreement (two-sample t-test).
  * Mass on the artefact: the share of a map's positive mass inside the confounder mask of
    images that have it, against the same masks laid over maps of images without it (so the
    control has the same place, size and shape; only the artefact differs).
  * Features: the importance matrix restricted to the artefact's pixels (what each feature
    adds to the affected class from there); its top features are the "confounder features",
    their share of the class's importance is reported, and their FS-CAM (paper 003, Eq. 5) is
    measured on the artefact against the full CAM of the same class (paired t-test).
"""
import numpy as np
from scipy import stats as scipy_stats

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


def control_pairs(confounder: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(images with the confounder, a random image without it for each), fixed by `seed`."""
  confounder = np.asarray(confounder).astype(bool)
  with_c, without = np.flatnonzero(confounder), np.flatnonzero(~confounder)
  if not len(with_c) or not len(without):
    return with_c, np.zeros(0, np.int64)
  return with_c, np.random.default_rng(seed).choice(without, len(with_c))


def mass_on_artefact(maps: np.ndarray, masks: np.ndarray, confounder: np.ndarray,
                     seed: int = 0) -> dict:
  """Positive mass share inside the artefact: own masks vs the same masks on control maps."""
  with_c, control = control_pairs(confounder, seed)
  if not len(control):
    return {"test": "ttest_ind", "statistic": np.nan, "p": np.nan, "n": len(with_c),
            "note": "needs images with and without the confounder"}
  region = np.asarray(masks)[with_c].astype(bool)
  own = roi.mass_fraction(maps[with_c], region)
  placebo = roi.mass_fraction(maps[control], region)
  test = stats.two_sample_ttest(np.asarray(own), np.asarray(placebo))
  return {**test, "mass": float(np.nanmean(own)), "control_mass": float(np.nanmean(placebo)),
          "area": float(region.mean()), "n_with": len(with_c)}


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
  if ok.sum() < 2:
    t, p = np.nan, np.nan
  else:
    result = scipy_stats.ttest_rel(selected[ok], full[ok])
    t, p = float(result.statistic), float(result.pvalue)
  return {"test": "ttest_rel", "statistic": t, "p": p, "n": int(ok.sum()),
          "fs_cam_mass": float(np.nanmean(selected)) if ok.any() else np.nan,
          "cam_mass": float(np.nanmean(full)) if ok.any() else np.nan,
          "area": float(region.mean()) if len(idx) else np.nan}
