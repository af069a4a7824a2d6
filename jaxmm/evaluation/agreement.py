"""Agreement of saliency maps with human ROI masks over a split (paper 004, sections 3.5, 4).

From the saliency runner's arrays: a per-image table of the ROI metrics of one method (with the
grouping columns), its case-level version (the best image of each case, per metric), summaries
stratified by class x correctness and by demographic group with bootstrap 95% intervals, the
tests between groups with a Bonferroni-adjusted alpha, and the top / bottom gallery indices.

Cases (Sec. 3.5 of paper 004): a case counts once, by "only the image with the highest DS and
SRCC across the case", and Fig. 7 files that case under its class and whether it was
classified correctly. The paper classifies a case as a whole; here each image is classified on
its own, so a case's images may differ in correctness (and, for multilabel data, in the class
explained). A case's class and correctness are therefore those of the image its value comes
from: each metric's summaries group its own case table (`metric_cases`), whose every column
comes from the image with that metric's highest value. Keying cases by (case, class,
correctness) instead would count a case with a right and a wrong image twice, each time with a
value that need not be the case's best. The per-case table (`evaluate_method`'s "cases", the
per-case CSV) takes its columns from the best-Dice image, the image its Dice and Dice threshold
come from; its other metrics may come from other images.

A map is scored against the ROI of what it explains, as in paper 004: top-k runs score the first
target's map (`first_target`) against the saliency output's "roi_mask", which the saliency
runner writes as that target's own mask where the data has one mask per class (synthetic_cxr's
per-finding "roi_masks"; not their union) and as the image's ROI otherwise. An example whose
mask is empty (no ROI, or the explained finding absent) is left out (`has_roi`).
"""

import numpy as np

from jaxmm.evaluation import roi, stats

CASE_FIELDS = ("lesion_id", "study_id", "patient_id")
SITE_FIELDS = ("localization",)
STRATIFICATIONS = (("class", "correct"), ("sex",), ("age_group",), ("site",))
# (column, test kind) of paper 004's group comparisons: sex t-test, site ANOVA, age Pearson.
GROUP_TESTS = (("sex", "ttest"), ("site", "anova"), ("age", "pearson"))
TESTED_METRICS = ("dice", "spearman")


def first_target(values: np.ndarray, maps_ndim: int = 3) -> np.ndarray:
  """Top-k runs carry a k axis after N; agreement uses the first (highest) target's map."""
  return values[:, 0] if values.ndim > maps_ndim else values


def selected_maps(data: dict, method: str, which: str = "normalized") -> np.ndarray:
  key = f"{method}.{which}"
  if key not in data:
    raise KeyError(f"saliency output has no {key!r}; methods there: "
                   f"{sorted({k.split('.')[0] for k in data if '.' in k})}")
  return first_target(np.asarray(data[key], np.float32))


def has_roi(data: dict) -> np.ndarray:
  """bool [N]: the example has a non-empty ROI mask (and says it has one, where it can); with
  per-class masks, whether the first target's finding has pixels in the image."""
  masks = np.asarray(data["roi_mask"])
  ok = masks.reshape(len(masks), -1).any(1)
  if "has_roi_mask" in data:
    ok &= np.asarray(data["has_roi_mask"]).astype(bool)
  return ok


def grouping_columns(data: dict, class_names) -> dict:
  """class, predicted, correct, case, sex, age, age_group, site, confounder (where known)."""
  targets = first_target(np.asarray(data["targets"]), 1)
  label = np.asarray(data["label"])
  if label.ndim == 2:  # multilabel: the explained label and whether it is present
    correct = label[np.arange(len(label)), targets] == 1
    cls = targets
  else:
    cls, correct = label, np.asarray(data["logits"]).argmax(-1) == label
  names = np.asarray(class_names, dtype=object)
  table = {"index": np.asarray(data["index"]), "class": names[cls],
           "predicted": names[np.asarray(data["logits"]).argmax(-1)],
           "correct": correct.astype(bool)}
  if "id" in data:
    table["id"] = np.asarray(data["id"]).astype(str)
  case = next((f for f in CASE_FIELDS if f in data), None)
  table["case"] = np.asarray(data[case]).astype(str) if case else table["index"].astype(str)
  if "sex" in data:
    table["sex"] = np.asarray(data["sex"]).astype(str)
  if "age" in data:
    table["age"] = np.asarray(data["age"], np.float64)
    table["age_group"] = stats.age_group(table["age"])
  site = next((f for f in SITE_FIELDS if f in data), None)
  if site:
    table["site"] = np.asarray(data[site]).astype(str)
  if "confounder" in data:
    table["confounder"] = np.asarray(data["confounder"]).astype(int)
  return table


