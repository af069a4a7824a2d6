"""SHAP values of fitted scikit-learn models and pipelines (section 7 of paper
000_e8883a90876d02cb.txt: the metadata logistic regression's summary, gradient-boosting
waterfalls), always in the ORIGINAL feature space of the pipeline's input.

  linear          a linear final estimator (LogisticRegression, Ridge, LinearSVC, ...) after
                  affine steps only (StandardScaler, PCA, passthrough): the steps are composed
                  into the coefficients, x -> x @ A + c -> W z + b == (W A^T) x + (W c + b), and
                  shap.LinearExplainer (interventional) gives phi_j = w_j (x_j - mean_bg_j).
                  Explains the decision function (log-odds for logistic regression).
  tree            a tree model (DecisionTree, RandomForest, ExtraTrees, GradientBoosting,
                  HistGradientBoosting) after per-feature increasing steps only (StandardScaler,
                  MinMaxScaler, MaxAbsScaler, passthrough): a tree split on a transformed column
                  is the same split on the original column, so shap.TreeExplainer
                  (interventional, raw output) on the transformed inputs gives the original
                  features' values exactly. Raw output: log-odds for gradient boosting,
                  probability for forests and single trees. Models shap's TreeExplainer
                  refuses (multiclass GradientBoostingClassifier in shap 0.51) fall back to
                  the model-agnostic explainer.
  model_agnostic  anything else (SVC, kNN, naive Bayes, trees after PCA, ...): shap.Explainer
                  over the whole pipeline's predict_proba (decision_function / predict when it
                  has none) with an Independent masker over the background rows.

Layout: one shap.Explanation with values [N, F, C], base_values [N, C], data [N, F] for C
explained outputs: one per class, except binary margin models (logistic regression, gradient
boosting) whose single output is the positive class's log-odds (C = 1). `output_names` names
the outputs, `explanation[:, :, c]` is output c's 2-D Explanation for shap's plots, and the
attribute `model_output` gives the units: "log_odds" (a binary classifier's margin),
"decision_function" (multiclass margins, whose softmax is predict_proba), "probability" or
"prediction" (regressors), "log_prediction" (regressors with a log link: Poisson, Gamma and
Tweedie GLMs, HistGradientBoosting with a Poisson or Gamma loss, whose linear / raw output is
log(predict)); `explainer` says which explainer ran. Neither survives slicing.
"""
from typing import Sequence

import numpy as np
import shap
from shap.utils._exceptions import InvalidModelError
from sklearn import decomposition, pipeline as sk_pipeline, preprocessing

AFFINE_STEPS = (preprocessing.StandardScaler, decomposition.PCA)
MONOTONE_STEPS = (preprocessing.StandardScaler, preprocessing.MinMaxScaler,
                  preprocessing.MaxAbsScaler)
TREE_MODULES = ("sklearn.tree", "sklearn.ensemble._forest", "sklearn.ensemble._gb",
                "sklearn.ensemble._hist_gradient_boosting")
LINEAR_SVMS = ("LinearSVC", "LinearSVR")


def split_pipeline(model) -> tuple[list, object]:
  """(preprocessing steps, final estimator) of a Pipeline; ([], model) for a bare estimator.
  "passthrough" / None steps are dropped."""
  if isinstance(model, sk_pipeline.Pipeline):
    steps = [step for _, step in model.steps[:-1] if step not in (None, "passthrough")]
    return steps, model.steps[-1][1]
  return [], model


def is_linear(estimator) -> bool:
  return hasattr(estimator, "coef_") and hasattr(estimator, "intercept_") and (
      type(estimator).__module__.startswith("sklearn.linear_model") or
      type(estimator).__name__ in LINEAR_SVMS)


def is_tree(estimator) -> bool:
  return type(estimator).__module__.startswith(TREE_MODULES)


