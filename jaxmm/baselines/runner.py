"""`--mode=baselines`: scikit-learn baselines on a trained checkpoint's embeddings (paper 000).

Steps: the workdir's best checkpoint gives per-example image (and text) embeddings and the
encoded metadata of every split (jaxmm.baselines.embeddings, cached); for each task
("multiclass": the 7 diagnoses, "binary": malignant vs benign) every configured
(feature set, classifier, raw / PCA) baseline is tuned on the validation split and scored on
test (jaxmm.baselines.pipelines), late fusion averages the image and metadata models.

Output under `<workdir>/baselines/`:
  <task>/table.csv        tables 4 and 5 of paper 000: model, features, classifier, pca,
                          pca_components, accuracy, macro precision / recall / F1, ROC-AUC,
                          PR-AUC (test), val_macro_f1 and the chosen params
  <task>/deltas.csv       table 15: fusion minus image / metadata / best unimodal (the
                          unimodal model with the best validation macro-F1)
  <task>/predictions.npz  label, index, probs/<model> [N, K] on test, the grouping fields,
                          split ("test"), tuning_split and val_macro_f1/<model>
  baselines.json          all of the above, per-class reports, confusion matrices, PCA
                          explained-variance ratios per PCA model, the class names and the
                          best (fusion) model by validation macro-F1
A run first removes what an earlier one wrote there (baselines.json, every task folder; the
embedding cache is kept), so a dropped task or an empty deltas table leaves no stale file.
With several processes, process 0 writes all of it (and the embedding cache); the others
wait for it.
Model selection (tuning, best model, best unimodal) never uses test metrics.
from which jaxmm.report.baselines_figures draws `<workdir>/figures/baselines/` (comparison bars,
the best model's confusion matrix, the best fusion model's ROC / PR curves, PCA explained
variance, a t-SNE view of the test image embeddings).
"""
import functools
import os
import shutil
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from jaxmm.baselines import embeddings as embeddings_lib
from jaxmm.baselines import pipelines
from jaxmm.baselines import shap_sklearn
from jaxmm.data import pipeline as pipeline_lib
from jaxmm.data.atomic import write_npz_atomic
from jaxmm.evaluation import stats
from jaxmm.train import checkpointing, config_lib, distributed

TASKS = ("multiclass", "binary")
FEATURE_SET_NAMES = tuple(pipelines.FEATURE_SETS) + (pipelines.LATE,)
TABLE_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "pr_auc")


def default_config() -> ml_collections.ConfigDict:
  """config.baselines (any key may be overridden on the command line).

  models: classifiers (pipelines.CLASSIFIERS) per feature set, paper 000's by default; "late"
  lists the classifiers whose image and metadata models are averaged. pca: the feature sets
  that also get a PCA (95% variance) variant of each of their models.
  """
  return ml_collections.ConfigDict({
      "tasks": TASKS,
      "models": {"image": ("logreg", "svm", "knn"),
                 "meta": ("logreg", "tree", "naive_bayes", "gboost"),
                 "fusion": ("logreg", "svm", "gboost"),
                 "late": ("logreg",)},
      "pca": ("image", "fusion"),
      "seed": 0,
      "max_train_examples": config_dict.placeholder(int),  # random subset of train when set
      "split_for_tuning": "validation",
      "checkpoint": "best",
      # BLAS / OpenMP threads of the fits (None: the libraries' default). One thread is
      # faster than spinning threads on a busy machine for features this small.
      "num_threads": 1,
      "tsne_points": 1000,  # t-SNE view of test image embeddings (report.baselines_figures)
      # SHAP (shap_sklearn, one value per metadata field) of these metadata models, on the
      # first shap_examples test rows against shap_background training rows (paper 000 sec. 7)
      "shap_models": ("meta_logreg", "meta_gboost"),
      "shap_examples": 200,
      "shap_background": 100,
  })


def check_models(models) -> dict[str, tuple]:
  """config.baselines.models as {feature set: classifier names}; unknown names raise."""
  out = {}
  for feature_set, names in config_lib.checked_items(models, FEATURE_SET_NAMES,
                                                     "config.baselines.models"):
    names = (names,) if isinstance(names, str) else tuple(names or ())
    for name in names:
      try:
        pipelines.get_classifier(name)
      except ValueError as e:
        raise ValueError(f"config.baselines.models.{feature_set}: {e}") from None
    out[feature_set] = names
  return out


