"""Classification metrics on host arrays (multiclass and masked multilabel).

Each function takes NumPy arrays and returns a flat dict of Python floats (plus nested
lists for per-class reports and confusion matrices) that can be written as JSON.
"""
from typing import Optional, Sequence

import numpy as np
import scipy.special
from sklearn import metrics as skm


def _safe_auc(fn, *args, **kwargs) -> float:
  """ROC/PR-AUC is undefined when a class is absent: return NaN instead of raising."""
  try:
    return float(fn(*args, **kwargs))
  except ValueError:
    return float("nan")


def multiclass_metrics(logits: np.ndarray, labels: np.ndarray,
                       class_names: Optional[Sequence[str]] = None) -> dict:
  """Accuracy, macro precision/recall/F1, one-vs-rest macro ROC-AUC, macro PR-AUC,
  per-class report and confusion matrix.

  Args:
    logits: [N, K] scores; probabilities are their softmax.
    labels: [N] int in [0, K).
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  num_classes = logits.shape[1]
  class_names = list(class_names or [str(k) for k in range(num_classes)])
  probs = scipy.special.softmax(logits, axis=1)
  preds = probs.argmax(1)
  ks = list(range(num_classes))
  p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=ks, zero_division=0)
  onehot = np.eye(num_classes)[labels]
  present = onehot.sum(0) > 0
  if num_classes == 2:
    roc = _safe_auc(skm.roc_auc_score, labels, probs[:, 1])
    pr = _safe_auc(skm.average_precision_score, labels, probs[:, 1])
  else:
    # Macro over the classes present in this split (sklearn raises on absent ones).
    roc = float(np.mean([_safe_auc(skm.roc_auc_score, onehot[:, k], probs[:, k])
                         for k in ks if present[k]])) if present.sum() > 1 else float("nan")
    pr = float(np.mean([_safe_auc(skm.average_precision_score, onehot[:, k], probs[:, k])
                        for k in ks if present[k]])) if present.any() else float("nan")
  return {
      "accuracy": float(np.mean(preds == labels)),
      "macro_precision": float(np.mean(p)),
      "macro_recall": float(np.mean(r)),
      "macro_f1": float(np.mean(f)),
      "roc_auc": roc,
      "pr_auc": pr,
      "num_examples": int(len(labels)),
      "per_class": {name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                           "support": int(s[k])} for k, name in enumerate(class_names)},
      "confusion_matrix": skm.confusion_matrix(labels, preds, labels=ks).tolist(),
  }


def masked_multilabel_metrics(logits: np.ndarray, labels: np.ndarray,
                              label_names: Optional[Sequence[str]] = None,
                              uncertain_policy: str = "ignore", threshold: float = 0.5) -> dict:
  """Masked per-label accuracy (paper 001) and per-label ROC-AUC for {1, 0, -1, -2} labels.

  An entry counts when its label is not -2 (and not -1 under the "ignore" policy; under
  "zeros"/"ones" a -1 is read as 0/1). Accuracy is the mean over labels of each label's
  accuracy on its counted entries; AUC per label over counted entries, macro over labels
  where both classes occur.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  names = list(label_names or [str(k) for k in range(labels.shape[1])])
  probs = scipy.special.expit(logits)
  if uncertain_policy == "ignore":
    mask = (labels == 0) | (labels == 1)
    targets = labels == 1
  elif uncertain_policy in ("zeros", "ones"):
    mask = labels != -2
    targets = (labels == 1) | ((labels == -1) & (uncertain_policy == "ones"))
  else:
    raise ValueError(f"Unknown uncertain_policy {uncertain_policy!r}; valid: ignore, zeros, ones")
  per_label = {}
  accs, aucs = [], []
  for k, name in enumerate(names):
    m = mask[:, k]
    acc = float(np.mean((probs[m, k] > threshold) == targets[m, k])) if m.any() else float("nan")
    auc = (_safe_auc(skm.roc_auc_score, targets[m, k], probs[m, k])
           if m.any() and 0 < targets[m, k].sum() < m.sum() else float("nan"))
    per_label[name] = {"accuracy": acc, "roc_auc": auc, "support": int(m.sum()),
                       "positives": int(targets[m, k].sum())}
    accs.append(acc)
    aucs.append(auc)
  return {
      "masked_accuracy": float(np.nanmean(accs)) if not np.all(np.isnan(accs)) else float("nan"),
      "roc_auc": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
      "num_examples": int(labels.shape[0]),
      "per_label": per_label,
  }


def headline(metrics: dict) -> dict:
  """The scalar entries of a metrics dict (drops per-class tables and matrices)."""
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