def explainer_kind(model) -> str:
  """"linear", "tree" or "model_agnostic": which explainer explain_sklearn uses (see module)."""
  steps, estimator = split_pipeline(model)
  if is_linear(estimator) and all(isinstance(s, AFFINE_STEPS) for s in steps):
    return "linear"
  if is_tree(estimator) and all(isinstance(s, MONOTONE_STEPS) for s in steps):
    return "tree"
  return "model_agnostic"


def affine_map(steps: Sequence, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """(A [D, D'], c [D']) with steps(x) == x @ A + c, for StandardScaler and PCA steps."""
  a, c = np.eye(dim), np.zeros(dim)
  for step in steps:
    if isinstance(step, preprocessing.StandardScaler):
      mean = step.mean_ if step.mean_ is not None and step.with_mean else 0.0
      scale = step.scale_ if step.scale_ is not None and step.with_std else 1.0
      step_a, step_c = np.diag(np.broadcast_to(1.0 / scale, (a.shape[1],))), -mean / scale
    elif isinstance(step, decomposition.PCA):
      step_a = step.components_.T.copy()
      if step.whiten:
        step_a /= np.sqrt(step.explained_variance_)[None, :]
      step_c = -step.mean_ @ step_a
    else:
      raise TypeError(f"{type(step).__name__} is not an affine step; affine steps: "
                      f"{[t.__name__ for t in AFFINE_STEPS]}")
    a, c = a @ step_a, c @ step_a + np.broadcast_to(step_c, (step_a.shape[1],))
  return a, c


def composed_linear_model(model, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """(coef [C, D], intercept [C]) of the decision function in the pipeline's input space."""
  steps, estimator = split_pipeline(model)
  a, c = affine_map(steps, dim)
  w = np.atleast_2d(np.asarray(estimator.coef_, np.float64))
  b = np.atleast_1d(np.asarray(estimator.intercept_, np.float64))
  return w @ a.T, w @ c + b


def explained_classes(estimator, num_outputs: int) -> np.ndarray | None:
  """The estimator's `classes_` the explained outputs stand for: all of them (in order), or
  classes_[1] for a binary margin model's one output; None when the outputs are not classes.
  A class absent from the training labels has no output, so output c is not class c then."""
  classes = np.asarray(getattr(estimator, "classes_", []))
  if len(classes) == num_outputs:
    return classes
  if num_outputs == 1 and len(classes) == 2:
    return classes[1:]
  return None


def output_names(estimator, num_outputs: int,
                 class_names: Sequence[str] | None = None) -> list[str]:
  """Names of the explained outputs: class_names[c] for each explained class c of
  `explained_classes` (classes_ are then indices into class_names), str(c) without
  class_names, "output k" when the outputs are not classes."""
  classes = explained_classes(estimator, num_outputs)
  if classes is None:
    return [f"output {k}" for k in range(num_outputs)]
  if class_names is not None:
    return [str(class_names[int(c)]) for c in classes]
  return [str(c) for c in classes]


def as_3d(values, base_values, n: int) -> tuple[np.ndarray, np.ndarray]:
  """shap's values [N, F] or [N, F, C] and base values [N], [N, C] or scalar as values
  [N, F, C] and base_values [N, C]."""
  values = np.asarray(values, np.float64)
  if values.ndim == 2:
    values = values[:, :, None]
  base = np.broadcast_to(np.asarray(base_values, np.float64).reshape(-1, values.shape[2])
                         if np.size(base_values) > 1 else np.reshape(base_values, (1, 1)),
                         (n, values.shape[2]))
  return values, np.array(base)


def linear_explanation(model, background: np.ndarray, x: np.ndarray):
  coef, intercept = composed_linear_model(model, x.shape[1])
  single = len(coef) == 1  # shap takes one output as 1-D coefficients
  masker = shap.maskers.Independent(background, max_samples=len(background))
  explainer = shap.LinearExplainer((coef[0], intercept[0]) if single else (coef, intercept),
                                   masker)
  explanation = explainer(x)
  values, base = as_3d(explanation.values, explanation.base_values, len(x))
  return values, base, margin_units(split_pipeline(model)[1], values.shape[2])


def log_link(estimator) -> bool:
  """Whether a regressor predicts exp(its linear / raw output): scikit-learn's Poisson, Gamma
  and (power > 0 or link="log") Tweedie GLMs, and HistGradientBoostingRegressor with a Poisson
  or Gamma loss."""
  name = type(estimator).__name__
  if name in ("PoissonRegressor", "GammaRegressor"):
    return True
  if name == "TweedieRegressor":
    return estimator.link == "log" or (estimator.link == "auto" and estimator.power > 0)
  return name == "HistGradientBoostingRegressor" and estimator.loss in ("poisson", "gamma")


def regressor_units(estimator) -> str:
  """Units of a regressor's linear / raw output: log(predict) for a log link, else predict."""
  return "log_prediction" if log_link(estimator) else "prediction"


def margin_units(estimator, num_outputs: int) -> str:
  """Units of a margin (decision function) output: a binary classifier's log-odds."""
  if not hasattr(estimator, "predict_proba"):
    return (regressor_units(estimator) if not hasattr(estimator, "decision_function")
            else "decision_function")
  return "log_odds" if num_outputs == 1 else "decision_function"


def transformed(steps: Sequence, x: np.ndarray) -> np.ndarray:
  for step in steps:
    x = step.transform(x)
  return x


def tree_explanation(model, background: np.ndarray, x: np.ndarray):
  steps, estimator = split_pipeline(model)
  explainer = shap.TreeExplainer(estimator, data=transformed(steps, background),
                                 feature_perturbation="interventional", model_output="raw")
  explanation = explainer(transformed(steps, x))
  values, base = as_3d(explanation.values, explanation.base_values, len(x))
  margin = type(estimator).__module__.startswith(
      ("sklearn.ensemble._gb", "sklearn.ensemble._hist_gradient_boosting"))
  if margin:
    return values, base, margin_units(estimator, values.shape[2])
  return values, base, ("probability" if hasattr(estimator, "predict_proba")
                        else regressor_units(estimator))


def model_function(model):
  """(f: [M, D] -> [M, C], units) over the whole pipeline: predict_proba when it has one."""
  for name, kind in (("predict_proba", "probability"), ("decision_function", "decision_function"),
                     ("predict", "prediction")):
    if hasattr(model, name):
      try:
        getattr(model, name)  # SVC(probability=False) raises AttributeError on access
      except AttributeError:
        continue
      fn = getattr(model, name)
      return (lambda v: np.asarray(fn(v), np.float64).reshape(len(v), -1)), kind
  raise TypeError(f"{type(model).__name__} has no predict_proba, decision_function or predict")


def agnostic_explanation(model, background: np.ndarray, x: np.ndarray, seed: int,
                         max_evals: int | None):
  fn, kind = model_function(model)
  masker = shap.maskers.Independent(background, max_samples=len(background))
  explainer = shap.Explainer(fn, masker, seed=seed)
  # shap.Explainer enumerates all 2^D coalitions for D <= 10 features, else permutes.
  evals = max_evals or max(500, 2 * x.shape[1] + 1, 2 ** x.shape[1] if x.shape[1] <= 10 else 0)
  explanation = explainer(x, max_evals=evals, silent=True)
  values, base = as_3d(explanation.values, explanation.base_values, len(x))
  return values, base, kind


def check_field_slices(field_slices, num_columns: int) -> list[tuple[str, slice]]:
  """The (name, slice) pairs, checked to tile [0, num_columns) in order."""
  out, start = [], 0
  for name, s in field_slices:
    if not isinstance(s, slice) or s.start != start or s.stop is None or s.stop <= start or \
        s.step not in (None, 1):
      raise ValueError(f"field {name!r} has slice {s}; field slices must tile the columns in "
                       f"order: expected a slice starting at column {start}")
    out.append((str(name), s))
    start = s.stop
  if start != num_columns:
    raise ValueError(f"field slices cover columns [0, {start}) but the data has {num_columns}")
  return out


def sum_fields(values: np.ndarray, data: np.ndarray, feature_names: Sequence[str],
               field_slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Column SHAP values [N, D, C] -> field values [N, F, C] (exact: SHAP values add).

  Field data [N, F]: a one-column field keeps its value; a one-hot block gets the index of its
  hot column (NaN when none is hot, or the block is not one-hot). Display data [N, F] (str): the
  value, or the hot column's name after "field=".
  """
  slices = check_field_slices(field_slices, values.shape[1])
  summed = np.stack([values[:, s].sum(1) for _, s in slices], axis=1)
  field_data = np.full((len(data), len(slices)), np.nan)
  display = np.empty((len(data), len(slices)), dtype=object)
  for j, (name, s) in enumerate(slices):
    block = np.asarray(data[:, s], np.float64)
    if block.shape[1] == 1:
      field_data[:, j] = block[:, 0]
      display[:, j] = [f"{v:.4g}" for v in block[:, 0]]
      continue
    one_hot = np.isin(block, (0.0, 1.0)).all(1) & (block.sum(1) == 1)
    hot = block.argmax(1)
    field_data[one_hot, j] = hot[one_hot]
    names = list(feature_names)[s]
    display[:, j] = [names[h].split("=", 1)[-1] if ok else "" for h, ok in zip(hot, one_hot)]
  return summed, field_data, display.astype(str)


def explain_sklearn(model, X_background: np.ndarray, X_explain: np.ndarray,
                    feature_names: Sequence[str],
                    field_slices: Sequence[tuple[str, slice]] | None = None, *, seed: int = 0,
                    max_evals: int | None = None,
                    class_names: Sequence[str] | None = None) -> shap.Explanation:
  """SHAP values of a fitted sklearn estimator or Pipeline for the rows of X_explain.

  Args:
    model: fitted estimator or Pipeline (see the module docstring for which explainer).
    X_background: [B, D] background rows in the pipeline's input space (e.g. a seeded sample
      of the training rows; the explainers use every row).
    X_explain: [N, D] rows to explain.
    feature_names: the D column names.
    field_slices: optional (field name, column slice) pairs tiling [0, D) (MetadataEncoder.fields);
      the values of a field's columns are summed into one value per field.
    seed: the model-agnostic explainer's permutation seed (the others are deterministic).
    max_evals: model-agnostic evaluations per row (default enough for shap's exact
      enumeration up to 10 features, else max(500, 2 D + 1) permutation evaluations).
    class_names: optional names of the label indices the model was fitted on; the outputs are
      then named class_names[c] for the classes they explain (see output_names).

  Returns:
    shap.Explanation, values [N, F, C], base_values [N, C], data [N, F] (module docstring);
    base_values[i] + values[i].sum(0) is the explained output for row i.
  """
  X_background = np.asarray(X_background, np.float64)
  X_explain = np.asarray(X_explain, np.float64)
  names = list(feature_names)
  for what, array in (("X_background", X_background), ("X_explain", X_explain)):
    if array.ndim != 2 or array.shape[1] != len(names) or not len(array):
      raise ValueError(f"{what} must be [rows >= 1, {len(names)}] (one column per feature "
                       f"name), got shape {array.shape}")
  kind = explainer_kind(model)
  if kind == "tree":
    try:
      values, base, units = tree_explanation(model, X_background, X_explain)
    except (InvalidModelError, NotImplementedError):
      kind = "model_agnostic"  # e.g. multiclass GradientBoostingClassifier (shap 0.51)
  if kind == "linear":
    values, base, units = linear_explanation(model, X_background, X_explain)
  elif kind == "model_agnostic":
    values, base, units = agnostic_explanation(model, X_background, X_explain, seed, max_evals)
  data, display = X_explain, None
  if field_slices is not None:
    values, data, display = sum_fields(values, X_explain, names, field_slices)
    names = [name for name, _ in field_slices]
  explanation = shap.Explanation(
      values=values, base_values=base, data=data, display_data=display, feature_names=names,
      output_names=output_names(split_pipeline(model)[1], values.shape[2], class_names))
  explanation.model_output = units
  explanation.explainer = kind
  return explanation
