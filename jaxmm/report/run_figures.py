"""Figures of a run's training files, written as PNG (atomically) into <run>/figures/training/.

  training_curves   training_curves.png: train loss (validation loss as points), the validation
                    metric with the best step marked, and the learning rate, over steps
                    (metrics.jsonl)
  confusion_figure  confusion_matrix.png: the test confusion matrix row-normalised, with the
                    counts (results.json)
  roc_pr_curves     roc_pr.png: ROC and precision-recall curves of the test predictions
                    (predictions/test.npz): one-vs-rest per class (multiclass), the positive
                    class (binary), per label where both classes occur (multilabel,
                    uncertain labels counted as config.json's train.uncertain_policy says,
                    as results.json counts them)
  comparison_bars   (pipeline dir) <workdir>/figures/comparison/model_comparison.png: each
                    variant's test metrics side by side (comparison.json)
A figure whose inputs are absent is skipped (and its file of earlier inputs removed).
"""
import json
import os
from collections.abc import Sequence

import numpy as np
import scipy.special
from sklearn import metrics as skm

# saliency_figures sets matplotlib's Agg backend before pyplot is imported.
from jaxmm.report.saliency_figures import clear_figures, plt, save_figure
from jaxmm.train import metrics as metrics_lib

TRAINING_DIR = os.path.join("figures", "training")
COMPARISON_DIR = os.path.join("figures", "comparison")
DEFAULT_METRICS = ("macro_f1", "roc_auc", "masked_accuracy", "accuracy")
MAX_LEGEND_CURVES = 15
TRAINING_FIGURES = ("training_curves.png", "confusion_matrix.png", "roc_pr.png")
COMPARISON_FIGURES = ("model_comparison.png",)


# ------------------------------------------------------------------ reading

def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def read_metrics(path: str) -> list[dict]:
  """The records of metrics.jsonl; a half-written last line (a run still writing) is skipped,
  and a (kind, step) logged twice (a resumed or re-evaluated run) keeps its last record."""
  records = {}
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and "kind" in record and "step" in record:
        records[(record["kind"], record["step"])] = record
  return sorted(records.values(), key=lambda r: r["step"])


def validation_metric(config: dict, records: list[dict]) -> str | None:
  """The metric early stopping watched (config.json), else the first of DEFAULT_METRICS that
  the validation records hold."""
  logged = {k for r in records if r["kind"] == "validation" for k in r}
  chosen = config.get("train", {}).get("early_stopping", {}).get("metric")
  if chosen in logged:
    return chosen
  return next((m for m in DEFAULT_METRICS if m in logged), None)


# ------------------------------------------------------------------ training curves

