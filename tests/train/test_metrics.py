"""Classification metrics against sklearn and hand-made cases."""
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxmm.train import metrics


def test_multiclass_matches_sklearn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 200)
  logits = rng.normal(size=(200, 4)) + 2.0 * np.eye(4)[labels]
  m = metrics.multiclass_metrics(logits, labels, ["a", "b", "c", "d"])
  preds = logits.argmax(1)
  assert m["accuracy"] == skm.accuracy_score(labels, preds)
  np.testing.assert_allclose(m["macro_f1"], skm.f1_score(labels, preds, average="macro"))
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(m["roc_auc"], skm.roc_auc_score(labels, probs, multi_class="ovr"))
  assert np.array(m["confusion_matrix"]).sum() == 200
  assert m["per_class"]["b"]["support"] == int((labels == 1).sum())


def test_binary_auc_uses_positive_class():
  labels = np.array([0, 0, 1, 1])
  logits = np.array([[0, -1], [0, 0.5], [0, 0.2], [0, 2.0]], float)
  m = metrics.multiclass_metrics(logits, labels)
  assert m["roc_auc"] == 0.75


def test_masked_multilabel_accuracy_paper_001():
  # Label 0: entries (1, 0) count, -2 ignored; label 1: only -2 and -1 -> NaN under ignore.
  labels = np.array([[1, -2], [0, -1], [-2, -2]])
  logits = np.array([[2.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
  m = metrics.masked_multilabel_metrics(logits, labels, ["x", "y"])
  assert m["per_label"]["x"]["accuracy"] == 0.5 and m["per_label"]["x"]["support"] == 2
  assert np.isnan(m["per_label"]["y"]["accuracy"])
  assert m["masked_accuracy"] == 0.5
  ones = metrics.masked_multilabel_metrics(logits, labels, ["x", "y"], uncertain_policy="ones")
  assert ones["per_label"]["y"]["support"] == 1 and ones["per_label"]["y"]["accuracy"] == 0.0


def test_masked_multilabel_pr_auc_matches_sklearn_on_counted_entries():
  rng = np.random.default_rng(3)
  labels = rng.choice([1, 0, -1, -2], size=(60, 3), p=[0.3, 0.4, 0.2, 0.1])
  labels[:, 2] = np.where(labels[:, 2] == 1, 0, labels[:, 2])  # label "c": no positive
  logits = rng.normal(size=(60, 3)) + 1.5 * (labels == 1)
  m = metrics.masked_multilabel_metrics(logits, labels, ["a", "b", "c"])
  probs = 1 / (1 + np.exp(-logits))
  expected = []
  for k in range(2):
    counted = (labels[:, k] == 0) | (labels[:, k] == 1)
    expected.append(skm.average_precision_score(labels[counted, k] == 1, probs[counted, k]))
    assert m["per_label"]["abc"[k]]["pr_auc"] == pytest.approx(expected[-1])
  assert np.isnan(m["per_label"]["c"]["pr_auc"])  # no positive: undefined, not 0
  assert m["pr_auc"] == pytest.approx(np.mean(expected))
  # "ones" reads -1 as positive: the counted entries and positives change with the policy.
  ones = metrics.masked_multilabel_metrics(logits, labels, ["a", "b", "c"],
                                           uncertain_policy="ones")
  counted = labels[:, 0] != -2
  assert ones["per_label"]["a"]["pr_auc"] == pytest.approx(skm.average_precision_score(
      np.isin(labels[counted, 0], [1, -1]), probs[counted, 0]))



@pytest.mark.parametrize("policy, targets, mask", [
    ("ignore", [[1, 0, 0, 0]], [[1, 1, 0, 0]]),
    ("zeros", [[1, 0, 0, 0]], [[1, 1, 1, 0]]),
    ("ones", [[1, 0, 1, 0]], [[1, 1, 1, 0]])])
def test_masked_targets_read_uncertain_labels_by_policy(policy, targets, mask):
  # Labels 1, 0, -1 (uncertain), -2 (missing): -2 never counts, -1 as the policy says.
  got_targets, got_mask = metrics.masked_targets(np.array([[1, 0, -1, -2]]), policy)
  np.testing.assert_array_equal(got_targets, np.array(targets, bool))
  np.testing.assert_array_equal(got_mask, np.array(mask, bool))


def test_masked_targets_are_what_the_multilabel_metrics_count():
  rng = np.random.default_rng(4)
  labels = rng.choice([1, 0, -1, -2], size=(80, 2), p=[0.3, 0.4, 0.2, 0.1])
  logits = rng.normal(size=(80, 2)) + 1.5 * (labels == 1) + (labels == -1)
  probs = 1 / (1 + np.exp(-logits))
  for policy in ("ignore", "zeros", "ones"):
    m = metrics.masked_multilabel_metrics(logits, labels, ["a", "b"], policy)
    targets, mask = metrics.masked_targets(labels, policy)
    for k, name in enumerate("ab"):
      counted = mask[:, k]
      assert m["per_label"][name]["support"] == counted.sum()
      assert m["per_label"][name]["roc_auc"] == pytest.approx(
          skm.roc_auc_score(targets[counted, k], probs[counted, k]))
  with pytest.raises(ValueError, match="Unknown uncertain_policy 'maybe'"):
    metrics.masked_targets(labels, "maybe")

def absent_class_predictions():
  """5 classes: 3 is labelled but never predicted, 4 predicted but never labelled, 2 neither."""
  labels = np.array([0, 0, 0, 1, 1, 3, 3, 0, 1, 1])
  preds = np.array([0, 0, 1, 1, 4, 0, 1, 0, 1, 4])
  return labels, 10.0 * np.eye(5)[preds], preds


def test_macro_scores_follow_sklearn_default_with_absent_classes():
  labels, logits, preds = absent_class_predictions()
  m = metrics.multiclass_metrics(logits, labels)
  p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, average="macro",
                                                   zero_division=0)
  assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((p, r, f))
  assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
  # Class 2 (neither labelled nor predicted) is left out: the mean runs over 4 classes.
  assert m["macro_f1"] == pytest.approx(sum(v["f1"] for v in m["per_class"].values()) / 4)
  per_class = skm.precision_recall_fscore_support(labels, preds, labels=range(5),
                                                  zero_division=0)
  for k in range(5):
    assert [m["per_class"][str(k)][key] for key in ("precision", "recall", "f1", "support")] \
        == pytest.approx([v[k] for v in per_class])
  assert metrics.macro_f1(labels, preds, 5) == pytest.approx(f)
  assert metrics.macro_f1(labels, preds) == pytest.approx(f)
  assert np.isnan(metrics.macro_scores(np.zeros(3), np.zeros(3), np.zeros(3))["macro_f1"])


def test_batched_weighted_counts_equal_sklearn_sample_weight():
  labels, _, preds = absent_class_predictions()
  weights = np.random.default_rng(0).integers(0, 3, (4, labels.size)).astype(float)
  is_label, is_pred = np.eye(5)[labels], np.eye(5)[preds]
  scores = metrics.macro_scores(weights @ (is_label * is_pred), weights @ is_label,
                                weights @ is_pred)
  for row, w in enumerate(weights):  # sklearn on the examples the row weighs
    keep = w > 0
    assert scores["macro_f1"][row] == pytest.approx(skm.f1_score(
        labels[keep], preds[keep], average="macro", sample_weight=w[keep], zero_division=0))


def test_pr_auc_is_nan_without_positives():
  rng = np.random.default_rng(1)
  binary = metrics.multiclass_metrics(rng.normal(size=(6, 2)), np.zeros(6, int))
  assert np.isnan(binary["roc_auc"]) and np.isnan(binary["pr_auc"])
  labels = np.array([1, 0, 1, 1, 0, 0])
  logits = rng.normal(size=(6, 2))
  m = metrics.multiclass_metrics(logits, labels)
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  assert m["pr_auc"] == pytest.approx(skm.average_precision_score(labels, probs[:, 1]))
  assert np.isnan(metrics.average_precision(np.zeros(4, bool), np.arange(4.0)))
  # Multiclass: the absent classes 2 and 3 are left out of the macro PR-AUC, as of ROC-AUC.
  labels = np.array([0, 1, 0, 1, 1, 0])
  logits = rng.normal(size=(6, 4))
  m = metrics.multiclass_metrics(logits, labels)
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  assert m["pr_auc"] == pytest.approx(np.mean([skm.average_precision_score(labels == k,
                                                                           probs[:, k])
                                               for k in (0, 1)]))


@pytest.mark.parametrize("num_classes", [2, 3])
def test_non_finite_logits_raise_naming_where_and_the_rows(num_classes):
  # A NaN or inf row used to be argmaxed to class 0 and its ROC-AUC silently NaN.
  labels = np.array([0, 1, 1, 0, 1, 0])
  logits = np.random.default_rng(0).normal(size=(6, num_classes))
  logits[1, 0], logits[4] = np.nan, np.inf
  with pytest.raises(ValueError, match=r"2 of 6 rows .*\(rows \[1, 4\]\)"):
    metrics.multiclass_metrics(logits, labels)
  with pytest.raises(ValueError, match=r"2 of 6 rows .*\(rows \[1, 4\]\)"):
    metrics.masked_multilabel_metrics(logits, np.ones((6, num_classes), int))
  with pytest.raises(ValueError, match=r"^the test split: 2 of 6 rows"):
    metrics.multiclass_metrics(logits, labels, where="the test split")


def test_roc_auc_is_nan_only_for_a_single_class():
  assert np.isnan(metrics.roc_auc(np.ones(4, bool), np.arange(4.0)))
  assert np.isnan(metrics.roc_auc(np.zeros(0, bool), np.zeros(0)))
  assert metrics.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9])) == 0.75
  with pytest.raises(ValueError, match="NaN"):  # not turned into a NaN AUC
    metrics.roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.3, 0.4]))


@pytest.mark.parametrize("num_classes", [2, 4])
def test_empty_split_gives_nan_metrics_and_a_zero_confusion_matrix(num_classes):
  m = metrics.multiclass_metrics(np.zeros((0, num_classes)), np.zeros(0, int))
  for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "pr_auc"):
    assert np.isnan(m[key]), key
  assert m["num_examples"] == 0
  assert m["confusion_matrix"] == np.zeros((num_classes, num_classes), int).tolist()
  assert [c["support"] for c in m["per_class"].values()] == [0] * num_classes
