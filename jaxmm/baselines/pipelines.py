"""scikit-learn baselines on arrays: classifiers, validation tuning, late fusion, table 15 deltas.

Sections 5.1-5.4 of paper 000_e8883a90876d02cb.txt. A baseline is StandardScaler (+ PCA keeping
95% of the variance) + one classifier of `CLASSIFIERS`, its hyper-parameters chosen on the
validation split by macro-F1 over a small grid, fitted on the training split only.

Feature sets (`FEATURE_SETS`): "image" (the image encoder's pooled embedding), "meta" (the
encoded metadata vector), "fusion" (their concatenation, the text embedding too when present,
sec. 5.3) and "late" (no fitting: the mean of the image and metadata models' probabilities,
sec. 5.4).
"""
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from jaxmm.train import metrics as metrics_lib

PCA_VARIANCE = 0.95
# Probabilities go to multiclass_metrics as log(p + PROB_EPS); its softmax gives back
# (p + eps) / (1 + K eps), so rankings and argmax are exactly those of p.
PROB_EPS = 1e-12
# Arrays each fitted feature set concatenates, in order (those present; see feature_matrix).
FEATURE_SETS = {"image": ("image",), "meta": ("meta",), "fusion": ("image", "text", "meta")}
LATE = "late"
# The unimodal feature sets whose probabilities late fusion averages.
LATE_PARTS = ("image", "meta")


class Classifier(NamedTuple):
  """A registry entry: build(params, seed) -> unfitted estimator, and its validation grid."""
  build: Callable[[Mapping[str, Any], int], Any]
  grid: tuple[dict, ...]
  description: str


def build_logreg(params, seed):
  return LogisticRegression(class_weight="balanced", max_iter=5000, random_state=seed, **params)


def build_svm(params, seed):
  """RBF SVC with Platt-calibrated probabilities (libsvm's internal 5-fold CV)."""
  return SVC(kernel="rbf", class_weight="balanced", probability=True, random_state=seed,
             **params)


def build_knn(params, seed):
  return KNeighborsClassifier(n_neighbors=5, **params)


def build_tree(params, seed):
  return DecisionTreeClassifier(max_depth=5, random_state=seed, **params)


def build_naive_bayes(params, seed):
  return GaussianNB(**params)


def build_gboost(params, seed):
  """HistGradientBoostingClassifier: on the quickstart fusion features (1,919 x 88, 7 classes,
  one thread) 100 iterations of depth 3 take 1.8 s against 8 s for 50 trees of
  GradientBoostingClassifier, at the same validation macro-F1."""
  return HistGradientBoostingClassifier(max_depth=3, early_stopping=False, random_state=seed,
                                        **params)


def build_rf(params, seed):
  return RandomForestClassifier(n_jobs=1, random_state=seed, **params)


CLASSIFIERS = {
    "logreg": Classifier(build_logreg, ({"C": 0.1}, {"C": 1.0}, {"C": 10.0}),
                         "logistic regression (softmax), class_weight balanced"),
    "svm": Classifier(build_svm, ({"C": 1.0}, {"C": 10.0}),
                      "RBF SVM, class_weight balanced, calibrated probabilities"),
    "knn": Classifier(build_knn, ({"weights": "uniform"}, {"weights": "distance"}),
                      "k-nearest neighbours, k = 5"),
    "tree": Classifier(build_tree, ({"min_samples_leaf": 1}, {"min_samples_leaf": 10}),
                       "decision tree, max depth 5"),
    "naive_bayes": Classifier(build_naive_bayes, ({"var_smoothing": 1e-9},
                                                  {"var_smoothing": 1e-3},
                                                  {"var_smoothing": 1e-1}), "Gaussian naive Bayes"),
    "gboost": Classifier(build_gboost, ({"learning_rate": 0.05, "max_iter": 100},
                                        {"learning_rate": 0.1, "max_iter": 100}),
                         "histogram gradient boosting, depth 3"),
    "rf": Classifier(build_rf, ({"n_estimators": 100, "max_depth": None},
                                {"n_estimators": 100, "max_depth": 10}), "random forest"),
}


def get_classifier(name: str) -> Classifier:
  """CLASSIFIERS[name]; an unknown name raises ValueError listing the valid ones."""
  if name not in CLASSIFIERS:
    raise ValueError(f"unknown baseline classifier {name!r}; valid classifiers: "
                     f"{sorted(CLASSIFIERS)}")
  return CLASSIFIERS[name]