def series(records: list[dict], kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of `key` in the records of `kind`, finite values only."""
  picked = [(r["step"], r[key]) for r in records
            if r["kind"] == kind and isinstance(r.get(key), (int, float))]
  steps, values = (np.asarray(v, np.float64) for v in zip(*picked)) if picked else \
      (np.zeros(0), np.zeros(0))
  keep = np.isfinite(values)
  return steps[keep], values[keep]


def training_curves(records: list[dict], metric: str | None, path: str,
                    best_step: int | None = None) -> str | None:
  """Three panels over steps: train and validation loss, the validation `metric`, the
  learning rate. None when there is no train record."""
  steps, loss = series(records, "train", "loss")
  if not len(steps):
    return None
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
  axes[0].plot(steps, loss, color="tab:blue", lw=1.2, label="train")
  val_steps, val_loss = series(records, "validation", "loss")
  if len(val_steps):
    axes[0].plot(val_steps, val_loss, "o-", color="tab:orange", ms=3, lw=1, label="validation")
  axes[0].set_title("loss", fontsize=9)
  axes[0].legend(fontsize=8)
  metric_steps, values = series(records, "validation", metric) if metric else ([], [])
  if len(metric_steps):
    axes[1].plot(metric_steps, values, "o-", color="tab:green", ms=3, lw=1)
  axes[1].set_title(f"validation {metric or 'metric'}", fontsize=9)
  lr_steps, lr = series(records, "train", "learning_rate")
  axes[2].plot(lr_steps, lr, color="tab:gray", lw=1.2)
  axes[2].set_title("learning rate", fontsize=9)
  for ax in axes:
    if best_step is not None:
      ax.axvline(best_step, color="black", ls="--", lw=0.8)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
  title = "training" + (f" (dashed: best step {best_step})" if best_step is not None else "")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


# ------------------------------------------------------------------ confusion matrix

def row_normalised(matrix: np.ndarray) -> np.ndarray:
  """[K, K] counts -> each row divided by its sum (a row without examples stays 0)."""
  matrix = np.asarray(matrix, np.float64)
  totals = matrix.sum(1, keepdims=True)
  return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def confusion_figure(matrix, class_names: Sequence[str], path: str,
                     title: str = "test confusion matrix") -> str:
  """Rows = true class, columns = predicted; colour = share of the row, text = count and %."""
  counts = np.asarray(matrix, np.int64)
  shares = row_normalised(counts)
  k = len(counts)
  size = min(max(3.6, 0.62 * k + 1.8), 11)
  fig, ax = plt.subplots(figsize=(size + 0.8, size))
  image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
  font = 8 if k <= 10 else 6
  for i in range(k):
    for j in range(k):
      ax.text(j, i, f"{counts[i, j]}\n{100 * shares[i, j]:.0f}%", ha="center", va="center",
              fontsize=font, color="white" if shares[i, j] > 0.6 else "black")
  names = [str(n) for n in class_names] if len(class_names) == k else [str(i) for i in range(k)]
  ax.set_xticks(np.arange(k))
  ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(np.arange(k))
  ax.set_yticklabels([f"{n} (n={counts[i].sum()})" for i, n in enumerate(names)], fontsize=8)
  ax.set_xlabel("predicted", fontsize=9)
  ax.set_ylabel("true", fontsize=9)
  ax.set_title(f"{title} (row-normalised)", fontsize=10)
  plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=8)
  fig.tight_layout()
  return save_figure(fig, path)


# ------------------------------------------------------------------ ROC and PR curves

def curve_targets(logits: np.ndarray, labels: np.ndarray, multilabel: bool,
                  uncertain_policy: str = "ignore") -> list:
  """[(column, targets [n] bool, scores [n])] per curve: the positive class of a binary
  task; one-vs-rest per class of a multiclass task; per label over the entries the metrics
  count for a multilabel task (metrics_lib.masked_targets: missing -2 left out, uncertain -1
  left out or read as 0 / 1 by `uncertain_policy`). Curves need both classes."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  if multilabel:
    probs = scipy.special.expit(logits)
    targets, mask = metrics_lib.masked_targets(labels, uncertain_policy)
    curves = [(k, targets[mask[:, k], k], probs[mask[:, k], k]) for k in range(labels.shape[1])]
  else:
    probs = scipy.special.softmax(logits, axis=1)
    columns = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    curves = [(k, labels.astype(np.int64) == k, probs[:, k]) for k in columns]
  return [(k, t, s) for k, t, s in curves if 0 < t.sum() < len(t)]


def roc_pr_curves(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  multilabel: bool, path: str, split: str = "test",
                  uncertain_policy: str = "ignore") -> str | None:
  """ROC (left, chance diagonal dashed) and precision-recall (right) curves with their AUC /
  average precision in the legend. logits [N, K]; labels [N] (multiclass) or [N, K]
  (multilabel: the titles name `uncertain_policy`, which decides what a -1 counts as)."""
  curves = curve_targets(logits, labels, multilabel, uncertain_policy)
  if not curves:
    return None
  fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.4))
  colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
  for i, (k, targets, scores) in enumerate(curves):
    name = str(class_names[k]) if k < len(class_names) else str(k)
    fpr, tpr, _ = skm.roc_curve(targets, scores)
    precision, recall, _ = skm.precision_recall_curve(targets, scores)
    colour = colours(i % colours.N)
    roc_ax.plot(fpr, tpr, color=colour, lw=1.2,
                label=f"{name} ({skm.roc_auc_score(targets, scores):.3f})")
    pr_ax.plot(recall, precision, color=colour, lw=1.2, drawstyle="steps-post",
               label=f"{name} ({skm.average_precision_score(targets, scores):.3f})")
  roc_ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
  kind = "one-vs-rest per class" if len(curves) > 1 and not multilabel else \
      (f"per label, uncertain_policy {uncertain_policy}" if multilabel else
       f"positive class {curves[0][0]}")
  for ax, (x, y, title, legend) in zip(
      (roc_ax, pr_ax), (("false positive rate", "true positive rate", "ROC", "AUC"),
                        ("recall", "precision", "precision-recall", "AP"))):
    ax.set_xlabel(x, fontsize=8)
    ax.set_ylabel(y, fontsize=8)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.tick_params(labelsize=8)
    ax.set_title(f"{title}, {split} split, {kind}", fontsize=9)
    if len(curves) <= MAX_LEGEND_CURVES:
      ax.legend(fontsize=7, title=legend, title_fontsize=7, loc="lower right" if
                title == "ROC" else "lower left")
  fig.tight_layout()
  return save_figure(fig, path)


