"""Fairness slices and significance tests: hand computations, scipy / scikit-learn parity."""
import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
from sklearn import metrics as skm

from jaxmm.evaluation import fairness, stats
from jaxmm.train import metrics as metrics_lib


def random_predictions(n=240, k=4, seed=0, signal=1.2):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k))
  logits[np.arange(n), labels] += signal
  return labels, scipy.special.softmax(logits, axis=1), logits


# ------------------------------------------------------------------ z-test

def test_two_proportion_ztest_against_hand_numbers():
  test = fairness.two_proportion_ztest(80, 100, 60, 100)
  # pooled p = 0.7, se = sqrt(0.7 * 0.3 * (1/100 + 1/100)) = 0.064807
  assert test["z"] == pytest.approx(0.2 / math.sqrt(0.7 * 0.3 * 0.02), rel=1e-12)
  assert test["z"] == pytest.approx(3.086, abs=5e-4)
  assert test["p"] == pytest.approx(0.00203, abs=5e-6)
  assert test["diff"] == pytest.approx(0.2)
  assert fairness.two_proportion_ztest(60, 100, 80, 100)["z"] == pytest.approx(-test["z"])
  # Paper 000, table 8: trunk (281, 0.929) vs upper extremity (203, 0.626): z = 8.25.
  paper = fairness.two_proportion_ztest(261, 281, 127, 203)
  assert paper["z"] == pytest.approx(8.25, abs=0.01) and paper["p"] < 1e-15


def test_two_proportion_ztest_degenerate_and_bad_input():
  empty = fairness.two_proportion_ztest(0, 0, 5, 10)
  assert math.isnan(empty["z"]) and math.isnan(empty["p"]) and "empty" in empty["note"]
  for counts in ((10, 10, 5, 5), (0, 10, 0, 7)):  # pooled proportion 1, then 0
    test = fairness.two_proportion_ztest(*counts)
    assert math.isnan(test["z"]) and "no variance" in test["note"]
  with pytest.raises(ValueError, match="more successes than trials"):
    fairness.two_proportion_ztest(11, 10, 5, 10)
  with pytest.raises(ValueError, match="n_b must be a non-negative integer"):
    fairness.two_proportion_ztest(1, 10, 1, -3)


# ------------------------------------------------------------------ McNemar and Friedman

def paired_correctness(both, only_a, only_b, neither):
  a = np.r_[np.ones(both), np.ones(only_a), np.zeros(only_b), np.zeros(neither)]
  b = np.r_[np.ones(both), np.zeros(only_a), np.ones(only_b), np.zeros(neither)]
  return a.astype(int), b.astype(bool)


def test_mcnemar_chi_square_with_continuity_correction():
  a, b = paired_correctness(50, 30, 10, 7)
  test = fairness.mcnemar(a, b)
  assert (test["b"], test["c"], test["n"]) == (30, 10, 97)
  assert test["statistic"] == pytest.approx((abs(30 - 10) - 1) ** 2 / 40)  # 9.025
  assert test["p"] == pytest.approx(scipy.stats.chi2.sf(9.025, 1), rel=1e-12)
  assert test["method"] == "chi-square with continuity correction"
  # The exact test on request.
  exact = fairness.mcnemar(a, b, exact=True)
  assert exact["p"] == pytest.approx(scipy.stats.binomtest(10, 40, 0.5).pvalue, rel=1e-12)


def test_mcnemar_exact_for_few_discordant_pairs():
  a, b = paired_correctness(20, 2, 7, 3)
  test = fairness.mcnemar(a, b)
  assert test["method"] == "exact binomial" and test["statistic"] == 2
  assert test["p"] == pytest.approx(scipy.stats.binomtest(2, 9, 0.5).pvalue, rel=1e-12)
  assert test["p"] == pytest.approx(2 * (1 + 9 + 36) / 2 ** 9, rel=1e-12)  # hand binomial
  forced = fairness.mcnemar(a, b, exact=False)
  assert forced["statistic"] == pytest.approx(16 / 9)
  same = fairness.mcnemar([1, 0, 1], [1, 0, 1])
  assert (same["statistic"], same["p"], same["method"]) == (0.0, 1.0, "no discordant pairs")


