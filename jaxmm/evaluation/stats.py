"""Summaries and hypothesis tests over tables of per-image or per-case metrics (numpy + scipy).

A table is a dict of equal-length 1-D numpy arrays (columns), e.g. {"dice", "spearman",
"label", "correct", "sex", "age", "case_id"}. The analysis follows Sec. 3.5 and 4.1-4.3 of
004_0180605a8214b9d6.txt:
  case_level                    one row per case, each metric's best image (Sec. 3.5), the
                                other columns from one image (the source metric's)
  summarise                     mean / std / median / bootstrap 95% CI per stratum (Sec. 4.2)
  compare_groups, bonferroni    t-test (sex), one-way ANOVA (skin tone), Pearson (age) at a
                                Bonferroni-adjusted alpha (Sec. 4.3)
  gallery_indices               the top and bottom 10% of images (Sec. 4.1)
  paired_ttest                  t-test on pairs (the confounder's same-image comparisons)
  write_table_csv, write_json   atomic outputs
"""
import csv
import io
import json
import math
import warnings

import numpy as np
import scipy.stats

from jaxmm.data.atomic import write_text_atomic

UNKNOWN = "unknown"
# Most resampled values held at once by `bootstrap_ci` (bounds memory for large samples).
BOOTSTRAP_CHUNK_VALUES = 1 << 22


def age_group(age) -> np.ndarray:
  """Ages [N] -> "<30", "30-60" (30 and 60 included), ">60", or "unknown" for NaN (paper 000)."""
  age = np.asarray(age, np.float64)
  with np.errstate(invalid="ignore"):
    return np.select([age < 30, age <= 60, age > 60], ["<30", "30-60", ">60"], UNKNOWN)


def level_percent(confidence: float) -> str:
  """A confidence level as a percentage, formatted :g so that 0.975 reads '97.5%', not '98%'
  (as :.0% would have it)."""
  return f"{100 * confidence:g}%"


