"""Subgroup slices and significance tests of classifiers (paper 000, sections 8 and 9).

Pure functions of arrays (numpy + scipy + scikit-learn) that return plain dicts or lists of row
dicts, written by `jaxmm.evaluation.fairness_runner`:
  two_proportion_ztest, pairwise_ztests   accuracy of two subgroups (pooled two-sided z-test),
                                          every pair within an attribute, Bonferroni (Sec. 8)
  mcnemar                                 two models' correctness on the same examples (table 9)
  friedman                                three or more models on the same examples (table 9)
  bootstrap_metric, bootstrap_summary     percentile bootstrap over examples of any metric of
                                          (labels, probs); accuracy, macro-F1 and ROC-AUC are
                                          computed for all resamples at once (weighted forms)
  subgroup_slices                         support, accuracy (bootstrap CI), macro-F1, ROC-AUC
                                          per category of sex, age group, site (tables 6-8)
  explanation_slices, explanation_tests   the same slices for an explanation metric (e.g. ROI
                                          Dice) with one value per case, its best image's
                                          (paper 004, Sec. 3.5, as agreement.group_tests),
                                          through stats.summarise and stats.compare_groups
Probabilities are [N, K] (K = 2 for a binary task); labels are ints [N] in [0, K).
"""
import itertools
import math
import warnings
from collections.abc import Callable

import numpy as np
import scipy.stats

from jaxmm.evaluation import stats
from jaxmm.train import metrics as metrics_lib

UNKNOWN = stats.UNKNOWN
ATTRIBUTES = ("sex", "age_group", "localization", "site")
AGE_GROUPS = ("<30", "30-60", ">60")
MISSING_TEXT = ("", "nan", "none", "null")
CASE_KEY = "case"  # the case column of agreement's ROI tables (one case, several images)
# Most values of a [resamples, N] weight matrix held at once by the vectorised metrics.
WEIGHTS_CHUNK_VALUES = 1 << 20


# ------------------------------------------------------------------ tests

def two_proportion_ztest(successes_a, n_a, successes_b, n_b) -> dict:
  """Pooled two-sided z-test of p_a = p_b, as paper 000 compares subgroups' accuracy.

  z = (p_a - p_b) / sqrt(p (1 - p) (1/n_a + 1/n_b)), p = (s_a + s_b) / (n_a + n_b); a positive
  z means group a has the higher proportion; p-value = 2 (1 - Phi(|z|)). An empty group or a
  pooled proportion of 0 or 1 (no variance) gives z = p = NaN and a "note".
  """
  counts = {"successes_a": successes_a, "n_a": n_a, "successes_b": successes_b, "n_b": n_b}
  for name, value in counts.items():
    if value < 0 or value != int(value):
      raise ValueError(f"two_proportion_ztest: {name} must be a non-negative integer, got {value}")
  if successes_a > n_a or successes_b > n_b:
    raise ValueError(f"two_proportion_ztest: more successes than trials in {counts}")
  out = {"test": "two_proportion_z", **{k: int(v) for k, v in counts.items()},
         "proportion_a": successes_a / n_a if n_a else math.nan,
         "proportion_b": successes_b / n_b if n_b else math.nan}
  out["diff"] = out["proportion_a"] - out["proportion_b"]
  if not (n_a and n_b):
    return {**out, "z": math.nan, "p": math.nan, "note": "a group is empty"}
  pooled = (successes_a + successes_b) / (n_a + n_b)
  if pooled in (0.0, 1.0):
    return {**out, "z": math.nan, "p": math.nan,
            "note": f"pooled proportion is {pooled:g}: no variance to test"}
  z = out["diff"] / math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
  return {**out, "z": z, "p": float(2 * scipy.stats.norm.sf(abs(z)))}


def _binary_vector(values, name: str) -> np.ndarray:
  values = np.asarray(values)
  if values.ndim != 1:
    raise ValueError(f"{name} must be 1-D (one 0/1 entry per example), got shape {values.shape}")
  if values.dtype != bool and not np.isin(values, (0, 1)).all():
    raise ValueError(f"{name} must hold only 0/1 or booleans; got values "
                     f"{sorted(set(np.unique(values).tolist()) - {0, 1})[:5]}")
  return values.astype(bool)