# ------------------------------------------------------------------ model comparison

def is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_columns(rows: list[dict]) -> list[str]:
  """The metric columns, in table order: a number in some row, a number or None (NaN in
  JSON) in every other."""
  return [c for c in rows[0] if any(is_number(r.get(c)) for r in rows) and
          all(is_number(r.get(c)) or r.get(c) is None for r in rows)]


def comparison_bars(rows: list[dict], path: str, split: str = "test") -> str | None:
  """Grouped bars: one group per metric, one bar per variant (`model`), values on top."""
  columns = metric_columns(rows) if rows else []
  if not columns:
    return None
  values = np.array([[np.nan if r[c] is None else r[c] for c in columns] for r in rows],
                    np.float64)
  width = 0.8 / len(rows)
  fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(columns) * max(1, len(rows) / 3)), 3.8))
  x = np.arange(len(columns))
  for i, row in enumerate(rows):
    bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, values[i], width,
                  label=str(row.get("model", i)))
    if len(rows) <= 6:
      ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
  ax.set_xticks(x)
  ax.set_xticklabels([c.replace("_", " ") for c in columns], fontsize=8)
  top = float(np.nanmax(values, initial=0.0))
  ax.set_ylim(min(0.0, float(np.nanmin(values, initial=0.0))), 1.12 if top <= 1 else 1.12 * top)
  ax.tick_params(axis="y", labelsize=8)
  ax.legend(fontsize=8, ncol=min(len(rows), 6), loc="upper center",
            bbox_to_anchor=(0.5, -0.1))
  ax.set_title(f"model comparison, {split} split", fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


# ------------------------------------------------------------------ every figure

def optional_json(path: str, default=None):
  """The JSON at `path`, or `default` when it is absent or unreadable (half written)."""
  try:
    return read_json(path)
  except (FileNotFoundError, json.JSONDecodeError):
    return default


def uncertain_policy_of(config: dict) -> str:
  """The train.uncertain_policy of a run's config.json, defaulting as training does
  (loop.compute_metrics), so the ROC / PR curves count -1 labels as results.json did."""
  return config.get("train", {}).get("uncertain_policy", "ignore")


def run_figures(run_dir: str) -> list[str]:
  """Every training figure whose inputs are in `run_dir`; returns the written paths."""
  out_dir = os.path.join(run_dir, TRAINING_DIR)
  clear_figures(out_dir, TRAINING_FIGURES)
  results = optional_json(os.path.join(run_dir, "results.json"), {})
  config = optional_json(os.path.join(run_dir, "config.json"), {})
  task = results.get("task", {})
  written = []
  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    records = read_metrics(metrics_path)
    metric = validation_metric(config, records)
    written.append(training_curves(records, metric, os.path.join(out_dir, "training_curves.png"),
                                   results.get("best_step")))
  matrix = results.get("test", {}).get("confusion_matrix")
  if matrix:
    written.append(confusion_figure(matrix, task.get("class_names", []),
                                    os.path.join(out_dir, "confusion_matrix.png")))
  predictions = os.path.join(run_dir, "predictions", "test.npz")
  if os.path.exists(predictions):
    with np.load(predictions) as data:
      logits, labels = data["logits"], data["label"]
    multilabel = bool(task.get("multilabel", labels.ndim == 2))
    written.append(roc_pr_curves(logits, labels, task.get("class_names", []), multilabel,
                                 os.path.join(out_dir, "roc_pr.png"),
                                 uncertain_policy=uncertain_policy_of(config)))
  return [p for p in written if p]


def pipeline_figures(workdir: str) -> list[str]:
  """The pipeline-level comparison bars (comparison.json), if it is there."""
  clear_figures(os.path.join(workdir, COMPARISON_DIR), COMPARISON_FIGURES)
  path = os.path.join(workdir, "comparison.json")
  if not os.path.exists(path):
    return []
  written = comparison_bars(read_json(path).get("rows", []),
                            os.path.join(workdir, COMPARISON_DIR, "model_comparison.png"))
  return [written] if written else []