def bootstrap_ci(values, statistic=np.mean, num_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
  """(statistic(values), low, high): a percentile bootstrap confidence interval.

  NaNs are dropped first. `statistic` must take `axis` (np.mean, np.median do); resamples are
  drawn with np.random.default_rng(seed), in chunks of at most BOOTSTRAP_CHUNK_VALUES values.
  Fewer than 2 values give (statistic or NaN, NaN, NaN).
  """
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  n = values.size
  estimate = float(statistic(values)) if n else math.nan
  if n < 2:
    return estimate, math.nan, math.nan
  rng = np.random.default_rng(seed)
  rows_per_chunk = max(1, BOOTSTRAP_CHUNK_VALUES // n)
  resampled = []
  for start in range(0, num_resamples, rows_per_chunk):
    rows = min(rows_per_chunk, num_resamples - start)
    resampled.append(statistic(values[rng.integers(0, n, size=(rows, n))], axis=1))
  resampled = np.concatenate(resampled)
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(resampled, [tail, 100 - tail])
  return estimate, float(low), float(high)


def best_rows(case_of_row: np.ndarray, values, num_cases: int) -> np.ndarray:
  """Row index of each case's highest value [num_cases], in case order; the first such row on
  ties, the case's first row where all its values are NaN. case_of_row: int [N] in
  0..num_cases-1, each case present."""
  values = np.asarray(values, np.float64)
  score = np.where(np.isnan(values), -np.inf, values)
  order = np.lexsort((-score, case_of_row))  # by case, highest first; stable, so first on ties
  return order[np.diff(case_of_row[order], prepend=-1) != 0]


def case_level(table: dict, case_key: str, metrics, source: str | None = None) -> dict:
  """One row per case, in order of first appearance, plus a "num_images" column.

  Each metric takes the case's maximum over its images, each metric separately, so Dice and
  Spearman may come from different images (Sec. 3.5 of 004_...txt: "only the image with the
  highest DS and SRCC across the case"); NaNs are ignored unless all of a case's are NaN.
  Other columns take the values of one image of the case: with `source` (a metric), the image
  that metric's value comes from (`best_rows`), so that a case's grouping columns (whether it
  was classified correctly, its id) describe the image its agreement describes when a case's
  images differ in them; without, the case's first row (columns constant within a case).
  """
  _, first, inverse = np.unique(np.asarray(table[case_key]), return_index=True,
                                return_inverse=True)
  order = np.argsort(first)  # np.unique sorts the keys; cases go back in appearance order
  position = np.empty_like(order)
  position[order] = np.arange(order.size)
  case_of_row = position[inverse.ravel()]
  rows = first[order] if source is None else best_rows(case_of_row, table[source], order.size)
  out = {name: np.asarray(column)[rows] for name, column in table.items()}
  for metric in metrics:
    best = np.full(order.size, np.nan)
    np.fmax.at(best, case_of_row, np.asarray(table[metric], np.float64))  # fmax skips NaN
    out[metric] = best
  out["num_images"] = np.bincount(case_of_row, minlength=order.size)
  return out


def _stratum_row(values: np.ndarray, **bootstrap_kwargs) -> dict:
  """n, mean, std (ddof 1), median and bootstrap CI of the non-NaN values."""
  values = values[~np.isnan(values)]
  n = values.size
  estimate, low, high = bootstrap_ci(values, np.mean, **bootstrap_kwargs)
  return {"n": n, "mean": estimate, "std": float(np.std(values, ddof=1)) if n > 1 else math.nan,
          "median": float(np.median(values)) if n else math.nan, "ci_low": low, "ci_high": high}


def summarise(table: dict, metric: str, by=(), **bootstrap_kwargs) -> list[dict]:
  """One row per combination of the `by` columns' values present in the table (sorted, with
  "unknown" after the known values).

  Each row holds the by-columns' values, "metric", "n" (non-NaN count), "mean", "std",
  "median", "ci_low", "ci_high" (bootstrap_ci of the mean). `by=()` gives the overall row.
  A missing group value (NaN or None, as `_known` reads them) is "unknown": all such rows
  form one stratum, as the "unknown" value of age_group does.
  """
  values = np.asarray(table[metric], np.float64)
  keys = list(zip(*([UNKNOWN if _missing(v) else v for v in np.asarray(table[column]).tolist()]
                    for column in by))) if by else None
  # NaN != NaN, so without the mapping every row with a NaN group was a stratum of its own.
  order = lambda combo: tuple((v == UNKNOWN, v) for v in combo)
  rows = []
  for combo in sorted(set(keys), key=order) if by else [()]:
    selected = np.array([key == combo for key in keys], bool) if by else slice(None)
    rows.append({**dict(zip(by, combo)), "metric": metric,
                 **_stratum_row(values[selected], **bootstrap_kwargs)})
  return rows


def _finite(values) -> np.ndarray:
  values = np.asarray(values, np.float64)
  return values[~np.isnan(values)]


def _too_few(test: str, n: int, note: str) -> dict:
  return {"test": test, "statistic": math.nan, "p": math.nan, "n": n, "note": note}


def _no_spread(test: str, groups: list) -> dict | None:
  """The row of a test between groups that are each constant, which scipy would give as NaN
  (equal groups) or an infinite statistic with p = 0 (different ones): no within-group
  variance to test against; None when some group varies."""
  if any(np.ptp(group) > 0 for group in groups):
    return None
  means = "equal" if len({float(group[0]) for group in groups}) == 1 else "different"
  return _too_few(test, sum(group.size for group in groups),
                  f"every group is constant ({means} values): no within-group variance")


def two_sample_ttest(a, b, equal_var: bool = True) -> dict:
  """scipy.stats.ttest_ind on the non-NaN values of a and b (Student's unless equal_var=False);
  statistic and p NaN, with a note, when a group has fewer than 2 values or both are constant."""
  a, b = _finite(a), _finite(b)
  if min(a.size, b.size) < 2:
    return _too_few("ttest", a.size + b.size, "fewer than 2 values in a group")
  if (constant := _no_spread("ttest", [a, b])) is not None:
    return constant
  result = scipy.stats.ttest_ind(a, b, equal_var=equal_var)
  return {"test": "ttest", "statistic": float(result.statistic), "p": float(result.pvalue),
          "n": a.size + b.size}


def paired_ttest(a, b) -> dict:
  """scipy.stats.ttest_rel of a vs b on the pairs where both are finite; statistic and p NaN,
  with a note, with fewer than 2 such pairs."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  ok = np.isfinite(a) & np.isfinite(b)
  n = int(ok.sum())
  if n < 2:
    return _too_few("ttest_rel", n, "fewer than 2 pairs")
  result = scipy.stats.ttest_rel(a[ok], b[ok])
  return {"test": "ttest_rel", "statistic": float(result.statistic), "p": float(result.pvalue),
          "n": n}


def one_way_anova(groups: list) -> dict:
  """scipy.stats.f_oneway on the non-NaN values of each group (F statistic); statistic and p
  NaN, with a note, with fewer than 2 groups or 2 values in one, or when every group is
  constant."""
  groups = [_finite(group) for group in groups]
  n = sum(group.size for group in groups)
  if len(groups) < 2 or min(group.size for group in groups) < 2:
    return _too_few("anova", n, "fewer than 2 groups, or fewer than 2 values in a group")
  if (constant := _no_spread("anova", groups)) is not None:
    return constant
  result = scipy.stats.f_oneway(*groups)
  return {"test": "anova", "statistic": float(result.statistic), "p": float(result.pvalue),
          "n": n}


def pearson(x, y) -> dict:
  """scipy.stats.pearsonr on the pairs where neither x nor y is NaN (statistic = r)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  keep = ~(np.isnan(x) | np.isnan(y))
  n = int(keep.sum())
  if n < 2:
    return _too_few("pearson", n, "fewer than 2 pairs")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
    result = scipy.stats.pearsonr(x[keep], y[keep])
  out = {"test": "pearson", "statistic": float(result.statistic), "p": float(result.pvalue),
         "n": n}
  if math.isnan(out["statistic"]):
    out["note"] = "constant input"
  return out


def _missing(value) -> bool:
  """Whether a group value is missing: None, NaN or "unknown"."""
  return value is None or value != value or str(value) == UNKNOWN


def _known(column: np.ndarray) -> np.ndarray:
  """Rows whose group is neither NaN nor "unknown" (nor None)."""
  if column.dtype.kind in "fc":
    return ~np.isnan(column)
  return np.array([not _missing(value) for value in column.tolist()], bool)


def _group_kind(column: np.ndarray, num_groups: int) -> str:
  """"auto": numbers (not bools) -> pearson; else 2 groups -> ttest, more -> anova."""
  if column.dtype.kind in "iuf":
    return "pearson"
  return "ttest" if num_groups == 2 else "anova"


def compare_groups(table: dict, metric: str, column: str, kind: str = "auto") -> dict:
  """Tests whether `metric` differs with `column` (Sec. 4.3 of 004_...txt).

  kind: "ttest" (exactly 2 groups, as for sex), "anova" (>= 2 groups, as for skin tone),
  "pearson" (a numeric column, as age), or "auto": pearson for an int or float column,
  otherwise ttest for 2 groups and anova for more (pass kind="anova" for coded categories
  such as Fitzpatrick types stored as ints). Rows whose group is "unknown" or NaN are left out.
  Returns the test's dict plus "metric", "column" and, for group tests, "groups",
  "group_sizes" (non-NaN values) and "group_means".
  """
  known = _known(np.asarray(table[column]))
  values, groups = np.asarray(table[metric], np.float64)[known], np.asarray(table[column])[known]
  names = sorted(set(groups.tolist()))
  kind = _group_kind(groups, len(names)) if kind == "auto" else kind
  if kind == "pearson":
    return {**pearson(groups.astype(np.float64), values), "metric": metric, "column": column}
  if kind not in ("ttest", "anova"):
    raise ValueError(f"unknown kind {kind!r}; valid: auto, ttest, anova, pearson")
  if kind == "ttest" and len(names) != 2:
    raise ValueError(f"ttest needs exactly 2 groups in {column!r}, got {names}")
  samples = [_finite(values[groups == name]) for name in names]
  dropped = []
  if kind == "anova":
    # A group with one value has no within-group variance to offer (e.g. a body site seen
    # once); the ANOVA runs on the other groups and names the ones it left out.
    dropped = [name for name, sample in zip(names, samples) if sample.size < 2]
    names = [name for name in names if name not in dropped]
    samples = [sample for sample in samples if sample.size >= 2]
  test = two_sample_ttest(*samples) if kind == "ttest" else one_way_anova(samples)
  means = [float(sample.mean()) if sample.size else math.nan for sample in samples]
  out = {**test, "metric": metric, "column": column, "groups": names,
         "group_sizes": [sample.size for sample in samples], "group_means": means}
  if dropped:
    out["dropped_groups"] = dropped
    out["note"] = (out.get("note", "") + f" left out groups with < 2 values: {dropped}").strip()
  return out


def bonferroni(tests: list[dict], alpha: float = 0.05) -> list[dict]:
  """Copies of `tests` with "alpha_adjusted" = alpha / m and "significant" = p < it.

  m counts the tests with a finite p (Sec. 4.3 of 004_...txt: 0.05 / 6 = 0.0083 for six).
  """
  m = sum(math.isfinite(test["p"]) for test in tests)
  adjusted = alpha / m if m else math.nan
  return [{**test, "alpha_adjusted": adjusted,
           "significant": bool(math.isfinite(test["p"]) and test["p"] < adjusted)}
          for test in tests]


def gallery_indices(values, fraction: float = 0.1) -> dict[str, np.ndarray]:
  """Indices of the highest and lowest `fraction` of the non-NaN values (Sec. 4.1 of 004_...txt).

  k = floor(fraction * number of non-NaN values), at least 1 when any exists. "top" is in
  descending order of value, "bottom" in ascending order; equal values keep index order.
  """
  values = np.asarray(values, np.float64)
  valid = np.flatnonzero(~np.isnan(values))
  k = max(1, math.floor(fraction * valid.size + 1e-9)) if valid.size else 0
  ascending = valid[np.argsort(values[valid], kind="stable")]
  descending = valid[np.argsort(-values[valid], kind="stable")]
  return {"top": descending[:k], "bottom": ascending[:k]}


def _plain(value):
  """numpy scalars and arrays -> Python values, recursively; NaN and inf -> None."""
  if isinstance(value, dict):
    return {str(key): _plain(item) for key, item in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_plain(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def format_table(rows: list[dict], columns=None) -> str:
  """A fixed-width text table of `columns` (default: the first row's keys); floats with 3
  decimals, None / NaN / inf as "-"."""
  columns = list(columns or rows[0])
  def cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
      return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
  cells = [[cell(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  def line(values) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(c) for c in cells])


def write_table_csv(path: str, rows: list[dict]) -> None:
  """Rows -> CSV at `path` (atomically); columns in order of first appearance; a missing key
  or a NaN is written as an empty field."""
  fieldnames = list(dict.fromkeys(key for row in rows for key in row))
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=fieldnames, restval="", lineterminator="\n")
  writer.writeheader()
  writer.writerows({key: _plain(value) for key, value in row.items()} for row in rows)
  write_text_atomic(path, text.getvalue())


def write_json(path: str, obj) -> None:
  """`obj` -> JSON at `path` (atomically); numpy values become Python ones, NaN becomes null."""
  write_text_atomic(path, json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n")