def mcnemar(correct_a, correct_b, exact: bool | None = None) -> dict:
  """McNemar's test of two models' correctness [N] (0/1 or bool) on the same examples.

  b = a right and b wrong, c = a wrong and b right. The chi-square form with continuity
  correction, (|b - c| - 1)^2 / (b + c) on 1 degree of freedom, or the exact binomial test of
  min(b, c) ~ Bin(b + c, 1/2) (statistic = min(b, c)) when b + c < 25 or `exact` is True
  (exact=False forces the chi-square). No discordant pair gives statistic 0 and p 1.
  """
  a, b = _binary_vector(correct_a, "correct_a"), _binary_vector(correct_b, "correct_b")
  if a.shape != b.shape:
    raise ValueError(f"mcnemar: correct_a has {a.size} examples, correct_b {b.size}; the "
                     f"tests pairs the same examples")
  only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
  discordant = only_a + only_b
  use_exact = discordant < 25 if exact is None else bool(exact)
  out = {"test": "mcnemar", "b": only_a, "c": only_b, "n": int(a.size)}
  if discordant == 0:
    return {**out, "statistic": 0.0, "p": 1.0, "method": "no discordant pairs"}
  if use_exact:
    statistic = min(only_a, only_b)
    p = scipy.stats.binomtest(statistic, discordant, 0.5).pvalue
    return {**out, "statistic": float(statistic), "p": float(p), "method": "exact binomial"}
  statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
  return {**out, "statistic": float(statistic), "p": float(scipy.stats.chi2.sf(statistic, 1)),
          "method": "chi-square with continuity correction"}


def friedman(scores, model_names) -> dict:
  """Friedman's test of M >= 3 models over N examples (blocks), e.g. per-example correctness.

  scores: [N, M]; examples with a NaN score are dropped ("dropped" counts them).
  scipy.stats.friedmanchisquare (tie-corrected chi-square, M - 1 degrees of freedom); Kendall's
  W = statistic / (N (M - 1)); "mean_ranks": each model's mean within-example rank (average
  ranks for ties, M = highest score). Identical scores everywhere give NaN and a "note".
  """
  scores = np.asarray(scores, np.float64)
  names = list(model_names)
  if scores.ndim != 2 or scores.shape[1] != len(names):
    raise ValueError(f"friedman: scores must be [N, M] with M = {len(names)} model names, got "
                     f"shape {scores.shape}")
  if len(names) < 3:
    raise ValueError(f"friedman needs at least 3 models, got {names}; use mcnemar for two")
  keep = ~np.isnan(scores).any(1)
  scores = scores[keep]
  n, m = scores.shape
  out = {"test": "friedman", "models": names, "n": n, "num_models": m,
         "dropped": int((~keep).sum())}
  ranks = scipy.stats.rankdata(scores, axis=1) if n else np.full((0, m), np.nan)
  out["mean_ranks"] = dict(zip(names, ranks.mean(0).tolist() if n else [math.nan] * m))
  if n < 2:
    return {**out, "statistic": math.nan, "p": math.nan, "kendall_w": math.nan,
            "note": "fewer than 2 examples"}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all ties: 0 / 0
    result = scipy.stats.friedmanchisquare(*scores.T)
  statistic = float(result.statistic)
  if not math.isfinite(statistic):
    return {**out, "statistic": math.nan, "p": math.nan, "kendall_w": math.nan,
            "note": "every example gives every model the same score"}
  return {**out, "statistic": statistic, "p": float(result.pvalue),
          "kendall_w": statistic / (n * (m - 1))}


# ------------------------------------------------------------------ metrics of (labels, probs)

def check_predictions(labels, probs, class_names=None, where: str = "predictions"
                      ) -> tuple[np.ndarray, np.ndarray]:
  """labels [N] ints in [0, K) and probs [N, K] (K = len(class_names) when given), checked;
  a row of probs with a NaN or inf raises ValueError naming `where` and the rows (it would be
  argmaxed to class 0 and ranked arbitrarily by ROC-AUC)."""
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  if probs.ndim != 2 or labels.shape != probs.shape[:1]:
    raise ValueError(f"expected labels [N] and probs [N, K]; got labels {labels.shape} and "
                     f"probs {probs.shape} (multilabel tasks are not sliced here)")
  metrics_lib.check_finite(probs, where)
  num_classes = probs.shape[1]
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f"probs have {num_classes} classes but class_names has "
                     f"{len(class_names)}: {list(class_names)}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes
                      or not np.array_equal(labels, np.round(labels))):
    raise ValueError(f"labels must be integers in [0, {num_classes}); got values in "
                     f"[{labels.min()}, {labels.max()}]")
  return labels.astype(np.int64), probs


