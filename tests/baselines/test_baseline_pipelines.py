"""The scikit-learn baseline pipelines on synthetic Gaussian blobs: every classifier, PCA's
component count, validation tuning, late fusion, metrics and the table 15 deltas."""
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from jaxmm.baselines import pipelines
from jaxmm.evaluation import fairness


@pytest.fixture(autouse=True)
def one_thread():
  """As the runner fits (config.baselines.num_threads): OpenMP / BLAS threads spinning on a
  shared 2-core machine make these tiny fits 10-100x slower."""
  with threadpool_limits(1):
    yield


def blobs(n_per_class: int, num_classes: int = 3, dims: int = 6, spread: float = 1.0,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Gaussian blobs around class centres 6 apart; X [n, dims], y [n]."""
  rng = np.random.default_rng(seed)
  centres = 6.0 * np.eye(num_classes, dims)
  y = np.repeat(np.arange(num_classes), n_per_class)
  return centres[y] + spread * rng.standard_normal((len(y), dims)), y


@pytest.fixture(scope="module")
def separable():
  X_train, y_train = blobs(40, seed=0)
  X_val, y_val = blobs(20, seed=1)
  return X_train, y_train, X_val, y_val


@pytest.mark.parametrize("name", sorted(pipelines.CLASSIFIERS))
@pytest.mark.parametrize("pca", [False, True])
def test_every_classifier_fits_separable_blobs(name, pca, separable):
  X_train, y_train, X_val, y_val = separable
  pipeline, params, score = pipelines.tune_and_fit(name, X_train, y_train, X_val, y_val, pca)
  probs = pipelines.class_probabilities(pipeline, X_val, 3)
  assert probs.shape == (60, 3)
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
  assert np.mean(probs.argmax(1) == y_val) >= 0.95
  assert score >= 0.95 and params in [dict(p) for p in pipelines.CLASSIFIERS[name].grid]
  assert (pipelines.pca_components(pipeline) is not None) == pca


def test_pca_keeps_the_components_for_95_percent_of_the_variance():
  # 12 columns mixing 3 latent factors plus 1% noise: 3 components carry > 95% after scaling.
  rng = np.random.default_rng(0)
  X = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 12))
  X += 0.01 * rng.standard_normal(X.shape)
  y = (X[:, 0] > 0).astype(int)
  pipeline = pipelines.make_pipeline("logreg", pca=True).fit(X, y)
  cumulative = np.cumsum(PCA().fit(StandardScaler().fit_transform(X)).explained_variance_ratio_)
  expected = int(np.argmax(cumulative >= 0.95)) + 1
  assert pipelines.pca_components(pipeline) == expected == 3
  np.testing.assert_allclose(np.cumsum(pipelines.explained_variance_ratio(X)), cumulative,
                             atol=1e-10)
  assert pipelines.pca_components(pipelines.make_pipeline("logreg", pca=False).fit(X, y)) is None


@pytest.mark.parametrize("name", ["logreg", "knn", "tree", "naive_bayes", "gboost", "svm"])
def test_tuned_params_are_the_best_validation_grid_point(name):
  X_train, y_train = blobs(30, spread=3.5, seed=2)   # overlapping: grid points score differently
  X_val, y_val = blobs(30, spread=3.5, seed=3)
  pipeline, params, score = pipelines.tune_and_fit(name, X_train, y_train, X_val, y_val,
                                                   pca=True, seed=0)
  by_hand = []
  for point in pipelines.CLASSIFIERS[name].grid:
    refit = pipelines.make_pipeline(name, True, point, seed=0)
    with warnings.catch_warnings():   # SVC's probability deprecation notice (sklearn 1.9)
      warnings.simplefilter("ignore", FutureWarning)
      refit.fit(X_train, y_train)
    f1 = skm.f1_score(y_val, refit.predict_proba(X_val).argmax(1), average="macro")
    by_hand.append((f1, refit))
  best = int(np.argmax([f1 for f1, _ in by_hand]))
  assert params == pipelines.CLASSIFIERS[name].grid[best]
  assert score == pytest.approx(by_hand[best][0], abs=1e-12)
  np.testing.assert_allclose(pipeline.predict_proba(X_val), by_hand[best][1].predict_proba(X_val),
                             atol=1e-8)


def test_a_degenerate_grid_point_loses_and_ties_keep_the_first():
  X_train, y_train, X_val, y_val = (*blobs(30, seed=4), *blobs(30, seed=5))
  # A leaf of >= 1000 examples is the root: one class predicted, macro-F1 1/6.
  _, params, score = pipelines.tune_and_fit("tree", X_train, y_train, X_val, y_val, False,
                                            grid=({"min_samples_leaf": 1000},
                                                  {"min_samples_leaf": 1}))
  assert params == {"min_samples_leaf": 1} and score == 1.0
  _, params, score = pipelines.tune_and_fit("logreg", X_train, y_train, X_val, y_val, False,
                                            grid=({"C": 1e-8}, {"C": 1.0}))
  assert params == {"C": 1e-8} and score == 1.0   # both separate the blobs


def test_probabilities_of_classes_missing_from_training_are_zero():
  X, y = blobs(20, num_classes=3)
  keep = y != 1
  pipeline = pipelines.make_pipeline("logreg", False).fit(X[keep], y[keep])
  probs = pipelines.class_probabilities(pipeline, X, 4)
  assert probs.shape == (60, 4)
  np.testing.assert_array_equal(probs[:, [1, 3]], 0.0)
  np.testing.assert_allclose(probs[:, [0, 2]], pipeline.predict_proba(X))


def test_late_fusion_is_the_mean_of_the_probabilities():
  rng = np.random.default_rng(0)
  a, b = rng.dirichlet(np.ones(4), 10), rng.dirichlet(np.ones(4), 10)
  np.testing.assert_array_equal(pipelines.late_fusion([a, b]), (a + b) / 2)
  np.testing.assert_allclose(pipelines.late_fusion([a, b]).sum(1), 1.0)
  with pytest.raises(ValueError, match="one shape"):
    pipelines.late_fusion([a, b[:, :3]])


def test_evaluate_scores_probabilities_as_given():
  rng = np.random.default_rng(1)
  labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
  probs = rng.dirichlet(np.ones(2), 8)
  probs[0] = [1.0, 0.0]  # an exact zero must not break the log
  m = pipelines.evaluate(probs, labels, ["benign", "malignant"])
  assert m["accuracy"] == np.mean(probs.argmax(1) == labels)
  assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]), abs=1e-12)
  assert m["pr_auc"] == pytest.approx(skm.average_precision_score(labels, probs[:, 1]),
                                      abs=1e-12)
  assert m["macro_f1"] == pytest.approx(pipelines.macro_f1(labels, probs), abs=1e-12)


def test_macro_f1_is_one_definition_with_absent_classes():
  # 5 classes: 4 is never labelled, 1 never predicted, 3 neither (left out of the mean).
  labels = np.array([0, 0, 1, 2, 2, 0, 1, 2])
  preds = np.array([0, 4, 0, 2, 2, 0, 2, 4])
  probs = 0.02 + np.eye(5)[preds]
  probs /= probs.sum(1, keepdims=True)
  expected = skm.f1_score(labels, preds, average="macro")
  assert pipelines.macro_f1(labels, probs) == pytest.approx(expected, abs=1e-12)
  assert pipelines.evaluate(probs, labels, list("abcde"))["macro_f1"] == pytest.approx(
      expected, abs=1e-12)
  assert fairness.metric_value("macro_f1", labels, probs) == pytest.approx(expected, abs=1e-12)


def test_feature_sets_concatenate_in_order_and_name_missing_arrays():
  arrays = {"image": np.ones((2, 3)), "meta": np.zeros((2, 2)), "text": np.full((2, 1), 5.0)}
  fused = pipelines.feature_matrix(arrays, "fusion")
  np.testing.assert_array_equal(fused[0], [1, 1, 1, 5, 0, 0])   # image | text | meta
  assert pipelines.feature_matrix(arrays, "meta").shape == (2, 2)
  with pytest.raises(KeyError, match=r"needs \['image'\].*have \['meta'\]"):
    pipelines.feature_matrix({"meta": arrays["meta"]}, "image")
  with pytest.raises(KeyError, match="two or more"):
    pipelines.feature_matrix({"image": arrays["image"]}, "fusion")
  with pytest.raises(ValueError, match="unknown feature set 'images'"):
    pipelines.feature_matrix(arrays, "images")


def test_unknown_classifier_names_list_the_valid_ones():
  with pytest.raises(ValueError) as error:
    pipelines.make_pipeline("xgboost", pca=False)
  message = str(error.value)
  assert "'xgboost'" in message
  for name in ("gboost", "knn", "logreg", "naive_bayes", "rf", "svm", "tree"):
    assert f"'{name}'" in message


def row(model, features, classifier, pca, f1, acc, val_f1=0.5):
  """A table row: test macro-F1 and accuracy, validation macro-F1."""
  return {"model": model, "features": features, "classifier": classifier, "pca": pca,
          "macro_f1": f1, "accuracy": acc, "val_macro_f1": val_f1}


def test_deltas_subtract_the_matching_unimodal_rows():
  rows = [row("image_logreg", "image", "logreg", False, 0.5, 0.75),
          row("image_logreg_pca", "image", "logreg", True, 0.375, 0.625),
          row("meta_logreg", "meta", "logreg", False, 0.25, 0.5),
          row("meta_gboost", "meta", "gboost", False, 0.625, 0.5, val_f1=0.75),
          row("fusion_logreg", "fusion", "logreg", False, 0.875, 0.875),
          row("fusion_logreg_pca", "fusion", "logreg", True, 0.75, 0.8125),
          row("fusion_gboost", "fusion", "gboost", False, 0.5, 0.9375),
          row("late_logreg", "late", "logreg", False, 0.625, 0.75)]
  out = {d["model"]: d for d in pipelines.deltas(rows)}
  assert list(out) == ["fusion_logreg", "fusion_logreg_pca", "fusion_gboost", "late_logreg"]
  d = out["fusion_logreg"]
  assert (d["vs_image"], d["delta_f1_vs_image"], d["delta_accuracy_vs_image"]) == \
      ("image_logreg", 0.375, 0.125)
  assert (d["vs_meta"], d["delta_f1_vs_meta"], d["delta_accuracy_vs_meta"]) == \
      ("meta_logreg", 0.625, 0.375)
  assert (d["vs_best_unimodal"], d["delta_f1_vs_best_unimodal"]) == ("meta_gboost", 0.25)
  d = out["fusion_logreg_pca"]   # PCA rows compare with the PCA image row, raw meta row
  assert (d["vs_image"], d["delta_f1_vs_image"], d["delta_accuracy_vs_image"]) == \
      ("image_logreg_pca", 0.375, 0.1875)
  assert (d["vs_meta"], d["delta_f1_vs_meta"]) == ("meta_logreg", 0.5)
  d = out["fusion_gboost"]       # no image gboost row: NaN, named ''
  assert d["vs_image"] == "" and np.isnan(d["delta_f1_vs_image"])
  assert (d["vs_meta"], d["delta_f1_vs_meta"], d["delta_accuracy_vs_meta"]) == \
      ("meta_gboost", -0.125, 0.4375)
  assert out["late_logreg"]["delta_f1_vs_image"] == 0.125


def test_best_unimodal_is_chosen_on_validation_not_test():
  rows = [row("image_logreg", "image", "logreg", False, 0.5, 0.75, val_f1=0.875),
          row("meta_gboost", "meta", "gboost", False, 0.625, 0.5, val_f1=0.25),
          row("meta_tree", "meta", "tree", False, 0.25, 0.5, val_f1=float("nan")),
          row("fusion_logreg", "fusion", "logreg", False, 0.875, 0.875, val_f1=0.9)]
  (d,) = pipelines.deltas(rows)
  assert (d["vs_best_unimodal"], d["delta_f1_vs_best_unimodal"]) == ("image_logreg", 0.375)
  assert pipelines.best_by_validation(rows)["model"] == "fusion_logreg"
  assert pipelines.best_by_validation([]) is None
  del rows[0]["val_macro_f1"]
  with pytest.raises(KeyError, match="'image_logreg' has no 'val_macro_f1'"):
    pipelines.deltas(rows)