def make_transform(pca: bool, seed: int = 0) -> Pipeline:
  """StandardScaler, then PCA keeping PCA_VARIANCE of the variance when `pca`."""
  steps = [("scale", StandardScaler())]
  if pca:
    steps.append(("pca", PCA(n_components=PCA_VARIANCE, svd_solver="full", random_state=seed)))
  return Pipeline(steps)


def make_pipeline(name: str, pca: bool, params: Optional[Mapping[str, Any]] = None,
                  seed: int = 0) -> Pipeline:
  """Unfitted StandardScaler (+ PCA(0.95)) + classifier `name` built with `params`."""
  classifier = get_classifier(name).build(dict(params or {}), seed)
  return Pipeline(make_transform(pca, seed).steps + [("classifier", classifier)])


def pca_components(pipeline: Pipeline) -> Optional[int]:
  """Number of PCA components a fitted pipeline keeps (None without PCA)."""
  step = pipeline.named_steps.get("pca")
  return int(step.n_components_) if step is not None else None


def explained_variance_ratio(features: np.ndarray) -> np.ndarray:
  """Every principal component's explained-variance ratio of the standardised features [N, D]
  -> [min(N, D)], descending (its cumulative sum is the PCA curve)."""
  scaled = StandardScaler().fit_transform(np.asarray(features, np.float64))
  return PCA(svd_solver="full").fit(scaled).explained_variance_ratio_


def class_probabilities(estimator, features: np.ndarray, num_classes: int) -> np.ndarray:
  """predict_proba [N, num_classes], zero columns for classes absent from the training labels."""
  probs = estimator.predict_proba(features)
  out = np.zeros((len(features), num_classes), np.float64)
  out[:, np.asarray(estimator.classes_, np.int64)] = probs
  return out


def macro_f1(labels: np.ndarray, probs: np.ndarray) -> float:
  """Macro-F1 of argmax(probs [N, K]) against labels [N]: metrics.macro_f1, the definition
  multiclass_metrics and fairness use (over the classes labelled or predicted, as sklearn's
  f1_score(average="macro")), so validation tuning and the tables agree."""
  probs = np.asarray(probs)
  return metrics_lib.macro_f1(labels, probs.argmax(1), probs.shape[1])


def fit_classifier(name: str, params: Mapping[str, Any], features: np.ndarray,
                   labels: np.ndarray, seed: int = 0):
  """The classifier `name` built with `params`, fitted (SVC's probability deprecation notice in
  scikit-learn 1.9 silenced: its calibrated probabilities are what paper 000 uses)."""
  estimator = get_classifier(name).build(dict(params), seed)
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*probability.*", category=FutureWarning)
    return estimator.fit(features, labels)


def tune_and_fit(name: str, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                 y_val: np.ndarray, pca: bool, *, num_classes: Optional[int] = None,
                 grid: Optional[Sequence[Mapping[str, Any]]] = None, seed: int = 0
                 ) -> tuple[Pipeline, dict, float]:
  """Fits classifier `name` on the training split for every grid point (default: the
  registry's grid), keeps the one with the best validation macro-F1 (the first on ties).

  X_* [N, D], y_* [N] int in [0, num_classes) (default: 1 + the largest label seen). Returns
  (fitted pipeline, best params, its validation macro-F1). The scaler and PCA are fitted once
  on the training split; the returned pipeline equals make_pipeline(name, pca, best).fit(X_train,
  y_train): nothing is fitted on validation data.
  """
  points = tuple(dict(p) for p in (grid if grid is not None else get_classifier(name).grid))
  if not points:
    raise ValueError(f"empty hyper-parameter grid for classifier {name!r}")
  num_classes = num_classes or int(max(np.max(y_train), np.max(y_val))) + 1
  transform = make_transform(pca, seed).fit(X_train)
  Z_train, Z_val = transform.transform(X_train), transform.transform(X_val)
  best = None
  for params in points:
    estimator = fit_classifier(name, params, Z_train, y_train, seed)
    score = macro_f1(y_val, class_probabilities(estimator, Z_val, num_classes))
    if best is None or score > best[2]:
      best = (estimator, params, score)
  estimator, params, score = best
  return Pipeline(transform.steps + [("classifier", estimator)]), params, score