def baselines_config(config) -> ml_collections.ConfigDict:
  """The defaults updated with `config.baselines` (unknown keys and names raise)."""
  out = default_config()
  for key, value in config_lib.checked_items(config.get("baselines"), out, "config.baselines"):
    if key == "models":
      out.models.update(check_models(value))
    else:
      out[key] = value
  for task in out.tasks:
    if task not in TASKS:
      raise ValueError(f"config.baselines.tasks: unknown task {task!r}; valid: {list(TASKS)}")
  if out.split_for_tuning in ("train", "test"):
    raise ValueError(f"config.baselines.split_for_tuning must be a held-out split other than "
                     f"test, got {out.split_for_tuning!r}")
  for feature_set in out.pca:
    if feature_set not in pipelines.FEATURE_SETS:
      raise ValueError(f"config.baselines.pca: {feature_set!r} is not a fitted feature set; "
                       f"valid: {list(pipelines.FEATURE_SETS)}")
  checkpointing.check_checkpoint_name(out.checkpoint, "config.baselines.checkpoint")
  out.shap_models = check_shap_models(out.shap_models)
  for key in ("shap_examples", "shap_background"):
    if int(out[key]) < 1:
      raise ValueError(f"config.baselines.{key} must be >= 1, got {out[key]}")
  if out.max_train_examples is not None and int(out.max_train_examples) < 1:
    raise ValueError(f"config.baselines.max_train_examples must be >= 1 (or None for the whole "
                     f"train split), got {out.max_train_examples}")
  return out


def metadata_model_names() -> list[str]:
  """Every name a metadata baseline can have: meta_<classifier>[_pca]."""
  return [model_name("meta", c, pca) for c in pipelines.CLASSIFIERS for pca in (False, True)]


def check_shap_models(names) -> tuple:
  """config.baselines.shap_models as a tuple of metadata model names (SHAP is computed for
  metadata models only); another name raises with the valid ones and the closest."""
  names = (names,) if isinstance(names, str) else tuple(names or ())
  valid = metadata_model_names()
  for name in names:
    if name not in valid:
      raise ValueError(f"config.baselines.shap_models: {name!r} is not a metadata model "
                       f"name (SHAP explains metadata models only); valid: {valid}."
                       f"{config_lib.closest(str(name), valid)}")
  return names


# ------------------------------------------------------------------ data

def task_labels(task: str, arrays: dict, class_names: dict) -> tuple[str, list] | str:
  """(label array name, class names) of `task` in the embeddings, or the reason it is skipped.

  multiclass: "label_multiclass" (the dataset's `label`), else the run's label when it has more
  than two classes; binary: "malignant", else the run's label when it has two classes.
  """
  if np.ndim(arrays["label"]) != 1:
    return "the run's labels are multilabel; the baselines need one class per example"
  if task == "multiclass":
    if "label_multiclass" in arrays and "label_multiclass" in class_names:
      return "label_multiclass", class_names["label_multiclass"]
    if len(class_names["label"]) > 2:
      return "label", class_names["label"]
    return "the dataset has no multiclass label (the run is binary)"
  if "malignant" in arrays and "malignant" in class_names:
    return "malignant", class_names["malignant"]
  if len(class_names["label"]) == 2:
    return "label", class_names["label"]
  return "the dataset has no malignant field and the run is not binary"


def train_subset(num_examples: int, cap: Optional[int], seed: int) -> np.ndarray:
  """Sorted positions of a random subset of at most `cap` training examples (all if None)."""
  if cap is None or cap >= num_examples:
    return np.arange(num_examples)
  return np.sort(np.random.default_rng(seed).permutation(num_examples)[:cap])


def available_feature_sets(arrays: dict) -> list[str]:
  """Fitted feature sets the embeddings can provide."""
  out = []
  for name in pipelines.FEATURE_SETS:
    try:
      pipelines.feature_matrix({k: v[:1] for k, v in arrays.items()}, name)
      out.append(name)
    except KeyError:
      pass
  return out


def model_name(feature_set: str, classifier: str, pca: bool = False) -> str:
  return f"{feature_set}_{classifier}{'_pca' if pca else ''}"


# ------------------------------------------------------------------ fitting

