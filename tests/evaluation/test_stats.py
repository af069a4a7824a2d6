"""Metric-table statistics: parity with scipy's bootstrap and tests, and hand tables."""
import csv
import json
import math

import numpy as np
import pytest
import scipy.stats

from jaxmm.evaluation import stats

A = np.array([0.31, 0.42, np.nan, 0.28, 0.50, 0.39, 0.45])
B = np.array([0.22, 0.35, 0.30, 0.18, np.nan, 0.27])
C = np.array([0.40, 0.33, 0.47, 0.29])


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
  x = np.random.default_rng(0).normal(1.0, 2.0, 80)
  estimate, low, high = stats.bootstrap_ci(x, num_resamples=20000, seed=1)
  reference = scipy.stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile",
                                    rng=np.random.default_rng(2)).confidence_interval
  assert estimate == pytest.approx(x.mean())
  assert low == pytest.approx(reference.low, abs=0.02 * x.std())
  assert high == pytest.approx(reference.high, abs=0.02 * x.std())
  # NaNs are dropped before resampling, so the same seed gives the same interval.
  assert stats.bootstrap_ci(np.append(x, np.nan), num_resamples=20000, seed=1) == (
      estimate, low, high)


def test_bootstrap_ci_median_and_too_few_values():
  estimate, low, high = stats.bootstrap_ci([1.0, 2.0, 3.0, 4.0, 100.0], np.median, seed=0)
  assert estimate == 3.0 and 1.0 <= low <= 3.0 <= high <= 100.0
  assert stats.bootstrap_ci([3.0, np.nan])[0] == 3.0
  assert all(math.isnan(v) for v in stats.bootstrap_ci([3.0, np.nan])[1:])
  assert all(math.isnan(v) for v in stats.bootstrap_ci([]))


def test_tests_equal_scipy_on_fixed_samples():
  a, b = A[~np.isnan(A)], B[~np.isnan(B)]
  for equal_var in (True, False):
    test = stats.two_sample_ttest(A, B, equal_var=equal_var)
    reference = scipy.stats.ttest_ind(a, b, equal_var=equal_var)
    assert test["test"] == "ttest" and test["n"] == 11
    assert test["statistic"] == pytest.approx(reference.statistic, rel=1e-12)
    assert test["p"] == pytest.approx(reference.pvalue, rel=1e-12)
  anova = stats.one_way_anova([A, B, C])
  reference = scipy.stats.f_oneway(a, b, C)
  assert (anova["statistic"], anova["p"], anova["n"]) == pytest.approx(
      (reference.statistic, reference.pvalue, 15), rel=1e-12)
  x = np.array([20, 35, np.nan, 50, 64, 71, 44])
  y = np.array([0.5, 0.4, 0.3, np.nan, 0.2, 0.1, 0.35])
  r = stats.pearson(x, y)
  keep = ~(np.isnan(x) | np.isnan(y))
  reference = scipy.stats.pearsonr(x[keep], y[keep])
  assert (r["statistic"], r["p"], r["n"]) == pytest.approx(
      (reference.statistic, reference.pvalue, 5), rel=1e-12)


def test_too_few_values_give_nan_and_a_note():
  for test in (stats.two_sample_ttest(A, [0.3, np.nan]), stats.one_way_anova([A, [0.1]]),
               stats.pearson([1.0, np.nan], [np.nan, 2.0])):
    assert math.isnan(test["statistic"]) and math.isnan(test["p"]) and test["note"]


def test_constant_groups_give_nan_and_a_note_not_an_infinite_statistic():
  """scipy gives NaN for equal constant groups and -inf with p = 0 for different ones, which
  the JSON showed as statistic null, p 0, significant; a group that varies is tested."""
  for same, groups in ((True, ([1.0, 1.0, 1.0], [1.0, 1.0])),
                       (False, ([1.0, 1.0, 1.0], [2.0, 2.0]))):
    for test in (stats.two_sample_ttest(*groups), stats.one_way_anova(list(groups))):
      assert math.isnan(test["statistic"]) and math.isnan(test["p"]), test
      assert f"({'equal' if same else 'different'} values)" in test["note"]
      assert test["n"] == 5
  assert not stats.bonferroni([stats.two_sample_ttest([1.0, 1.0], [2.0, 2.0])])[0]["significant"]
  varied = stats.two_sample_ttest([1.0, 1.0, 1.0], [2.0, 2.5])
  assert varied["p"] == pytest.approx(scipy.stats.ttest_ind([1, 1, 1], [2, 2.5]).pvalue)