def test_mcnemar_rejects_bad_input():
  with pytest.raises(ValueError, match="correct_a has 3 examples, correct_b 2"):
    fairness.mcnemar([1, 0, 1], [1, 0])
  with pytest.raises(ValueError, match="only 0/1"):
    fairness.mcnemar([1, 2, 0], [1, 0, 0])


def test_friedman_against_hand_ranks_and_scipy():
  scores = np.array([[1, 2, 3], [1, 3, 2], [1, 2, 3], [2, 1, 3]], float)
  test = fairness.friedman(scores, ["a", "b", "c"])
  # Rank sums 5, 8, 11: 12 / (N k (k + 1)) * sum R^2 - 3 N (k + 1) = 0.25 * 210 - 48 = 4.5.
  assert test["statistic"] == pytest.approx(4.5)
  assert test["p"] == pytest.approx(math.exp(-4.5 / 2))  # chi-square, 2 degrees of freedom
  assert test["kendall_w"] == pytest.approx(4.5 / (4 * 2))
  assert test["mean_ranks"] == pytest.approx({"a": 1.25, "b": 2.0, "c": 2.75})
  # Tied 0/1 correctness: scipy's tie-corrected statistic; NaN rows dropped.
  correct = np.random.default_rng(3).integers(0, 2, (60, 4)).astype(float)
  correct[5, 2] = np.nan
  test = fairness.friedman(correct, list("wxyz"))
  reference = scipy.stats.friedmanchisquare(*np.delete(correct, 5, 0).T)
  assert (test["statistic"], test["p"]) == pytest.approx((reference.statistic, reference.pvalue))
  assert (test["n"], test["dropped"]) == (59, 1)


def test_friedman_degenerate_and_bad_input():
  tied = fairness.friedman(np.ones((10, 3)), ["a", "b", "c"])
  assert math.isnan(tied["statistic"]) and "same score" in tied["note"]
  with pytest.raises(ValueError, match="at least 3 models"):
    fairness.friedman(np.ones((10, 2)), ["a", "b"])
  with pytest.raises(ValueError, match="M = 3 model names"):
    fairness.friedman(np.ones((10, 4)), ["a", "b", "c"])


# ------------------------------------------------------------------ metrics and bootstrap

def test_weighted_metrics_equal_sklearn_on_resamples():
  labels, probs, logits = random_predictions(k=4)
  reference = metrics_lib.multiclass_metrics(logits, labels)
  for name in ("accuracy", "macro_f1", "roc_auc"):
    assert fairness.metric_value(name, labels, probs) == pytest.approx(reference[name],
                                                                       rel=1e-12)
  indices = np.random.default_rng(1).integers(0, labels.size, (5, labels.size))
  weights = np.stack([np.bincount(i, minlength=labels.size) for i in indices]).astype(float)
  preds = probs.argmax(1)
  auc = fairness.weighted_roc_auc(labels, probs, weights)
  f1 = fairness.weighted_macro_f1(labels, probs, weights)
  for r, i in enumerate(indices):
    assert f1[r] == pytest.approx(skm.f1_score(labels[i], preds[i], average="macro",
                                               zero_division=0), rel=1e-12)
    assert auc[r] == pytest.approx(skm.roc_auc_score(labels[i], probs[i], multi_class="ovr"),
                                   rel=1e-12)