class TaskData:
  """Features and labels of one task: {feature set: {split: X}}, {split: y}."""

  def __init__(self, splits: dict, label_key: str, class_names: list, train_index: np.ndarray,
               tuning_split: str):
    self.class_names = list(class_names)
    self.num_classes = len(class_names)
    self.tuning_split = tuning_split
    self.rows = {"train": train_index, tuning_split: slice(None), "test": slice(None)}
    self.splits = splits
    self.labels = {s: np.asarray(splits[s][label_key], np.int64)[self.rows[s]]
                   for s in ("train", tuning_split, "test")}
    self._features = {}

  def features(self, feature_set: str, split: str) -> np.ndarray:
    key = (feature_set, split)
    if key not in self._features:
      self._features[key] = pipelines.feature_matrix(self.splits[split],
                                                     feature_set)[self.rows[split]]
    return self._features[key]


def fit_model(data: TaskData, feature_set: str, classifier: str, pca: bool, seed: int) -> dict:
  """Tunes and fits one baseline; its probabilities on the tuning split and on test."""
  val = data.tuning_split
  pipeline, params, score = pipelines.tune_and_fit(
      classifier, data.features(feature_set, "train"), data.labels["train"],
      data.features(feature_set, val), data.labels[val], pca, num_classes=data.num_classes,
      seed=seed)
  return {"model": model_name(feature_set, classifier, pca), "features": feature_set,
          "classifier": classifier, "pca": pca,
          "pca_components": pipelines.pca_components(pipeline), "params": params,
          "val_macro_f1": score, "pipeline": pipeline,
          "val_probs": pipelines.class_probabilities(pipeline, data.features(feature_set, val),
                                                     data.num_classes),
          "test_probs": pipelines.class_probabilities(
              pipeline, data.features(feature_set, "test"), data.num_classes)}


def late_model(data: TaskData, parts: list[dict], classifier: str) -> dict:
  """Late fusion of the image and metadata models of `classifier` (paper 000 sec. 5.4)."""
  val_probs = pipelines.late_fusion([p["val_probs"] for p in parts])
  return {"model": model_name(pipelines.LATE, classifier), "features": pipelines.LATE,
          "classifier": classifier, "pca": False, "pca_components": None,
          "params": "mean of " + ", ".join(p["model"] for p in parts),
          "val_macro_f1": pipelines.macro_f1(data.labels[data.tuning_split], val_probs),
          "val_probs": val_probs,
          "test_probs": pipelines.late_fusion([p["test_probs"] for p in parts])}


def model_plan(cfg, feature_sets: list[str]) -> list[tuple[str, str, bool]]:
  """(feature set, classifier, pca) of every fitted row, in table order."""
  plan = []
  for feature_set in pipelines.FEATURE_SETS:
    if feature_set not in feature_sets:
      continue
    for classifier in cfg.models.get(feature_set, ()):
      for pca in (False, True) if feature_set in cfg.pca else (False,):
        plan.append((feature_set, classifier, pca))
  return plan


def fit_task(data: TaskData, cfg, feature_sets: list[str], progress: bool) -> list[dict]:
  """Every configured model of one task (late fusion last), each with its test metrics."""
  plan = model_plan(cfg, feature_sets)
  late = [c for c in cfg.models.get(pipelines.LATE, ())
          if all(p in feature_sets for p in pipelines.LATE_PARTS)]
  fitted, models = {}, []
  with tqdm(total=len(plan) + len(late), desc="baselines fits", disable=not progress,
            leave=False) as bar:
    for key in plan:
      fitted[key] = fit_model(data, *key, cfg.seed)
      models.append(fitted[key])
      bar.update(1)
    for classifier in late:
      parts = []
      for part in pipelines.LATE_PARTS:
        key = (part, classifier, False)
        if key not in fitted:  # a late part that is not a row of its own
          fitted[key] = fit_model(data, *key, cfg.seed)
        parts.append(fitted[key])
      models.append(late_model(data, parts, classifier))
      bar.update(1)
  for model in models:
    model["metrics"] = pipelines.evaluate(model["test_probs"], data.labels["test"],
                                          data.class_names)
  return models


def table_row(model: dict) -> dict:
  params = model["params"]
  return {"model": model["model"], "features": model["features"],
          "classifier": model["classifier"], "pca": model["pca"],
          "pca_components": model["pca_components"],
          **{k: model["metrics"][k] for k in TABLE_METRICS},
          "val_macro_f1": model["val_macro_f1"],
          "params": params if isinstance(params, str) else
          ", ".join(f"{k}={v}" for k, v in params.items())}