def test_bonferroni_divides_alpha_by_the_tests_with_a_p_value():
  tests = [{"test": "t", "p": p} for p in (0.0005, 0.0083, 0.0084, 0.02, 0.16, 0.83, math.nan)]
  adjusted = stats.bonferroni(tests)
  assert all(t["alpha_adjusted"] == pytest.approx(0.05 / 6) for t in adjusted)
  assert adjusted[0]["alpha_adjusted"] == pytest.approx(0.0083333333)
  assert [t["significant"] for t in adjusted] == [True, True, False, False, False, False, False]
  assert "alpha_adjusted" not in tests[0]  # copies, the inputs are unchanged


def test_case_level_takes_each_metrics_maximum_and_the_first_rows_other_columns():
  table = {"case_id": np.array(["b", "a", "b", "c", "a", "b"]),
           "dice": np.array([0.2, 0.5, 0.4, np.nan, 0.1, 0.3]),
           "spearman": np.array([0.9, np.nan, 0.1, np.nan, np.nan, 0.2]),
           "image": np.array([0, 1, 2, 3, 4, 5])}
  cases = stats.case_level(table, "case_id", ("dice", "spearman"))
  np.testing.assert_array_equal(cases["case_id"], ["b", "a", "c"])
  np.testing.assert_array_equal(cases["dice"], [0.4, 0.5, np.nan])
  np.testing.assert_array_equal(cases["spearman"], [0.9, np.nan, np.nan])
  np.testing.assert_array_equal(cases["image"], [0, 1, 3])
  np.testing.assert_array_equal(cases["num_images"], [3, 2, 1])


def test_case_level_with_a_source_takes_the_other_columns_from_its_best_image():
  table = {"case_id": np.array(["b", "a", "b", "c", "a", "b"]),
           "dice": np.array([0.2, 0.5, 0.4, np.nan, 0.1, 0.4]),
           "correct": np.array([True, False, False, True, True, True]),
           "image": np.array([0, 1, 2, 3, 4, 5])}
  cases = stats.case_level(table, "case_id", ("dice",), source="dice")
  np.testing.assert_array_equal(cases["dice"], [0.4, 0.5, np.nan])
  # b: its best Dice (0.4, tied: the first of images 2 and 5); c: all NaN, its first image
  np.testing.assert_array_equal(cases["image"], [2, 1, 3])
  np.testing.assert_array_equal(cases["correct"], [False, False, True])
  np.testing.assert_array_equal(cases["num_images"], [3, 2, 1])


def test_summarise_by_two_columns_counts_and_means():
  table = {"dice": np.array([0.1, 0.3, 0.5, np.nan, 0.2, 0.6, 0.4]),
           "label": np.array(["acne", "acne", "acne", "acne", "melanoma", "melanoma", "acne"]),
           "correct": np.array([True, True, False, True, True, False, True])}
  rows = stats.summarise(table, "dice", by=("label", "correct"), num_resamples=200)
  keys = [(row["label"], row["correct"]) for row in rows]
  assert keys == [("acne", False), ("acne", True), ("melanoma", False), ("melanoma", True)]
  assert [row["n"] for row in rows] == [1, 3, 1, 1]
  assert [row["mean"] for row in rows] == pytest.approx([0.5, 0.8 / 3, 0.6, 0.2])
  assert rows[1]["median"] == pytest.approx(0.3)
  assert rows[1]["std"] == pytest.approx(np.std([0.1, 0.3, 0.4], ddof=1))
  assert rows[1]["ci_low"] <= rows[1]["mean"] <= rows[1]["ci_high"]
  assert math.isnan(rows[0]["std"]) and math.isnan(rows[0]["ci_low"])
  (overall,) = stats.summarise(table, "dice")
  assert overall["metric"] == "dice" and overall["n"] == 6
  assert overall["mean"] == pytest.approx(2.1 / 6)


def test_summarise_puts_missing_group_values_in_one_unknown_stratum():
  # NaN != NaN: each NaN group used to be a stratum of one row.
  dice = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
  rows = stats.summarise({"dice": dice, "tone": np.array([np.nan, 2.0, np.nan, 1.0, 2.0])},
                         "dice", by=("tone",), num_resamples=50)
  assert [(r["tone"], r["n"]) for r in rows] == [(1.0, 1), (2.0, 2), ("unknown", 2)]
  assert rows[2]["mean"] == pytest.approx(0.2)
  sex = np.array([None, "male", "unknown", "female", float("nan")], object)
  rows = stats.summarise({"dice": dice, "sex": sex}, "dice", by=("sex",), num_resamples=50)
  assert [(r["sex"], r["n"]) for r in rows] == [("female", 1), ("male", 1), ("unknown", 3)]
  assert rows[2]["mean"] == pytest.approx(0.3)


