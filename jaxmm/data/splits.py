"""Grouped, stratified train/validation/test splits (section 3 of paper 000_e8883a90876d02cb.txt).

All images of one group (a lesion, a patient) land in the same split, so no group leaks across
splits, while each split keeps the label proportions. The paper's 64/16/20 recipe is two
rounds of scikit-learn's StratifiedGroupKFold with five folds: one fold of everything is the
test split, then one fold of five of the remainder is the validation split
(0.2 * 0.8 = 0.16). Other fractions use the same two rounds with the fold count and the
number of held-out folds chosen as the closest fraction m/n with n <= 10 (0.1 -> 1/10,
0.25 -> 1/4, 0.3 -> 3/10); the realised fractions are then as close as whole groups allow.
"""
import warnings
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

SPLIT_NAMES = ("train", "validation", "test")
MAX_FOLDS = 10


def fold_fraction(fraction: float, max_folds: int = MAX_FOLDS) -> tuple[int, int]:
  """Closest m/n to `fraction` with 1 <= m < n <= max_folds (smallest n on ties)."""
  best = None
  for n in range(2, max_folds + 1):
    m = min(max(int(round(fraction * n)), 1), n - 1)
    error = abs(m / n - fraction)
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
  held, folds = fold_fraction(fraction)
  num_groups = len(np.unique(groups))
  if num_groups < folds:
    raise ValueError(f"cannot hold out {fraction:.3f} of {num_groups} groups with {folds} "
                     f"grouped folds; use more examples")
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