def weighted_accuracy(labels, probs, weights) -> np.ndarray:
  """[R] accuracy of argmax(probs) for each row of example weights [R, N] (bootstrap counts)."""
  correct = (np.asarray(probs).argmax(1) == labels).astype(np.float64)
  total = weights.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, weights @ correct / total, np.nan)


def weighted_macro_f1(labels, probs, weights) -> np.ndarray:
  """[R] macro-F1 of argmax(probs) for each row of example weights [R, N]: the weighted
  per-class counts through jaxmm.train.metrics.macro_scores, the one definition training and
  the baselines use. So each row gives sklearn's f1_score(average="macro") of the examples it
  weighs (the classes labelled or predicted among them; NaN for an all-zero row)."""
  classes = np.arange(np.shape(probs)[1])
  preds = np.asarray(probs).argmax(1)
  is_label = (labels[:, None] == classes).astype(np.float64)  # [N, K]
  is_pred = (preds[:, None] == classes).astype(np.float64)
  return metrics_lib.macro_scores(weights @ (is_label * is_pred), weights @ is_label,
                                  weights @ is_pred)["macro_f1"]


def weighted_binary_auc(positive, scores, weights) -> np.ndarray:
  """[R] ROC-AUC of `scores` [N] for the bool `positive` [N] under each weight row [R, N]: the
  weighted Mann-Whitney statistic (a tie counts 1/2), as sklearn's roc_auc_score with
  sample_weight; NaN where a row weighs no positive or no negative."""
  order = np.argsort(scores, kind="stable")
  sorted_scores, pos, w = scores[order], positive[order], weights[:, order]
  starts_group = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
  group = np.cumsum(starts_group) - 1
  starts = np.flatnonzero(starts_group)
  ends = np.r_[starts[1:], sorted_scores.size]
  negative_w = w * ~pos
  cumulative = np.concatenate([np.zeros((len(w), 1)), np.cumsum(negative_w, 1)], 1)
  below = cumulative[:, starts[group]]  # negative weight scored strictly lower
  tied = cumulative[:, ends[group]] - below
  positive_w = w * pos
  num_pos, num_neg = positive_w.sum(1), negative_w.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = (positive_w * (below + 0.5 * tied)).sum(1) / (num_pos * num_neg)
  return np.where((num_pos > 0) & (num_neg > 0), auc, np.nan)


def weighted_roc_auc(labels, probs, weights) -> np.ndarray:
  """[R] ROC-AUC as jaxmm.train.metrics.multiclass_metrics: for K = 2 the AUC of probs[:, 1];
  otherwise the one-vs-rest AUC averaged over the classes present in each weighted sample
  (NaN when fewer than 2 are)."""
  probs = np.asarray(probs, np.float64)
  if probs.shape[1] == 2:
    return weighted_binary_auc(labels == 1, probs[:, 1], weights)
  per_class = np.stack([weighted_binary_auc(labels == k, probs[:, k], weights)
                        for k in np.unique(labels)], 1)
  defined = ~np.isnan(per_class)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.where(defined, per_class, 0).sum(1) / defined.sum(1)
  return np.where(defined.sum(1) >= 2, mean, np.nan)


WEIGHTED_METRICS = {"accuracy": weighted_accuracy, "macro_f1": weighted_macro_f1,
                    "roc_auc": weighted_roc_auc}
HEADLINE_METRICS = tuple(WEIGHTED_METRICS)


def get_weighted_metric(name: str) -> Callable:
  if name not in WEIGHTED_METRICS:
    raise ValueError(f"unknown metric {name!r}; valid: {sorted(WEIGHTED_METRICS)} (or pass a "
                     f"function of (labels, probs))")
  return WEIGHTED_METRICS[name]


def metric_value(name: str, labels, probs, **kwargs) -> float:
  """One named metric of the whole sample (NaN when undefined)."""
  labels, probs = check_predictions(labels, probs)
  weights = np.ones((1, labels.size))
  return float(get_weighted_metric(name)(labels, probs, weights, **kwargs)[0])


