"""Grouped stratified splits: partition, no group leakage, fractions, stratification."""
import numpy as np
import pytest

from jaxmm.data import splits


def _data(n_groups=2000, seed=0):
  rng = np.random.default_rng(seed)
  group_labels = rng.choice(4, n_groups, p=[0.6, 0.25, 0.1, 0.05])
  sizes = rng.integers(1, 4, n_groups)
  groups = np.repeat(np.arange(n_groups), sizes)
  return group_labels[groups], groups


def test_partition_without_group_leakage_and_64_16_20():
  labels, groups = _data()
  parts = splits.grouped_stratified_split(labels, groups, seed=0)
  assert list(parts) == ["train", "validation", "test"]
  everything = np.concatenate(list(parts.values()))
  np.testing.assert_array_equal(np.sort(everything), np.arange(len(labels)))
  seen = [set(groups[idx]) for idx in parts.values()]
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  fractions = [len(idx) / len(labels) for idx in parts.values()]
  np.testing.assert_allclose(fractions, [0.64, 0.16, 0.20], atol=0.02)
  overall = np.bincount(labels) / len(labels)
  for idx in parts.values():
    np.testing.assert_allclose(np.bincount(labels[idx], minlength=4) / len(idx), overall,
                               atol=0.02)


def test_deterministic_given_seed():
  labels, groups = _data()
  a = splits.grouped_stratified_split(labels, groups, seed=3)
  b = splits.grouped_stratified_split(labels, groups, seed=3)
  c = splits.grouped_stratified_split(labels, groups, seed=4)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert any(not np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("fraction,expected", [(0.2, (1, 5)), (0.1, (1, 10)), (0.25, (1, 4)),
                                               (0.3, (3, 10)), (0.5, (1, 2)), (0.05, (1, 20)),
                                               (0.15, (3, 20)), (0.03, (1, 33))])
def test_fold_fraction(fraction, expected):
  assert splits.fold_fraction(fraction) == expected


def test_fold_fraction_keeps_every_fraction_of_up_to_ten_folds():
  """m/n with n <= 10 keeps its reduced folds, so the 64/16/20 splits (1/5 twice) are unchanged."""
  for n in range(2, 11):
    for m in range(1, n):
      g = np.gcd(m, n)
      assert splits.fold_fraction(m / n) == (m // g, n // g), (m, n)
  assert splits.fold_fraction(0.16 / 0.8) == (1, 5)


def test_small_fractions_realised_within_one_percent():
  """(0.9, 0.05, 0.05) needs 20 folds; at most 10 folds made it (0.81, 0.09, 0.10)."""
  labels, groups = _data()
  parts = splits.grouped_stratified_split(labels, groups, (0.9, 0.05, 0.05), seed=0)
  fractions = [len(idx) / len(labels) for idx in parts.values()]
  np.testing.assert_allclose(fractions, [0.9, 0.05, 0.05], atol=0.01)


def test_fraction_too_fine_for_the_groups_is_refused():
  """30 groups allow at most 30 folds: 1/30 is 0.013 from 0.02 (10 folds realised 0.1)."""
  labels, groups = np.arange(30) % 2, np.arange(30)
  with pytest.raises(ValueError, match=r"cannot hold out 0.020 of 30 groups.*1/30"):
    splits.grouped_stratified_split(labels, groups, (0.96, 0.02, 0.02))


def test_other_fractions_and_empty_validation():
  labels, groups = _data()
  parts = splits.grouped_stratified_split(labels, groups, (0.7, 0.1, 0.2), seed=0)
  fractions = [len(idx) / len(labels) for idx in parts.values()]
  np.testing.assert_allclose(fractions, [0.7, 0.1, 0.2], atol=0.02)
  parts = splits.grouped_stratified_split(labels, groups, (0.8, 0.0, 0.2), seed=0)
  assert len(parts["validation"]) == 0
  assert len(parts["train"]) + len(parts["test"]) == len(labels)


def test_invalid_fractions():
  labels, groups = _data(50)
  with pytest.raises(ValueError, match="fractions"):
    splits.grouped_stratified_split(labels, groups, (0.5, 0.2, 0.2))
  with pytest.raises(ValueError, match="fractions"):
    splits.grouped_stratified_split(labels, groups, (1.2, -0.2))
  with pytest.raises(ValueError, match="groups"):
    splits.grouped_stratified_split(labels[:3], groups[:3])


def test_merge_rare_strata():
  strata = np.array([0, 0, 0, 1, 2, 2, 2, 3])
  np.testing.assert_array_equal(splits.merge_rare_strata(strata, 3), [0, 0, 0, -1, 2, 2, 2, -1])