def feature_matrix(arrays: Mapping[str, np.ndarray], feature_set: str) -> np.ndarray:
  """The [N, D] float64 features of `feature_set` from one split's arrays (see embeddings).

  "fusion" concatenates image, text and meta (those present, at least two); a missing array
  raises KeyError naming the arrays that are there.
  """
  if feature_set not in FEATURE_SETS:
    raise ValueError(f"unknown feature set {feature_set!r}; valid: "
                     f"{sorted(FEATURE_SETS) + [LATE]}")
  names = [n for n in FEATURE_SETS[feature_set] if n in arrays]
  if not names or (feature_set == "fusion" and len(names) < 2):
    raise KeyError(f"feature set {feature_set!r} needs {list(FEATURE_SETS[feature_set])}"
                   f"{' (two or more)' if feature_set == 'fusion' else ''}; the embeddings "
                   f"have {sorted(arrays)}")
  return np.concatenate([np.asarray(arrays[n], np.float64).reshape(len(arrays[n]), -1)
                         for n in names], axis=1)


def late_fusion(probabilities: Sequence[np.ndarray]) -> np.ndarray:
  """Mean of probability matrices [N, K] (paper 000 sec. 5.4: (p_image + p_meta) / 2)."""
  shapes = {np.shape(p) for p in probabilities}
  if not probabilities or len(shapes) != 1:
    raise ValueError(f"late fusion needs probability matrices of one shape, got {shapes}")
  return np.mean(np.stack(probabilities), axis=0)


def evaluate(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
  """metrics.multiclass_metrics of probabilities [N, K] against labels [N]."""
  return metrics_lib.multiclass_metrics(np.log(np.asarray(probs, np.float64) + PROB_EPS),
                                        labels, class_names)


def _matching(rows: Sequence[dict], features: str, classifier: str, pca: bool
              ) -> Optional[dict]:
  """The `features` row of `classifier` with the same PCA setting, else without PCA."""
  for want_pca in (pca, False):
    for row in rows:
      if row["features"] == features and row["classifier"] == classifier and \
          bool(row["pca"]) == want_pca:
        return row
  return None


def _delta(row: dict, other: Optional[dict], suffix: str) -> dict:
  nan = float("nan")
  return {f"vs_{suffix}": other["model"] if other else "",
          f"delta_f1_vs_{suffix}": row["macro_f1"] - other["macro_f1"] if other else nan,
          f"delta_accuracy_vs_{suffix}": row["accuracy"] - other["accuracy"] if other else nan}


def best_by_validation(rows: Sequence[dict]) -> Optional[dict]:
  """The row with the highest validation macro-F1 ("val_macro_f1"; the first on ties, NaN
  lowest), None for no rows. Models are chosen on validation, never on the test metrics that
  the rows also hold: choosing by test would bias the comparison the test split reports."""
  for row in rows:
    if "val_macro_f1" not in row:
      raise KeyError(f"row {row.get('model')!r} has no 'val_macro_f1' (the selection score); "
                     f"keys: {sorted(row)}")
  return max(rows, key=lambda r: np.nan_to_num(r["val_macro_f1"], nan=-np.inf), default=None)


def deltas(rows: Sequence[dict]) -> list[dict]:
  """Table 15 of paper 000: for each fusion (and late) row, test macro-F1 and accuracy minus
  those of the same classifier's image and meta rows (same PCA setting, else raw) and of the
  best unimodal row, chosen by validation macro-F1 (best_by_validation; vs_best_unimodal
  names it). Rows need model, features, classifier, pca, macro_f1, accuracy (test) and
  val_macro_f1; a missing comparison gives NaN."""
  best = best_by_validation([r for r in rows if r["features"] in ("image", "meta")])
  out = []
  for row in rows:
    if row["features"] not in ("fusion", LATE):
      continue
    pca = bool(row["pca"])
    entry = {"model": row["model"], "macro_f1": row["macro_f1"], "accuracy": row["accuracy"]}
    entry.update(_delta(row, _matching(rows, "image", row["classifier"], pca), "image"))
    entry.update(_delta(row, _matching(rows, "meta", row["classifier"], pca), "meta"))
    entry.update(_delta(row, best, "best_unimodal"))
    out.append(entry)
  return out