# ------------------------------------------------------------------ output

def predictions_arrays(models: list[dict], test: dict, labels: np.ndarray,
                       tuning_split: str) -> dict:
  """predictions.npz: label, index, probs/<model> [N, K] and the grouping fields of the test
  split; "split" (0-d str, "test": the split the rows are from, which fairness_runner checks
  against config.fairness.split), "tuning_split" and val_macro_f1/<model> (0-d, the
  validation score each model was selected by, which fairness uses to pick a headline model
  without looking at test)."""
  out = {"label": labels, "index": np.asarray(test["index"]),
         "split": np.asarray("test"), "tuning_split": np.asarray(tuning_split)}
  out.update({f"probs/{m['model']}": m["test_probs"].astype(np.float32) for m in models})
  out.update({f"val_macro_f1/{m['model']}": np.float64(m["val_macro_f1"]) for m in models})
  out.update({f: test[f] for f in pipeline_lib.GROUP_FIELDS if f in test})
  return out


def task_summary(label_key: str, data: TaskData, models: list[dict], rows: list[dict],
                 curves: dict) -> dict:
  """baselines.json's entry of one task; best_model and best_fusion_model are chosen by
  validation macro-F1 (pipelines.best_by_validation), as the deltas' best unimodal model is."""
  fusion = pipelines.best_by_validation([m for m in models if m["features"] == "fusion"])
  return {
      "labels": label_key, "class_names": data.class_names, "rows": rows,
      "deltas": pipelines.deltas(rows),
      "best_model": pipelines.best_by_validation(models)["model"],
      "best_fusion_model": fusion["model"] if fusion else None,
      "per_class": {m["model"]: m["metrics"]["per_class"] for m in models},
      "confusion_matrix": {m["model"]: m["metrics"]["confusion_matrix"] for m in models},
      "pca_explained_variance": {m["model"]: curves[m["features"]].tolist()
                                 for m in models if m["pca"]},
      "support": {"train": len(data.labels["train"]),
                  data.tuning_split: len(data.labels[data.tuning_split]),
                  "test": len(data.labels["test"])},
  }


PRINTED_COLUMNS = ("model", "pca_components", "accuracy", "macro_f1", "roc_auc", "pr_auc",
                   "val_macro_f1")


# ------------------------------------------------------------------ entry point

def explained_variance_curves(splits: dict, feature_sets: list[str], cfg,
                              train_index: np.ndarray) -> dict:
  """Explained-variance ratios of every PCA feature set's (subsampled) training features."""
  return {fs: pipelines.explained_variance_ratio(
      pipelines.feature_matrix(splits["train"], fs)[train_index])
      for fs in feature_sets if fs in cfg.pca and any(
          cfg.models.get(fs, ()))}


def print_flush(text: str) -> None:
  print(text, flush=True)


def note_absent(cfg, feature_sets: list[str], manifest: dict, print_fn) -> None:
  """Says which configured feature sets this run has no features for (they are skipped)."""
  absent = [fs for fs in pipelines.FEATURE_SETS if fs not in feature_sets and cfg.models.get(fs)]
  if absent:
    print_fn(f"baselines: no features for {', '.join(absent)} in this run (embeddings: "
             f"{', '.join(sorted(manifest['feature_keys']))}, encoded metadata: "
             f"{'yes' if manifest['meta_feature_names'] else 'no'}); those models are skipped")


def field_slices(feature_names: list[str]) -> list[tuple[str, slice]]:
  """(field, column slice) of encoded metadata columns named "age", "sex=male", ... (the
  MetadataEncoder's feature_names: a field's one-hot columns are contiguous)."""
  out = []
  for j, name in enumerate(feature_names):
    field = name.split("=", 1)[0]
    if out and out[-1][0] == field:
      out[-1] = (field, slice(out[-1][1].start, j + 1))
    else:
      out.append((field, slice(j, j + 1)))
  return out


def explained_columns(test_probs: np.ndarray, classes: Optional[np.ndarray],
                      num_outputs: int) -> np.ndarray:
  """[N] column of each row's predicted class in SHAP values [N, F, num_outputs] whose
  columns are the estimator's `classes` (the task classes seen in train), or column 0 of a
  binary margin model's single output. test_probs [N, K] has zero columns for the classes
  absent from train, so the argmax over the present ones is the model's predicted class."""
  if num_outputs == 1:
    return np.zeros(len(test_probs), np.int64)
  if classes is None or num_outputs != len(classes):
    raise ValueError(f"SHAP values have {num_outputs} outputs that are not the fitted "
                     f"classes {classes}")
  return np.asarray(test_probs)[:, classes].argmax(1).astype(np.int64)


