"""Classification metrics on host arrays (multiclass and masked multilabel).

Each function takes NumPy arrays and returns a flat dict of Python floats (plus nested
lists for per-class reports and confusion matrices) that can be written as JSON.

`macro_scores` is the one definition of macro precision / recall / F1 in jaxmm: training
(results.json, early stopping), the baselines (validation tuning, tables) and fairness (headline
CIs, slices) all call it, so the same predictions give the same macro-F1 everywhere.
"""
from typing import Optional, Sequence

import numpy as np
import scipy.special
from sklearn import metrics as skm


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
  """ROC-AUC (sklearn's roc_auc_score) of `scores` [N] for the bool `positive` [N]; NaN when
  `positive` holds one class only (or none), where the curve is undefined (older sklearn
  raises there, newer warns and returns NaN). Every other error, e.g. NaN scores, is raised."""
  positive = np.asarray(positive).astype(bool)
  if positive.all() or not positive.any():
    return float("nan")
  return float(skm.roc_auc_score(positive, scores))


def check_finite(scores: np.ndarray, where: str) -> None:
  """ValueError naming how many and which rows of `scores` [N, ...] hold a NaN or an inf (a
  diverged model): sklearn would raise on some metrics and others would silently argmax such
  a row to class 0."""
  scores = np.asarray(scores)
  bad = ~np.isfinite(scores).all(axis=tuple(range(1, scores.ndim)))
  if bad.any():
    rows = np.flatnonzero(bad)
    raise ValueError(f"{where}: {rows.size} of {len(scores)} rows hold NaN or inf scores "
                     f"(rows {rows[:10].tolist()}{' ...' if rows.size > 10 else ''}); a "
                     f"diverged model or broken predictions, no metric is defined for them")


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
  """PR-AUC (sklearn's average_precision_score) of `scores` [N] for the bool `positive` [N];
  NaN when there is no positive.

  Without positives precision is 0 / 0 at every threshold: the curve is undefined, as ROC-AUC
  is. sklearn warns and returns 0.0 there, which would be averaged in (or drive early stopping
  on pr_auc) as if the model had ranked badly.
  """
  positive = np.asarray(positive).astype(bool)
  if not positive.any():
    return float("nan")
  return float(skm.average_precision_score(positive, scores))


def class_counts(labels: np.ndarray, preds: np.ndarray, num_classes: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(true positives, labelled, predicted) per class, each [num_classes], of int labels and
  predicted classes [N] in [0, num_classes)."""
  labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
  true_pos = np.bincount(labels[labels == preds], minlength=num_classes)
  return (true_pos, np.bincount(labels, minlength=num_classes),
          np.bincount(preds, minlength=num_classes))


def macro_scores(true_pos, labelled, predicted) -> dict:
  """Per-class and macro precision, recall and F1 from per-class counts [..., K].

  The counts may be weighted (bootstrap resample counts) and batched: every leading axis is
  kept. This is scikit-learn's default convention (precision_recall_fscore_support with
  labels=None and zero_division=0, so f1_score(average="macro") equals "macro_f1"): the macro
  average runs over the classes that occur in the labels or in the predictions; a class in
  only one of them scores 0 where its denominator is 0. A class neither labelled nor
  predicted in the split is left out rather than scored 0: it carries no evidence about the
  model, and counting it would make the score depend on which classes a split happens to
  lack (a validation split without the rare classes scored lower than its predictions earn).

  Returns precision, recall, f1 [..., K] (0 for a class that does not occur) and
  macro_precision, macro_recall, macro_f1 [...] (NaN where no class occurs).
  """
  true_pos, labelled, predicted = (np.asarray(a, np.float64)
                                   for a in (true_pos, labelled, predicted))
  present = (labelled + predicted) > 0
  with np.errstate(invalid="ignore", divide="ignore"):
    per_class = {"precision": np.where(predicted > 0, true_pos / predicted, 0.0),
                 "recall": np.where(labelled > 0, true_pos / labelled, 0.0),
                 "f1": np.where(present, 2 * true_pos / (labelled + predicted), 0.0)}
    num_present = present.sum(-1)
    macro = {f"macro_{k}": np.where(num_present > 0, (v * present).sum(-1) / num_present,
                                    np.nan) for k, v in per_class.items()}
  return {**per_class, **macro}


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: Optional[int] = None
             ) -> float:
  """macro_scores' macro-F1 of int labels and predicted classes [N] (num_classes: default
  1 + the largest class seen; classes that occur in neither do not count)."""
  labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
  if num_classes is None:
    num_classes = int(max(labels.max(initial=-1), preds.max(initial=-1))) + 1
  return float(macro_scores(*class_counts(labels, preds, num_classes))["macro_f1"])


def multiclass_metrics(logits: np.ndarray, labels: np.ndarray,
                       class_names: Optional[Sequence[str]] = None,
                       where: str = "multiclass_metrics") -> dict:
  """Accuracy, macro precision/recall/F1, ROC-AUC, PR-AUC, per-class report and confusion
  matrix.

  Macro precision/recall/F1 follow macro_scores (sklearn's default: over the classes that are
  labelled or predicted). Binary (K = 2): ROC-AUC and PR-AUC (average precision) of the
  positive class 1 (PR-AUC NaN without positives, ROC-AUC NaN with one class only). K > 2:
  one-vs-rest ROC-AUC and PR-AUC, macro over the classes labelled in the split. per_class
  lists all K classes (support 0 for the absent). An empty split gives NaN metrics and a zero
  confusion matrix.

  Args:
    logits: [N, K] scores; probabilities are their softmax. A NaN or inf raises ValueError
      naming `where` (e.g. the split) and the rows.
    labels: [N] int in [0, K).
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  check_finite(logits, where)
  num_classes = logits.shape[1]
  class_names = list(class_names or [str(k) for k in range(num_classes)])
  probs = scipy.special.softmax(logits, axis=1)
  preds = probs.argmax(1)
  ks = list(range(num_classes))
  # sklearn's confusion_matrix rejects an empty split.
  confusion = (skm.confusion_matrix(labels, preds, labels=ks) if labels.size
               else np.zeros((num_classes, num_classes), np.int64))
  scores = macro_scores(np.diag(confusion), confusion.sum(1), confusion.sum(0))
  onehot = np.eye(num_classes)[labels]
  present = onehot.sum(0) > 0
  if num_classes == 2:
    roc = roc_auc(labels == 1, probs[:, 1])
    pr = average_precision(labels == 1, probs[:, 1])
  else:
    # Macro over the classes present in this split (sklearn raises on absent ones).
    roc = float(np.mean([roc_auc(onehot[:, k], probs[:, k])
                         for k in ks if present[k]])) if present.sum() > 1 else float("nan")
    pr = float(np.mean([average_precision(onehot[:, k], probs[:, k])
                        for k in ks if present[k]])) if present.any() else float("nan")
  return {
      "accuracy": float(np.mean(preds == labels)) if labels.size else float("nan"),
      "macro_precision": float(scores["macro_precision"]),
      "macro_recall": float(scores["macro_recall"]),
      "macro_f1": float(scores["macro_f1"]),
      "roc_auc": roc,
      "pr_auc": pr,
      "num_examples": int(len(labels)),
      "per_class": {name: {"precision": float(scores["precision"][k]),
                           "recall": float(scores["recall"][k]), "f1": float(scores["f1"][k]),
                           "support": int(confusion[k].sum())}
                    for k, name in enumerate(class_names)},
      "confusion_matrix": confusion.tolist(),
  }