def per_image_table(data: dict, method: str, class_names, which: str = "normalized",
                    batch_size: int = 64) -> dict:
  """Grouping columns and ROI metrics of `method` for the examples with an ROI."""
  keep = has_roi(data)
  maps = selected_maps(data, method, which)[keep]
  masks = np.asarray(data["roi_mask"])[keep].astype(bool)
  table = {k: v[keep] for k, v in grouping_columns(data, class_names).items()}
  broken = roi.nonfinite_maps(maps)
  if broken.any():
    roi.warn_nonfinite(broken, table.get("id", table["index"]),
                       f"{which} {method} maps with an ROI hold",
                       "every ROI metric of those images is NaN and left out of the summaries")
  table.update(roi.roi_metrics(maps, masks, batch_size=batch_size))
  return table


def metric_names() -> tuple:
  return tuple(m for m in roi.METRICS if m != "dice_threshold")


def metric_cases(images: dict, metric: str) -> dict:
  """One row per case with the case's best `metric` and every other column of the image that
  value comes from (module docstring, Cases)."""
  return stats.case_level(images, "case", [metric], source=metric)


def summaries(images: dict, method: str, **bootstrap_kwargs) -> list:
  """Overall and stratified summary rows of every metric over one value per case, each
  metric's from its own case table (`metric_cases`: a case's class x correctness stratum is
  that of the image its value comes from); bootstrap 95% CI of the mean. images: the per-image
  table."""
  cases = {metric: metric_cases(images, metric) for metric in metric_names()}
  rows = []
  for by in ((),) + STRATIFICATIONS:
    if not all(column in images for column in by):
      continue
    for metric in metric_names():
      for row in stats.summarise(cases[metric], metric, by, **bootstrap_kwargs):
        group = " x ".join(str(row.pop(column)) for column in by) if by else "all"
        rows.append({"method": method, "stratification": " x ".join(by) or "all",
                     "group": group, **row})
  return rows


def group_tests(table: dict, method: str) -> list:
  """Paper 004's tests between demographic groups, for Dice and Spearman (not yet adjusted)."""
  tests = []
  for column, kind in GROUP_TESTS:
    if column not in table:
      continue
    for metric in TESTED_METRICS:
      try:
        test = stats.compare_groups(table, metric, column, kind)
      except ValueError as e:  # e.g. one sex only in a small split
        test = {"test": kind, "statistic": np.nan, "p": np.nan, "note": str(e),
                "metric": metric, "column": column}
      tests.append({"method": method, **test})
  return tests


def galleries(table: dict, fraction: float) -> dict:
  """{metric: {"top": row indices, "bottom": row indices}} for Dice and Spearman."""
  return {metric: stats.gallery_indices(table[metric], fraction) for metric in TESTED_METRICS}


def evaluate_method(data: dict, method: str, class_names, *, which: str = "normalized",
                    fraction: float = 0.1, **bootstrap_kwargs) -> dict:
  """Everything paper 004 reports for one method: tables, summaries, tests, galleries.

  "cases": each case's best value of every metric, its other columns (id, index, predicted,
  correct, dice_threshold, ...) from its best-Dice image (the first on ties; its first image
  when all its Dice are NaN); the group tests run on it."""
  images = per_image_table(data, method, class_names, which)
  cases = stats.case_level(images, "case", list(metric_names()), source="dice")
  return {"images": images, "cases": cases,
          "summaries": summaries(images, method, **bootstrap_kwargs),
          "tests": group_tests(cases, method),
          "galleries": galleries(images, fraction)}