def age_in_years(data: np.ndarray, display: np.ndarray, field_names: list[str],
                 age_scale: Optional[dict]) -> tuple[np.ndarray, np.ndarray]:
  """Field data and display data with the "age" field's z-score (the encoded column) turned
  back into years, z * std + mean (the MetadataEncoder's; missing ages are the imputed
  median), as saliency.shap_runner's fields.npz holds it. Unchanged without `age_scale`."""
  if not age_scale or "age" not in field_names:
    return data, display
  j = list(field_names).index("age")
  data, display = np.array(data, np.float64), np.array(display, dtype=object)
  data[:, j] = data[:, j] * age_scale["std"] + age_scale["mean"]
  display[:, j] = [f"{a:.0f}" for a in data[:, j]]
  return data, display.astype(str)


def explain_metadata_models(data: TaskData, models: list[dict], cfg, meta_names: list[str],
                            test_index: np.ndarray, task_dir: str,
                            age_scale: Optional[dict] = None) -> dict:
  """SHAP of the metadata models named in cfg.shap_models (shap_sklearn.explain_sklearn, one
  value per field), written as <task_dir>/shap/<model>/fields.npz in the layout of
  saliency.shap_runner's fields.npz: values [N, F, C], base_values [N, C], data (age in years
  when `age_scale` {"mean", "std"} is given, category indices), display_data, predicted (the
  column of each row's predicted class), label, index, field_names, class_names [C] (the task's
  names of the explained outputs), class_index [C] (their task class indices: the classes
  seen in train, or the positive class of a binary margin model), output units."""
  out = {}
  chosen = [m for m in models if m["model"] in cfg.shap_models and m["features"] == "meta"]
  if not chosen or not meta_names:
    return out
  train = data.features("meta", "train")
  rng = np.random.default_rng(cfg.seed)
  background = train[np.sort(rng.choice(len(train), min(cfg.shap_background, len(train)),
                                        replace=False))]
  x = data.features("meta", "test")[:cfg.shap_examples]
  for m in chosen:
    e = shap_sklearn.explain_sklearn(m["pipeline"], background, x, meta_names,
                                     field_slices(meta_names), seed=cfg.seed,
                                     class_names=data.class_names)
    values = np.asarray(e.values, np.float64)
    classes = shap_sklearn.explained_classes(shap_sklearn.split_pipeline(m["pipeline"])[1],
                                             values.shape[2])
    fields, display = age_in_years(e.data, e.display_data, e.feature_names, age_scale)
    path = os.path.join(task_dir, "shap", m["model"], "fields.npz")
    write_npz_atomic(path, {
        "values": values, "base_values": np.asarray(e.base_values, np.float64),
        "data": np.asarray(fields, np.float64), "display_data": np.asarray(display, str),
        "predicted": explained_columns(m["test_probs"][:len(x)], classes, values.shape[2]),
        "label": data.labels["test"][:len(x)],
        "index": np.asarray(test_index[:len(x)], np.int64),
        "field_names": np.asarray(e.feature_names, str),
        "class_names": np.asarray(e.output_names, str),
        "class_index": np.asarray(classes, np.int64), "output": np.asarray(e.model_output),
        "explainer": np.asarray(e.explainer)})
    out[m["model"]] = {"file": path, "explainer": e.explainer, "output": e.model_output,
                       "mean_abs": dict(zip(e.feature_names,
                                            np.abs(values).mean((0, 2)).tolist()))}
  return out