def test_macro_f1_leaves_out_classes_absent_from_labels_and_predictions():
  # 4 classes: 3 is never labelled nor predicted, and a resample may also lose class 2.
  labels = np.array([0, 0, 1, 1, 2, 0, 1, 0])
  preds = np.array([0, 1, 1, 1, 0, 0, 2, 0])
  probs = 0.05 + np.eye(4)[preds]
  probs /= probs.sum(1, keepdims=True)
  reference = metrics_lib.multiclass_metrics(np.log(probs), labels)["macro_f1"]
  assert fairness.metric_value("macro_f1", labels, probs) == pytest.approx(reference, rel=1e-12)
  assert reference == pytest.approx(skm.f1_score(labels, preds, average="macro"), rel=1e-12)
  summary = fairness.bootstrap_summary(labels, probs, "macro_f1", num_resamples=40, seed=3)
  values = [skm.f1_score(labels[i], preds[i], average="macro", zero_division=0)
            for idx in fairness.resample_chunks(labels.size, 40, 3) for i in idx]
  assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(
      tuple(np.percentile(values, [2.5, 97.5])), rel=1e-12)


def test_weighted_binary_auc_with_ties_equals_sklearn_sample_weight():
  rng = np.random.default_rng(2)
  positive = rng.integers(0, 2, 50).astype(bool)
  scores = np.round(rng.random(50) + 0.3 * positive, 1)  # many ties
  weights = rng.integers(0, 4, (3, 50)).astype(float)
  auc = fairness.weighted_binary_auc(positive, scores, weights)
  for r in range(3):
    assert auc[r] == pytest.approx(skm.roc_auc_score(positive, scores, sample_weight=weights[r]),
                                   rel=1e-12)
  assert np.isnan(fairness.weighted_binary_auc(positive, scores, np.where(positive, 0, 1.0)[None]))


def test_bootstrap_metric_of_accuracy_equals_bootstrap_ci_of_correctness():
  labels, probs, _ = random_predictions()
  correct = (probs.argmax(1) == labels).astype(float)
  interval = fairness.bootstrap_metric(labels, probs, "accuracy", num_resamples=500, seed=4)
  assert interval == pytest.approx(stats.bootstrap_ci(correct, np.mean, 500, seed=4), rel=1e-12)
  # A metric function (looped) and the vectorised name agree resample by resample.
  looped = fairness.bootstrap_metric(
      labels, probs, lambda y, p: skm.roc_auc_score(y, p, multi_class="ovr"), 60, seed=1)
  assert looped == pytest.approx(fairness.bootstrap_metric(labels, probs, "roc_auc", 60, seed=1),
                                 rel=1e-12)


def test_bootstrap_skips_and_counts_undefined_resamples():
  labels = np.array([0, 0, 0, 0, 0, 1])
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.7, 0.3], [0.2, 0.8]])
  summary = fairness.bootstrap_summary(labels, probs, "roc_auc", num_resamples=300, seed=0)
  without_positive = sum(int((idx != 5).all(1).sum())
                         for idx in fairness.resample_chunks(6, 300, 0))
  assert summary["num_skipped"] == without_positive > 0
  assert summary["estimate"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))
  assert 0 <= summary["ci_low"] <= summary["ci_high"] <= 1
  with pytest.raises(ValueError, match="unknown metric 'auroc'"):
    fairness.bootstrap_metric(labels, probs, "auroc")


# ------------------------------------------------------------------ slices and z-tests

def test_age_group_boundaries_and_unknown_values():
  groups = {"age": np.array([29.9, 30, 45, 60, 60.1, np.nan]),
            "sex": np.array(["male", "", None, "female", "nan", "female"], object)}
  columns = fairness.attribute_columns(groups)
  assert columns["age_group"].tolist() == ["<30", "30-60", "30-60", "30-60", ">60", "unknown"]
  assert columns["sex"].tolist() == ["male", "unknown", "unknown", "female", "unknown", "female"]
  assert fairness.category_order(columns["age_group"]) == ["<30", "30-60", ">60", "unknown"]