# ------------------------------------------------------------------ bootstrap

def resample_chunks(n: int, num_resamples: int, seed: int):
  """Bootstrap index arrays [rows, n], drawn exactly as stats.bootstrap_ci draws them."""
  rng = np.random.default_rng(seed)
  rows_per_chunk = max(1, stats.BOOTSTRAP_CHUNK_VALUES // n)
  for start in range(0, num_resamples, rows_per_chunk):
    yield rng.integers(0, n, size=(min(rows_per_chunk, num_resamples - start), n))


def weighted_values(weighted: Callable, labels, probs, indices: np.ndarray) -> np.ndarray:
  """[rows] a weighted metric of each resample (rows of `indices` [rows, n]), computed from
  the resample's counts of each example, WEIGHTS_CHUNK_VALUES counts at a time."""
  rows, n = indices.shape
  step = max(1, WEIGHTS_CHUNK_VALUES // n)
  out = []
  for start in range(0, rows, step):
    part = indices[start:start + step]
    offsets = part + n * np.arange(len(part))[:, None]
    counts = np.bincount(offsets.ravel(), minlength=len(part) * n).reshape(len(part), n)
    out.append(weighted(labels, probs, counts.astype(np.float64)))
  return np.concatenate(out)


def _safe_metric(metric_fn: Callable, labels, probs) -> float:
  try:
    return float(metric_fn(labels, probs))
  except ValueError:  # e.g. sklearn's ROC-AUC with one class only
    return math.nan


def bootstrap_summary(labels, scores, metric_fn, num_resamples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
  """Percentile bootstrap over examples of a metric of (labels [N], probs [N, K]).

  metric_fn: "accuracy", "macro_f1" or "roc_auc" (all resamples at once through the weighted
  forms; each resample's macro-F1 is that of metrics.macro_scores on the resample, over the
  classes it labels or predicts), or any function of (labels, probs)
  (called per resample). Resamples where the metric is undefined (NaN, or a ValueError such as
  one class only) are skipped and counted. Returns estimate, ci_low, ci_high, num_resamples,
  num_skipped; the draws are those of stats.bootstrap_ci with the same seed.
  """
  labels, probs = check_predictions(labels, scores)
  n = labels.size
  if isinstance(metric_fn, str):
    weighted = get_weighted_metric(metric_fn)
    estimate = float(weighted(labels, probs, np.ones((1, n)))[0]) if n else math.nan
    values_of = lambda idx: weighted_values(weighted, labels, probs, idx)
  else:
    estimate = _safe_metric(metric_fn, labels, probs) if n else math.nan
    values_of = lambda idx: np.array([_safe_metric(metric_fn, labels[i], probs[i])
                                      for i in idx])
  out = {"estimate": estimate, "ci_low": math.nan, "ci_high": math.nan,
         "num_resamples": num_resamples, "num_skipped": 0}
  if n < 2:
    return out
  values = np.concatenate([values_of(idx) for idx in resample_chunks(n, num_resamples, seed)])
  finite = values[np.isfinite(values)]
  out["num_skipped"] = int(values.size - finite.size)
  if finite.size:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    out["ci_low"], out["ci_high"] = float(low), float(high)
  return out


def bootstrap_metric(labels, scores, metric_fn, num_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float, float]:
  """(estimate, low, high): bootstrap_summary's percentile interval of the metric."""
  out = bootstrap_summary(labels, scores, metric_fn, num_resamples, seed, confidence)
  return out["estimate"], out["ci_low"], out["ci_high"]


# ------------------------------------------------------------------ subgroup slices

def category_of(value) -> str:
  """A grouping value as text; None, NaN and empty (or "nan", "none") values are "unknown"."""
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return UNKNOWN
  text = str(value).strip()
  return UNKNOWN if text.lower() in MISSING_TEXT else text


def _numbers(values) -> np.ndarray:
  """Values (numbers or text, e.g. read from a CSV) as float64; unparsable ones NaN."""
  values = np.asarray(values)
  if values.dtype.kind in "biuf":
    return values.astype(np.float64)
  out = np.full(values.shape, np.nan)
  for i, value in enumerate(values.tolist()):
    try:
      out[i] = float(value)
    except (TypeError, ValueError):
      pass
  return out


def attribute_columns(groups: dict, attributes=None) -> dict[str, np.ndarray]:
  """The grouping columns [N] (str) to slice by: those of `attributes` (default ATTRIBUTES)
  that `groups` has, missing values as "unknown"; "age_group" comes from an "age" column
  (stats.age_group: <30, 30-60 with both ends, >60) when `groups` has no "age_group"."""
  out = {}
  for name in ATTRIBUTES if attributes is None else attributes:
    if name in groups:
      column = groups[name]
    elif name == "age_group" and "age" in groups:
      column = stats.age_group(_numbers(groups["age"]))
    else:
      continue
    out[name] = np.array([category_of(v) for v in np.asarray(column).tolist()], dtype=str)
  return out


def category_order(column: np.ndarray) -> list[str]:
  """The categories present: age groups in age order, others sorted; "unknown" last."""
  present = set(column.tolist())
  known = present - {UNKNOWN}
  ordered = [g for g in AGE_GROUPS if g in known] if known <= set(AGE_GROUPS) else sorted(known)
  return ordered + ([UNKNOWN] if UNKNOWN in present else [])


def _check_lengths(columns: dict, n: int, where: str) -> None:
  for name, column in columns.items():
    if len(column) != n:
      raise ValueError(f"{where}: group {name!r} has {len(column)} values for {n} examples")


def slice_metrics(labels, probs, num_resamples: int = 1000, seed: int = 0,
                  confidence: float = 0.95) -> dict:
  """support, correct, accuracy (bootstrap CI), macro-F1 (metrics.macro_scores of the slice),
  ROC-AUC of a slice."""
  correct = (probs.argmax(1) == labels).astype(np.float64)
  accuracy, low, high = stats.bootstrap_ci(correct, np.mean, num_resamples, confidence, seed)
  ones = np.ones((1, labels.size))
  return {"support": int(labels.size), "correct": int(correct.sum()), "accuracy": accuracy,
          "accuracy_ci_low": low, "accuracy_ci_high": high,
          "macro_f1": float(weighted_macro_f1(labels, probs, ones)[0]),
          "roc_auc": float(weighted_roc_auc(labels, probs, ones)[0])}


def subgroup_slices(labels, probs, groups: dict, model_name: str, class_names=None,
                    min_support: int = 1, num_resamples: int = 1000, seed: int = 0,
                    confidence: float = 0.95, attributes=None) -> list[dict]:
  """Paper 000's tables 6-8: one row per attribute and category present.

  labels [N], probs [N, K]; groups: {field: [N]} (sex, age or age_group, localization,
  site, ...; `attributes` picks them, see attribute_columns). Each row: model, attribute,
  category, support, correct, accuracy with its bootstrap CI (accuracy_ci_low/high),
  macro_f1 (metrics.macro_scores of the slice: sklearn's macro-F1 over the classes the slice
  labels or predicts, so a slice reads as any other split would) and roc_auc (NaN
  when the slice has fewer than 2 classes). Categories with fewer than `min_support` examples
  are left out.
  """
  where = f"subgroup_slices of {model_name!r}"
  labels, probs = check_predictions(labels, probs, class_names, where)
  columns = attribute_columns(groups, attributes)
  _check_lengths(columns, labels.size, where)
  rows = []
  for attribute, column in columns.items():
    for category in category_order(column):
      mask = column == category
      if mask.sum() >= max(min_support, 1):
        rows.append({"model": model_name, "attribute": attribute, "category": category,
                     **slice_metrics(labels[mask], probs[mask], num_resamples, seed,
                                     confidence)})
  return rows


# ------------------------------------------------------------------ z-tests between subgroups

GROUP_KEYS = ("family", "model", "attribute")


def count_slices(labels, preds, groups: dict, model_name: str = "model", attributes=None,
                 min_support: int = 1) -> list[dict]:
  """Rows of (model, attribute, category, support, correct, accuracy) from labels and
  predicted classes [N], for pairwise_ztests."""
  labels, preds = np.asarray(labels), np.asarray(preds)
  if labels.shape != preds.shape or labels.ndim != 1:
    raise ValueError(f"labels and preds must be [N] alike; got {labels.shape}, {preds.shape}")
  columns = attribute_columns(groups, attributes)
  _check_lengths(columns, labels.size, "count_slices")
  rows = []
  for attribute, column in columns.items():
    for category in category_order(column):
      mask = column == category
      if mask.sum() >= max(min_support, 1):
        correct = int(np.sum(labels[mask] == preds[mask]))
        rows.append({"model": model_name, "attribute": attribute, "category": category,
                     "support": int(mask.sum()), "correct": correct,
                     "accuracy": correct / mask.sum()})
  return rows


def ztest_row(a: dict, b: dict) -> dict:
  """The two-proportion z-test of two slice rows' accuracy (a minus b)."""
  test = two_proportion_ztest(a["correct"], a["support"], b["correct"], b["support"])
  row = {key: a[key] for key in GROUP_KEYS if key in a}
  row.update({"category_a": a["category"], "category_b": b["category"],
              "support_a": test["n_a"], "support_b": test["n_b"],
              "accuracy_a": test["proportion_a"], "accuracy_b": test["proportion_b"],
              "diff": test["diff"], "z": test["z"], "p": test["p"]})
  if "note" in test:
    row["note"] = test["note"]
  return row


def pairwise_ztests(slices, alpha: float = 0.05) -> list[dict]:
  """Two-proportion z-tests of accuracy between every pair of categories of an attribute.

  slices: subgroup_slices / count_slices rows (rows sharing family, model and attribute are
  compared), or a tuple (labels [N], preds [N], groups) counted with count_slices. Within each
  attribute the tests get Bonferroni's alpha / (number of pairs with a finite p)
  (stats.bonferroni: alpha_adjusted, significant). z > 0: category_a is more accurate.
  """
  if isinstance(slices, tuple):
    slices = count_slices(*slices)
  by_attribute = {}
  for row in slices:
    by_attribute.setdefault(tuple(row.get(key) for key in GROUP_KEYS), []).append(row)
  out = []
  for rows in by_attribute.values():
    out += stats.bonferroni([ztest_row(a, b) for a, b in itertools.combinations(rows, 2)],
                            alpha)
  return out


# ------------------------------------------------------------------ explanation metrics

def case_rows(table: dict, metric: str, case_key: str | None = CASE_KEY) -> dict:
  """The table with `metric` as numbers and, where it has a `case_key` column, one row per
  case: stats.case_level, the case's best value of the metric and the other columns of its
  first image, as agreement.evaluate_method builds the table agreement.group_tests tests
  (Sec. 3.5 of 004_...txt). A case-level table (each case once) keeps its rows."""
  table = {**table, metric: _numbers(table[metric])}
  if case_key is None or case_key not in table:
    return table
  return stats.case_level(table, case_key, [metric])


def explanation_slices(table: dict, metric: str, attributes=None,
                       case_key: str | None = CASE_KEY, **bootstrap_kwargs) -> list:
  """Subgroup rows of an explanation metric (e.g. ROI Dice) of a table of columns, one value
  per case (case_rows: a case photographed several times counts once, by its best image).

  One row per attribute and category (attribute_columns' grouping, "unknown" included):
  attribute, category, metric, n (cases with a non-NaN value), mean, std, median and the
  bootstrap CI of the mean (stats.summarise; bootstrap_kwargs go to stats.bootstrap_ci).
  """
  table = case_rows(table, metric, case_key)
  values = table[metric]
  rows = []
  for attribute, column in attribute_columns(table, attributes).items():
    summary = stats.summarise({metric: values, attribute: column}, metric, (attribute,),
                              **bootstrap_kwargs)
    order = {c: i for i, c in enumerate(category_order(column))}
    for row in sorted(summary, key=lambda r: order[r[attribute]]):
      rows.append({"attribute": attribute, "category": row.pop(attribute), **row})
  return rows


def explanation_tests(table: dict, metric: str, attributes=None,
                      case_key: str | None = CASE_KEY) -> list:
  """Whether the metric differs between an attribute's known categories ("unknown" left out):
  a t-test for two, a one-way ANOVA for more (stats.compare_groups), one row per attribute,
  over one value per case (case_rows), as agreement.group_tests; not yet Bonferroni-adjusted."""
  table = case_rows(table, metric, case_key)
  values = table[metric]
  rows = []
  for attribute, column in attribute_columns(table, attributes).items():
    known = set(column.tolist()) - {UNKNOWN}
    test = stats.compare_groups({metric: values, attribute: column}, metric, attribute,
                                "ttest" if len(known) == 2 else "anova")
    rows.append({"attribute": attribute, **test})
  return rows
