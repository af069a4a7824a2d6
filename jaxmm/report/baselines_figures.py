"""Figures of the scikit-learn baselines, drawn from what `--mode=baselines` wrote.

Reads `<run>/baselines/baselines.json` (rows, confusion matrices, best models, PCA
explained-variance ratios, config), `<run>/baselines/<task>/predictions.npz` (test
probabilities) and the cached test embeddings `<run>/baselines/embeddings/test.npz`; writes
into `<run>/figures/baselines/`:
  <task>_comparison.png             macro-F1 and accuracy of every model (paper 000 fig. 10/12)
  <task>_confusion_<best>.png       the best model's (validation macro-F1) confusion matrix
  <task>_roc_pr_<best fusion>.png   ROC and PR curves of the best fusion model (figs. 9, 11, 13)
  pca_explained_variance.png        cumulative explained variance and the 95% line (fig. 4)
  tsne_image_test.png               t-SNE of the test image embeddings (paper 002)
The folder is this module's own: `baselines_figures` first removes every PNG in it, so the
figures of models or tasks of an earlier baselines run are not shown beside the new ones.
"""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from jaxmm.report.run_figures import confusion_figure, roc_pr_curves  # noqa: E402
from jaxmm.report.saliency_figures import clear_figures, save_figure  # noqa: E402

FIGURE_DIR = os.path.join("figures", "baselines")
FEATURE_COLOURS = {"image": "tab:blue", "meta": "tab:orange", "fusion": "tab:green",
                   "late": "tab:purple"}
PCA_VARIANCE = 0.95
TSNE_ITERATIONS = 500


def comparison_figure(rows: list[dict], task: str, path: str) -> str:
  """Macro-F1 and accuracy per model, side by side horizontal bars coloured by features."""
  names = [r["model"] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(10, 0.32 * len(rows) + 1.4), sharey=True)
  for ax, metric in zip(axes, ("macro_f1", "accuracy")):
    ax.barh(names, [r[metric] for r in rows],
            color=[FEATURE_COLOURS.get(r["features"], "tab:grey") for r in rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel(metric.replace("_", " "))
    ax.grid(axis="x", alpha=0.3)
  axes[0].invert_yaxis()
  fig.suptitle(f"Baselines, {task} task (test)")
  return save_figure(fig, path)


def pca_figure(curves: dict, path: str) -> str:
  """Cumulative explained variance per feature set, the 95% line and the components kept."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for feature_set, ratios in curves.items():
    cumulative = np.cumsum(ratios)
    kept = int(np.searchsorted(cumulative, PCA_VARIANCE, side="right") + 1)
    ax.plot(np.arange(1, len(cumulative) + 1), cumulative,
            label=f"{feature_set} ({kept} of {len(cumulative)} components)")
  ax.axhline(PCA_VARIANCE, color="grey", linestyle="--", linewidth=0.8)
  ax.set(xlabel="components", ylabel="cumulative explained variance", ylim=(0, 1.02),
         title="PCA on standardised training features")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return save_figure(fig, path)


def tsne_points(features: np.ndarray, seed: int) -> np.ndarray:
  """2-D t-SNE [N, 2] of features [N, D] after standardising and PCA to at most 50 dims."""
  scaled = StandardScaler().fit_transform(np.asarray(features, np.float64))
  dims = min(50, scaled.shape[1], len(scaled))
  reduced = PCA(n_components=dims, svd_solver="full", random_state=seed).fit_transform(scaled)
  perplexity = min(30.0, (len(reduced) - 1) / 3)
  return TSNE(perplexity=perplexity, init="pca", max_iter=TSNE_ITERATIONS,
              random_state=seed).fit_transform(reduced)


def tsne_figure(points: np.ndarray, labels: np.ndarray, class_names: list, path: str) -> str:
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  cmap = plt.get_cmap("tab10")
  for k, name in enumerate(class_names):
    mask = labels == k
    if mask.any():
      ax.scatter(points[mask, 0], points[mask, 1], s=8, color=cmap(k % 10), label=name)
  ax.set(title=f"t-SNE of test image embeddings ({len(points)} images)", xticks=[], yticks=[])
  ax.legend(fontsize=8, markerscale=2)
  return save_figure(fig, path)


def task_figures(run_dir: str, task: str, summary: dict) -> list[str]:
  """Comparison bars, the best model's confusion matrix, the best fusion model's curves."""
  out_dir = os.path.join(run_dir, FIGURE_DIR)
  names = summary["class_names"]
  paths = [comparison_figure(summary["rows"], task,
                             os.path.join(out_dir, f"{task}_comparison.png"))]
  best = summary["best_model"]
  paths.append(confusion_figure(summary["confusion_matrix"][best], names,
                                os.path.join(out_dir, f"{task}_confusion_{best}.png"),
                                f"{best}, {task} task, test"))
  fusion = summary.get("best_fusion_model")
  predictions = os.path.join(run_dir, "baselines", task, "predictions.npz")
  if fusion and os.path.exists(predictions):
    with np.load(predictions) as data:
      probs, labels = data[f"probs/{fusion}"], data["label"]
    path = roc_pr_curves(np.log(np.clip(probs, 1e-12, 1.0)), labels, names, False,
                         os.path.join(out_dir, f"{task}_roc_pr_{fusion}.png"))
    paths += [path] if path else []
  return paths


def embedding_figures(run_dir: str, report: dict) -> list[str]:
  """PCA cumulative variance and the t-SNE of (at most config tsne_points) test embeddings."""
  out_dir = os.path.join(run_dir, FIGURE_DIR)
  paths = []
  if report.get("pca_explained_variance"):
    paths.append(pca_figure(report["pca_explained_variance"],
                            os.path.join(out_dir, "pca_explained_variance.png")))
  cache = os.path.join(run_dir, "baselines", "embeddings", "test.npz")
  tasks = report.get("tasks", {})
  limit, seed = int(report["config"].get("tsne_points") or 0), int(report["config"]["seed"])
  if not tasks or not limit or not os.path.exists(cache):
    return paths
  task = next(iter(tasks.values()))
  with np.load(cache) as data:
    if "image" not in data.files or len(data["image"]) < 5:
      return paths
    features, labels = data["image"], data[task["labels"]]
  keep = np.arange(len(features))
  if len(keep) > limit:
    keep = np.sort(np.random.default_rng(seed).choice(len(keep), limit, replace=False))
  points = tsne_points(features[keep], seed)
  paths.append(tsne_figure(points, np.asarray(labels)[keep], task["class_names"],
                           os.path.join(out_dir, "tsne_image_test.png")))
  return paths


def baselines_figures(run_dir: str) -> list[str]:
  """Every baselines figure of a run dir that has baselines/baselines.json (after clearing
  the figures of an earlier run); [] otherwise."""
  clear_figures(os.path.join(run_dir, FIGURE_DIR), ("*.png",))
  path = os.path.join(run_dir, "baselines", "baselines.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    report = json.load(f)
  paths = []
  for task, summary in report.get("tasks", {}).items():
    paths += task_figures(run_dir, task, summary)
  return paths + embedding_figures(run_dir, report)
