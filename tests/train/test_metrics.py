"""Classification metrics against sklearn and hand-made cases."""
import numpy as np
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