def test_subgroup_slices_support_accuracy_and_f1():
  labels, probs, _ = random_predictions(n=300, k=3, seed=5)
  rng = np.random.default_rng(6)
  groups = {"sex": rng.choice(["female", "male", ""], 300),
            "age": rng.choice([20.0, 30.0, 60.0, 75.0, np.nan], 300),
            "localization": rng.choice(["trunk", "back", "face"], 300)}
  rows = fairness.subgroup_slices(labels, probs, groups, "m", ["a", "b", "c"], num_resamples=200)
  for attribute in ("sex", "age_group", "localization"):
    assert sum(r["support"] for r in rows if r["attribute"] == attribute) == 300
  male = next(r for r in rows if r["attribute"] == "sex" and r["category"] == "male")
  mask = groups["sex"] == "male"
  preds = probs.argmax(1)
  assert male["support"] == mask.sum()
  assert male["accuracy"] == pytest.approx(np.mean(preds[mask] == labels[mask]))
  assert male["macro_f1"] == pytest.approx(skm.f1_score(labels[mask], preds[mask], average="macro",
                                                        zero_division=0))
  assert male["roc_auc"] == pytest.approx(skm.roc_auc_score(labels[mask], probs[mask],
                                                            multi_class="ovr"))
  assert male["accuracy_ci_low"] < male["accuracy"] < male["accuracy_ci_high"]
  middle = next(r for r in rows if r["category"] == "30-60")
  assert middle["support"] == np.isin(groups["age"], [30.0, 60.0]).sum()
  unknown_sex = next(r for r in rows if r["attribute"] == "sex" and r["category"] == "unknown")
  assert unknown_sex["support"] == (groups["sex"] == "").sum()


def test_subgroup_slices_single_class_slice_min_support_and_errors():
  labels = np.array([0, 0, 1, 1, 0])
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.8, 0.2]])
  groups = {"site": np.array(["a", "a", "b", "b", "c"])}
  rows = fairness.subgroup_slices(labels, probs, groups, "m", min_support=2, num_resamples=50)
  assert [r["category"] for r in rows] == ["a", "b"]
  # Slice "a" holds class 0 only: ROC-AUC undefined; macro-F1 over the classes it labels or
  # predicts (0 and 1), as sklearn's default.
  assert math.isnan(rows[0]["roc_auc"]) and rows[0]["macro_f1"] == pytest.approx(
      skm.f1_score([0, 0], [0, 1], average="macro", zero_division=0))
  # Slice "c" neither labels nor predicts class 1: left out, not scored 0.
  rows = fairness.subgroup_slices(labels, probs, groups, "m", num_resamples=50)
  assert rows[-1]["category"] == "c" and rows[-1]["macro_f1"] == 1.0
  with pytest.raises(ValueError, match="class_names has 3"):
    fairness.subgroup_slices(labels, probs, groups, "m", ["x", "y", "z"])
  with pytest.raises(ValueError, match="group 'site' has 4 values for 5 examples"):
    fairness.subgroup_slices(labels, probs, {"site": groups["site"][:4]}, "m")
  with pytest.raises(ValueError, match=r"labels must be integers in \[0, 2\)"):
    fairness.subgroup_slices(np.array([0, 0, 2, 1, 0]), probs, groups, "m")


def test_non_finite_probabilities_raise_naming_the_model_and_rows():
  labels, probs, _ = random_predictions(n=10, k=3)
  probs[[2, 7]] = np.nan  # a diverged model: argmax would read these rows as class 0
  with pytest.raises(ValueError, match=r"'concat': 2 of 10 rows .*\(rows \[2, 7\]\)"):
    fairness.subgroup_slices(labels, probs, {"sex": np.array(["m"] * 10)}, "concat")
  for metric in fairness.HEADLINE_METRICS:
    with pytest.raises(ValueError, match=r"2 of 10 rows"):
      fairness.metric_value(metric, labels, probs)
  probs[[2, 7]] = np.inf
  with pytest.raises(ValueError, match=r"2 of 10 rows"):
    fairness.bootstrap_summary(labels, probs, "roc_auc", num_resamples=10)