def run_task(task: str, splits: dict, labels: tuple, cfg, feature_sets: list[str],
             train_index: np.ndarray, curves: dict, workdir: str, print_fn,
             progress: bool = False, meta_names: Optional[list] = None,
             age_scale: Optional[dict] = None) -> dict:
  """Fits and scores one task; writes its table, deltas, predictions and SHAP into
  `<workdir>/baselines/<task>/` (files an earlier run left there removed first), prints the
  table. Returns the task's summary."""
  label_key, class_names = labels
  data = TaskData(splits, label_key, class_names, train_index, cfg.split_for_tuning)
  models = fit_task(data, cfg, feature_sets, progress)
  rows = [table_row(m) for m in models]
  summary = task_summary(label_key, data, models, rows, curves)
  task_dir = os.path.join(workdir, "baselines", task)
  shutil.rmtree(task_dir, ignore_errors=True)
  stats.write_table_csv(os.path.join(task_dir, "table.csv"), rows)
  if summary["deltas"]:
    stats.write_table_csv(os.path.join(task_dir, "deltas.csv"), summary["deltas"])
  write_npz_atomic(os.path.join(task_dir, "predictions.npz"),
                   predictions_arrays(models, splits["test"], data.labels["test"],
                                      data.tuning_split))
  print_fn(f"Baselines, {task} task ({workdir}, test, {len(data.labels['test'])} examples):\n"
           f"{stats.format_table(rows, PRINTED_COLUMNS)}")
  summary["shap"] = explain_metadata_models(data, models, cfg, meta_names or [],
                                            splits["test"]["index"], task_dir, age_scale)
  unexplained = [name for name in cfg.shap_models if name not in summary["shap"]]
  if unexplained:
    print_fn(f"baselines: no SHAP of {', '.join(unexplained)} ({task} task): "
             f"{'not fitted in this run' if meta_names else 'no encoded metadata'} "
             f"(config.baselines.shap_models, models.meta, pca)")
  return summary


def clear_outputs(workdir: str) -> None:
  """Removes what an earlier baselines run wrote (baselines.json and every task folder, also
  of tasks this run skips or no longer lists), so no stale table, deltas or predictions are
  read as this run's; the embedding cache (baselines/embeddings/) is kept."""
  if jax.process_index() != 0:
    return
  root = os.path.join(workdir, "baselines")
  for task in TASKS:
    shutil.rmtree(os.path.join(root, task), ignore_errors=True)
  if os.path.exists(os.path.join(root, "baselines.json")):
    os.remove(os.path.join(root, "baselines.json"))


def run_baselines(config, workdir: str, print_fn: Callable[[str], None] = print_flush) -> dict:
  """Runs config.baselines on the workdir's checkpoint; writes baselines.json and returns it.

  With several processes all take part in the embeddings (they restore the checkpoint
  together); process 0 alone fits and writes, the others wait for it and return {}."""
  start = time.time()
  cfg = baselines_config(config)
  clear_outputs(workdir)
  splits = embeddings_lib.extract_embeddings(config, workdir, ("train", cfg.split_for_tuning,
                                                                "test"), which=cfg.checkpoint)
  fit = functools.partial(fit_and_write, config, cfg, workdir, splits, print_fn, start)
  return distributed.on_process_zero(fit, f"baselines of {workdir}") or {}


def fit_and_write(config, cfg, workdir: str, splits: dict, print_fn, start: float) -> dict:
  """Every task's baselines on the embeddings `splits`, their files and baselines.json."""
  progress = bool(config.train.get("progress", True))
  manifest = embeddings_lib.embedding_manifest(workdir)
  feature_sets = available_feature_sets(splits["train"])
  note_absent(cfg, feature_sets, manifest, print_fn)
  train_index = train_subset(len(splits["train"]["index"]), cfg.max_train_examples, cfg.seed)
  summary = {"checkpoint_step": manifest["checkpoint_step"], "config": cfg.to_dict(),
             "feature_sets": feature_sets, "meta_feature_names": manifest["meta_feature_names"],
             "tasks": {}, "skipped_tasks": {}}
  with threadpool_limits(cfg.num_threads):
    curves = explained_variance_curves(splits, feature_sets, cfg, train_index)
    for task in cfg.tasks:
      labels = task_labels(task, splits["train"], manifest["class_names"])
      if isinstance(labels, str):
        summary["skipped_tasks"][task] = labels
        print_fn(f"baselines: {task} task skipped: {labels}")
        continue
      summary["tasks"][task] = run_task(task, splits, labels, cfg, feature_sets,
                                        train_index, curves, workdir, print_fn,
                                        progress, manifest["meta_feature_names"],
                                        manifest.get("meta_age"))
  summary["pca_explained_variance"] = {fs: c.tolist() for fs, c in curves.items()}
  summary["seconds"] = time.time() - start
  stats.write_json(os.path.join(workdir, "baselines", "baselines.json"), summary)
  return summary