def test_compare_groups_picks_the_test_and_excludes_unknown_groups():
  table = {"dice": np.concatenate([A, B, C, [0.9, 0.8]]),
           "sex": np.array(["female"] * 7 + ["male"] * 6 + ["female"] * 4 + ["unknown"] * 2),
           "tone": np.array(["I-II"] * 7 + ["III-IV"] * 6 + ["V-VI"] * 4 + ["unknown"] * 2),
           "age": np.array([25.0, 33, 41, 58, 62, 70, 19, 45, 50, 38, 66, 27, 31, 44, 59, 63, 22,
                            np.nan, 40])}
  sex = stats.compare_groups(table, "dice", "sex")
  reference = stats.two_sample_ttest(np.concatenate([A, C]), B)
  assert sex["test"] == "ttest" and sex["groups"] == ["female", "male"]
  assert sex["statistic"] == pytest.approx(reference["statistic"])
  assert sex["group_sizes"] == [10, 5] and sex["metric"] == "dice" and sex["column"] == "sex"
  assert sex["group_means"] == pytest.approx([np.nanmean(np.concatenate([A, C])), np.nanmean(B)])
  tone = stats.compare_groups(table, "dice", "tone")
  assert tone["test"] == "anova"
  assert tone["statistic"] == pytest.approx(stats.one_way_anova([A, B, C])["statistic"])
  age = stats.compare_groups(table, "dice", "age")
  assert age["test"] == "pearson"
  assert age["statistic"] == pytest.approx(stats.pearson(table["age"], table["dice"])["statistic"])
  with pytest.raises(ValueError, match="exactly 2 groups"):
    stats.compare_groups(table, "dice", "tone", kind="ttest")


def test_age_group_boundaries():
  groups = stats.age_group([0, 29.9, 30, 45, 60, 60.5, np.nan])
  assert groups.tolist() == ["<30", "<30", "30-60", "30-60", "30-60", ">60", "unknown"]


def test_gallery_indices_top_and_bottom_fraction():
  values = np.array([0.5, np.nan, 0.9, 0.1, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4, 0.05, np.nan])
  gallery = stats.gallery_indices(values, fraction=0.2)  # 10 values -> 2 each
  np.testing.assert_array_equal(gallery["top"], [2, 7])
  np.testing.assert_array_equal(gallery["bottom"], [10, 3])
  small = stats.gallery_indices(np.array([np.nan, 0.3, 0.1]))  # at least one each
  np.testing.assert_array_equal(small["top"], [1])
  np.testing.assert_array_equal(small["bottom"], [2])
  assert stats.gallery_indices(np.array([np.nan]))["top"].size == 0


def test_writers_produce_valid_csv_and_json(tmp_path):
  rows = [{"metric": "dice", "n": np.int64(3), "mean": np.float64(0.25)},
          {"metric": "spearman", "mean": math.nan, "extra": True}]
  stats.write_table_csv(str(tmp_path / "t.csv"), rows)
  with open(tmp_path / "t.csv") as f:
    read = list(csv.DictReader(f))
  assert read == [{"metric": "dice", "n": "3", "mean": "0.25", "extra": ""},
                  {"metric": "spearman", "n": "", "mean": "", "extra": "True"}]
  stats.write_json(str(tmp_path / "t.json"), {"rows": rows, "array": np.array([1.5, np.nan])})
  with open(tmp_path / "t.json") as f:
    assert json.load(f) == {"rows": [{"metric": "dice", "n": 3, "mean": 0.25},
                                     {"metric": "spearman", "mean": None, "extra": True}],
                            "array": [1.5, None]}


def test_anova_leaves_out_groups_with_one_value_and_names_them():
  table = {"dice": np.array([0.1, 0.2, 0.5, 0.6, 0.9]),
           "site": np.array(["back", "back", "face", "face", "foot"], dtype=object)}
  test = stats.compare_groups(table, "dice", "site")
  expected = scipy.stats.f_oneway([0.1, 0.2], [0.5, 0.6])
  assert test["groups"] == ["back", "face"] and test["dropped_groups"] == ["foot"]
  assert test["statistic"] == pytest.approx(expected.statistic)
  assert test["p"] == pytest.approx(expected.pvalue)
  assert "foot" in test["note"]