def test_pairwise_ztests_from_rows_and_from_arrays():
  labels = np.zeros(30, int)
  preds = np.r_[np.zeros(8), np.ones(2), np.zeros(5), np.ones(5), np.zeros(2), np.ones(8)]
  groups = {"age_group": np.repeat(["<30", "30-60", ">60"], 10)}
  tests = fairness.pairwise_ztests((labels, preds.astype(int), groups))
  assert [(t["category_a"], t["category_b"]) for t in tests] == [
      ("<30", "30-60"), ("<30", ">60"), ("30-60", ">60")]
  expected = fairness.two_proportion_ztest(8, 10, 2, 10)
  assert (tests[1]["z"], tests[1]["p"]) == pytest.approx((expected["z"], expected["p"]))
  assert all(t["alpha_adjusted"] == pytest.approx(0.05 / 3) for t in tests)
  assert [t["significant"] for t in tests] == [False, True, False]
  rows = fairness.count_slices(labels, preds.astype(int), groups)
  assert fairness.pairwise_ztests(rows) == tests


# ------------------------------------------------------------------ explanation metrics

def test_explanation_slices_and_tests():
  dice = np.array([0.2, 0.4, np.nan, 0.6, 0.8, 0.7, 0.1, 0.5])
  table = {"dice": dice.astype(str), "sex": np.array(["female"] * 4 + ["male"] * 3 + [""]),
           "age": np.array([25, 35, 45, 65, 70, 50, 20, 40], float)}
  rows = fairness.explanation_slices(table, "dice", num_resamples=100)
  female = next(r for r in rows if r["category"] == "female")
  assert (female["n"], female["mean"]) == (3, pytest.approx(0.4))
  assert [r["category"] for r in rows if r["attribute"] == "age_group"] == ["<30", "30-60",
                                                                            ">60"]
  tests = fairness.explanation_tests(table, "dice")
  sex = next(t for t in tests if t["attribute"] == "sex")
  reference = scipy.stats.ttest_ind([0.2, 0.4, 0.6], [0.8, 0.7, 0.1])
  assert sex["test"] == "ttest" and sex["p"] == pytest.approx(reference.pvalue)
  age = next(t for t in tests if t["attribute"] == "age_group")
  assert age["test"] == "anova" and age["groups"] == ["30-60", "<30", ">60"]


def test_explanation_slices_and_tests_count_each_case_once():
  # Paper 004, Sec. 3.5: a case's images count once, by its best image, as agreement tests.
  rng = np.random.default_rng(0)
  cases = np.repeat(np.arange(12), [1, 4, 2, 3, 1, 5, 2, 2, 1, 4, 3, 2])
  sex = np.where(cases % 2, "male", "female").astype(object)
  sex[cases == 11] = "unknown"
  table = {"case": cases.astype(str), "sex": sex, "dice": rng.random(cases.size).astype(str)}
  per_case = stats.case_level({**table, "dice": table["dice"].astype(float)}, "case", ["dice"])
  male = per_case["dice"][per_case["sex"] == "male"]
  rows = fairness.explanation_slices(table, "dice", ["sex"], num_resamples=50)
  assert [(r["category"], r["n"]) for r in rows] == [("female", 6), ("male", 5), ("unknown", 1)]
  assert rows[1]["mean"] == pytest.approx(male.mean())
  (test,) = fairness.explanation_tests(table, "dice", ["sex"])
  reference = stats.compare_groups(per_case, "dice", "sex", "ttest")
  assert (test["n"], test["p"]) == (11, pytest.approx(reference["p"]))
  # A per-case table (each case once) gives the same rows; without a case column, each row is
  # one case.
  case_table = {k: per_case[k] for k in ("case", "sex", "dice")}
  assert fairness.explanation_tests(case_table, "dice", ["sex"]) == [test]
  assert fairness.explanation_tests(table, "dice", ["sex"], case_key=None)[0]["n"] == 28
