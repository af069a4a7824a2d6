"""Grouped, stratified train/validation/test splits (section 3 of paper 000_e8883a90876d02cb.txt).

All images of one group (a lesion, a patient) land in the same split, so no group leaks across
splits, while each split keeps the label proportions. The paper's 64/16/20 recipe is two
rounds of scikit-learn's StratifiedGroupKFold with five folds: one fold of everything is the
test split, then one fold of five of the remainder is the validation split
(0.2 * 0.8 = 0.16). Other fractions use the same two rounds, each holding out m of n folds
with m/n within FOLD_TOLERANCE of the requested fraction and the fewest folds that reach it
(0.1 -> 1/10, 0.25 -> 1/4, 0.05 -> 1/20, 0.15 -> 3/20), with at most MAX_FOLDS folds and
no more folds than groups. A fraction that no such m/n approximates within
MAX_FRACTION_ERROR is refused. The realised fractions then differ from m/n only by what
whole groups and stratification allow.
"""
import warnings
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

SPLIT_NAMES = ("train", "validation", "test")
# StratifiedGroupKFold's time grows with the fold count, so folds are capped and a finer m/n
# is only used when a coarser one is further than FOLD_TOLERANCE from the request. Two
# fractions with n <= 10 differ by at least 1/90 > 2 * FOLD_TOLERANCE, so a fraction that the
# former limit of 10 folds approximated within FOLD_TOLERANCE keeps its folds (0.2 -> 1/5 of
# the 64/16/20 recipe, whose splits are unchanged).
MAX_FOLDS = 50
FOLD_TOLERANCE = 0.001
MAX_FRACTION_ERROR = 0.01


def fold_fraction(fraction: float, max_folds: int = MAX_FOLDS,
                  tolerance: float = FOLD_TOLERANCE) -> tuple[int, int]:
  """Held-out folds m of n folds, 1 <= m < n <= max_folds, with m/n approximating `fraction`.

  Returns the fewest folds n whose best m/n is within `tolerance` of `fraction`; when no n
  reaches it, the closest m/n (smallest n on ties).
  """
  if max_folds < 2:
    raise ValueError(f"need at least 2 folds to hold out {fraction:.3f}, got {max_folds}")
  best = None
  for n in range(2, max_folds + 1):
    m = min(max(int(round(fraction * n)), 1), n - 1)
    error = abs(m / n - fraction)
    if error <= tolerance:
      return m, n
    if best is None or error < best[0] - 1e-9:
      best = (error, m, n)
  return best[1], best[2]


def _hold_out(strata: np.ndarray, groups: np.ndarray, fraction: float,
              seed: int) -> np.ndarray:
  """Boolean [N] mask of a grouped, stratified hold-out of about `fraction` of the rows."""
  n_rows = len(strata)
  if fraction <= 0 or n_rows == 0:
    return np.zeros(n_rows, bool)
  if fraction >= 1:
    return np.ones(n_rows, bool)
  num_groups = len(np.unique(groups))
  if num_groups < 2:
    raise ValueError(f"cannot hold out {fraction:.3f} of {num_groups} groups; use more examples")
  held, folds = fold_fraction(fraction, min(MAX_FOLDS, num_groups))
  if abs(held / folds - fraction) > MAX_FRACTION_ERROR:
    raise ValueError(f"cannot hold out {fraction:.3f} of {num_groups} groups: the closest "
                     f"fraction of at most {min(MAX_FOLDS, num_groups)} grouped folds is "
                     f"{held}/{folds} = {held / folds:.3f}; use more examples or other fractions")
  kfold = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
  mask = np.zeros(n_rows, bool)
  with warnings.catch_warnings():
    # Rare classes with fewer members than folds are expected in small builds.
    warnings.filterwarnings("ignore", message="The least populated class")
    for fold, (_, test_idx) in enumerate(kfold.split(np.zeros(n_rows), strata, groups)):
      if fold < held:
        mask[test_idx] = True
  return mask


def grouped_stratified_split(labels: Sequence, groups: Sequence,
                             fractions: Sequence[float] = (0.64, 0.16, 0.20),
                             seed: int = 0) -> dict[str, np.ndarray]:
  """Splits rows into train/validation/test, grouped by `groups`, stratified by `labels`.

  Args:
    labels: [N] stratification label per row (class id, or a summary of a multilabel row).
    groups: [N] group id per row (lesion_id, patient_id); a group never crosses splits.
    fractions: (train, validation, test) fractions, non-negative, summing to 1.
    seed: shuffling seed of the folds.

  Returns:
    {"train", "validation", "test"} -> sorted int64 row indices; together a partition of
    range(N).
  """
  labels, groups = np.asarray(labels), np.asarray(groups)
  if labels.shape != groups.shape or labels.ndim != 1:
    raise ValueError(f"labels {labels.shape} and groups {groups.shape} must be equal 1-D shapes")
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
  train_frac, val_frac, test_frac = fractions
  test = _hold_out(labels, groups, test_frac, seed)
  rest = np.flatnonzero(~test)
  rest_frac = val_frac / (train_frac + val_frac) if train_frac + val_frac > 0 else 0.0
  val = np.zeros(len(labels), bool)
  val[rest[_hold_out(labels[rest], groups[rest], rest_frac, seed + 1)]] = True
  train = ~(test | val)
  return {name: np.flatnonzero(mask).astype(np.int64)
          for name, mask in zip(SPLIT_NAMES, (train, val, test))}


def merge_rare_strata(strata: Sequence[int], min_count: int) -> np.ndarray:
  """Maps strata with fewer than `min_count` rows onto one shared stratum (-1): int64 [N].

  StratifiedGroupKFold cannot stratify a stratum smaller than its fold count; pooling the rare
  ones keeps their rows spread across splits instead.
  """
  strata = np.asarray(strata, np.int64)
  values, counts = np.unique(strata, return_counts=True)
  rare = values[counts < min_count]
  return np.where(np.isin(strata, rare), -1, strata)