def masked_targets(labels: np.ndarray, uncertain_policy: str = "ignore"
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(targets, mask), both bool [N, L], of {1, 0, -1, -2} labels [N, L] under a
  train.uncertain_policy, as masked_multilabel_metrics counts them.

  mask: the entries that count: not -2 (missing), nor -1 (uncertain) under "ignore".
  targets: the positives: 1, and -1 under "ones" ("zeros" reads -1 as 0). One definition, so
  that what else scores the predictions (run_figures' ROC / PR curves) counts the entries
  results.json counted. The NumPy, bool counterpart of losses.multilabel_targets (the BCE's).
  """
  labels = np.asarray(labels)
  if uncertain_policy == "ignore":
    return labels == 1, (labels == 0) | (labels == 1)
  if uncertain_policy in ("zeros", "ones"):
    return (labels == 1) | ((labels == -1) & (uncertain_policy == "ones")), labels != -2
  raise ValueError(f"Unknown uncertain_policy {uncertain_policy!r}; valid: ignore, zeros, ones")


def masked_multilabel_metrics(logits: np.ndarray, labels: np.ndarray,
                              label_names: Optional[Sequence[str]] = None,
                              uncertain_policy: str = "ignore", threshold: float = 0.5,
                              where: str = "masked_multilabel_metrics") -> dict:
  """Masked per-label accuracy (paper 001), ROC-AUC and PR-AUC for {1, 0, -1, -2} labels.

  An entry counts when its label is not -2 (and not -1 under the "ignore" policy; under
  "zeros"/"ones" a -1 is read as 0/1). Accuracy is the mean over labels of each label's
  accuracy on its counted entries. ROC-AUC per label over counted entries, macro over labels
  where both classes occur; PR-AUC (average_precision) per label over counted entries, macro
  over labels with a positive among them (NaN for a label without one, as for multiclass).
  A NaN or inf logit raises ValueError naming `where` (e.g. the split) and the rows.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  check_finite(logits, where)
  names = list(label_names or [str(k) for k in range(labels.shape[1])])
  probs = scipy.special.expit(logits)
  targets, mask = masked_targets(labels, uncertain_policy)
  per_label = {}
  accs, aucs, prs = [], [], []
  for k, name in enumerate(names):
    m = mask[:, k]
    acc = float(np.mean((probs[m, k] > threshold) == targets[m, k])) if m.any() else float("nan")
    auc = roc_auc(targets[m, k], probs[m, k])
    pr = average_precision(targets[m, k], probs[m, k])
    per_label[name] = {"accuracy": acc, "roc_auc": auc, "pr_auc": pr, "support": int(m.sum()),
                       "positives": int(targets[m, k].sum())}
    accs.append(acc)
    aucs.append(auc)
    prs.append(pr)

  def nanmean(values):
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")

  return {
      "masked_accuracy": nanmean(accs),
      "roc_auc": nanmean(aucs),
      "pr_auc": nanmean(prs),
      "num_examples": int(labels.shape[0]),
      "per_label": per_label,
  }


def headline(metrics: dict) -> dict:
  """The scalar entries of a metrics dict (drops per-class tables and matrices)."""
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
