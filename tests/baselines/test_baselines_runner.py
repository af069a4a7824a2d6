"""--mode=baselines end to end on a smoke concat model: embeddings that are the fusion head's
inputs, tables, predictions in test order, the embedding cache, figures; config errors."""
import csv
import json

import jax
import numpy as np
import pytest

from jaxmm.baselines import embeddings, runner
from jaxmm.data import pipeline as data_pipeline
from jaxmm.models.fusion import FusionMLP
from jaxmm.report import baselines_figures
from jaxmm.saliency import runner as saliency_runner
from jaxmm.train import loop
from jaxmm.train import metrics as metrics_lib

TINY = {"models": {"image": ("logreg",), "meta": ("logreg",), "fusion": ("knn",),
                   "late": ("logreg",)},
        "pca": ("fusion",), "tsne_points": 24}
MODELS = ["image_logreg", "meta_logreg", "fusion_knn", "fusion_knn_pca", "late_logreg"]


def read_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def with_baselines(config, section: dict):
  config.baselines = runner.default_config()
  config.baselines.update(section)
  return config


def test_baselines_on_a_smoke_concat_model(smoke_config, tmp_path, capsys, monkeypatch):
  config = with_baselines(smoke_config("synthetic_derm", "model=concat"), TINY)
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir)
  summary = runner.run_baselines(config, workdir)

  # The embeddings are exactly what the fusion head saw: head(image | meta_embedding) gives the
  # logits the training run saved for its best checkpoint.
  cached = embeddings.load_cached(workdir, ("test",))["test"]
  saved = np.load(tmp_path / "predictions" / "test.npz")
  run = loop.setup_run(config, workdir, record_run=False)
  try:
    variables, step = saliency_runner.restore_variables(run, "best")
  finally:
    run.checkpointer.close()
  fused = np.concatenate([cached["image"], cached["meta_embedding"]], axis=1)
  logits = FusionMLP(7, (128, 64), 0.3).apply({"params": jax.device_get(
      variables["params"]["head"])}, fused, train=False)
  np.testing.assert_array_equal(cached["index"], saved["index"])
  np.testing.assert_allclose(logits, saved["logits"], atol=1e-4)
  assert cached["meta"].shape == (len(saved["index"]), 24)
  dims = cached["image"].shape[1] + cached["meta"].shape[1]   # the fusion baselines' features
  assert summary["checkpoint_step"] == step

  source = data_pipeline.load_builder(config.data).as_data_source("test")
  records = [source[i] for i in range(len(source))]
  for task, field, k in (("multiclass", "label", 7), ("binary", "malignant", 2)):
    rows = read_rows(tmp_path / "baselines" / task / "table.csv")
    assert [r["model"] for r in rows] == MODELS
    by_model = {r["model"]: r for r in rows}
    assert 1 <= int(by_model["fusion_knn_pca"]["pca_components"]) <= dims
    assert by_model["late_logreg"]["params"] == "mean of image_logreg, meta_logreg"
    with np.load(tmp_path / "baselines" / task / "predictions.npz") as pred:
      assert (str(pred["split"]), str(pred["tuning_split"])) == ("test", "validation")
      np.testing.assert_array_equal(pred["index"], np.arange(len(records)))
      np.testing.assert_array_equal(pred["label"], [r[field] for r in records])
      np.testing.assert_array_equal(pred["sex"], [r["sex"].decode() for r in records])
      assert pred["age"].shape == pred["localization"].shape == (len(records),)
      for model in MODELS:
        probs = pred[f"probs/{model}"]
        assert probs.shape == (len(records), k)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        # the table's test metrics are those of the saved probabilities
        m = metrics_lib.multiclass_metrics(np.log(probs + 1e-12), pred["label"])
        assert float(by_model[model]["accuracy"]) == pytest.approx(m["accuracy"], abs=1e-12)
        assert float(by_model[model]["macro_f1"]) == pytest.approx(m["macro_f1"], abs=1e-5)
        assert float(pred[f"val_macro_f1/{model}"]) == pytest.approx(
            float(by_model[model]["val_macro_f1"]), abs=1e-12)
      np.testing.assert_allclose(pred["probs/late_logreg"], (pred["probs/image_logreg"] +
                                                             pred["probs/meta_logreg"]) / 2,
                                 atol=1e-6)
    deltas = read_rows(tmp_path / "baselines" / task / "deltas.csv")
    assert [d["model"] for d in deltas] == ["fusion_knn", "fusion_knn_pca", "late_logreg"]
    late = deltas[-1]
    assert float(late["delta_f1_vs_meta"]) == pytest.approx(
        float(by_model["late_logreg"]["macro_f1"]) - float(by_model["meta_logreg"]["macro_f1"]))
    assert summary["tasks"][task]["class_names"] == (
        ["benign", "malignant"] if task == "binary" else list(run.info.class_names))

  report = json.loads((tmp_path / "baselines" / "baselines.json").read_text())
  curve = report["tasks"]["multiclass"]["pca_explained_variance"]["fusion_knn_pca"]
  assert len(curve) == dims and abs(sum(curve) - 1) < 1e-6
  assert int(np.searchsorted(np.cumsum(curve), 0.95, side="right") + 1) == int(
      read_rows(tmp_path / "baselines" / "multiclass" / "table.csv")[3]["pca_components"])
  paths = baselines_figures.baselines_figures(workdir)
  figures = tmp_path / "figures" / "baselines"
  assert sorted(paths) == sorted(str(p) for p in figures.iterdir())
  for task in ("multiclass", "binary"):
    best = report["tasks"][task]["best_model"]
    for name in (f"{task}_comparison.png", f"{task}_confusion_{best}.png",
                 f"{task}_roc_pr_{report['tasks'][task]['best_fusion_model']}.png"):
      assert (figures / name).stat().st_size > 5000, name
  for name in ("pca_explained_variance.png", "tsne_image_test.png"):
    assert (figures / name).stat().st_size > 5000, name
  out = capsys.readouterr().out
  assert "Baselines, multiclass task" in out and "fusion_knn_pca" in out

  # A second run reuses the cached embeddings: no extraction, files untouched.
  cache = tmp_path / "baselines" / "embeddings"
  mtimes = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
  def no_extraction(*args, **kwargs):
    raise AssertionError("the embeddings were extracted again")
  with monkeypatch.context() as patch:
    patch.setattr(embeddings, "compute_embeddings", no_extraction)
    again = runner.run_baselines(config, workdir)
  assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes
  assert again["tasks"]["binary"]["rows"] == summary["tasks"]["binary"]["rows"]

  # A different checkpoint step invalidates the cache: the requested split is recomputed, the
  # stale ones are deleted; a later request computes only the splits it lacks.
  manifest = json.loads((cache / "manifest.json").read_text())
  manifest["checkpoint_step"] = step + 1
  (cache / "manifest.json").write_text(json.dumps(manifest))
  redone = embeddings.extract_embeddings(config, workdir, ("test",))
  manifest = json.loads((cache / "manifest.json").read_text())
  assert manifest["checkpoint_step"] == step and list(manifest["splits"]) == ["test"]
  assert sorted(p.name for p in cache.glob("*.npz")) == ["test.npz"]
  assert (cache / "test.npz").stat().st_mtime_ns > mtimes["test.npz"]
  np.testing.assert_array_equal(redone["test"]["image"], cached["image"])
  test_mtime = (cache / "test.npz").stat().st_mtime_ns
  both = embeddings.extract_embeddings(config, workdir, ("train", "test"))
  assert (cache / "test.npz").stat().st_mtime_ns == test_mtime
  assert sorted(json.loads((cache / "manifest.json").read_text())["splits"]) == ["test", "train"]
  assert len(both["train"]["index"]) == summary["tasks"]["binary"]["support"]["train"]


def test_task_labels_fall_back_to_the_run_label():
  names = {"label": ["benign", "malignant"]}
  binary_run = {"label": np.array([0, 1])}
  assert runner.task_labels("binary", binary_run, names) == ("label", ["benign", "malignant"])
  assert "no multiclass label" in runner.task_labels("multiclass", binary_run, names)
  seven = {"label": ["a", "b", "c"]}
  assert runner.task_labels("multiclass", binary_run, seven) == ("label", ["a", "b", "c"])
  assert "no malignant field" in runner.task_labels("binary", binary_run, seven)
  assert "multilabel" in runner.task_labels("binary", {"label": np.zeros((2, 3))}, seven)


def test_config_errors_name_the_key_and_the_valid_values(smoke_config):
  config = with_baselines(smoke_config("synthetic_derm"), {})
  config.baselines.tsne_point = 10
  with pytest.raises(ValueError, match="tsne_points"):
    runner.baselines_config(config)
  for section, message in (
      ({"models": {"image": ("logreg", "xgb")}}, r"models.image: unknown baseline classifier "
                                                 r"'xgb'; valid classifiers: \['gboost'"),
      ({"models": {"images": ("logreg",)}}, "Did you mean 'image'"),
      ({"tasks": ("multiclass", "ternary")}, "unknown task 'ternary'"),
      ({"pca": ("late",)}, "'late' is not a fitted feature set"),
      ({"split_for_tuning": "test"}, "split_for_tuning"),
  ):
    with pytest.raises(ValueError, match=message):
      runner.baselines_config(with_baselines(smoke_config("synthetic_derm"), section))
  # any registry classifier on any feature set
  cfg = runner.baselines_config(with_baselines(smoke_config("synthetic_derm"), {"models": {
      "image": ("rf", "tree", "naive_bayes"), "meta": ("svm", "knn"), "late": ("gboost",)}}))
  assert cfg.models.image == ("rf", "tree", "naive_bayes") and cfg.models.late == ("gboost",)
  assert cfg.models.fusion == runner.default_config().models.fusion


def test_predictions_record_the_split_and_validation_scores():
  models = [{"model": name, "test_probs": np.full((3, 2), 0.5), "val_macro_f1": score}
            for name, score in (("image_logreg", 0.75), ("fusion_knn", 0.5))]
  test = {"index": np.array([4, 5, 6]), "sex": np.array(["f", "m", "f"]),
          "image": np.zeros((3, 8))}
  out = runner.predictions_arrays(models, test, np.array([0, 1, 0]), "validation")
  assert (str(out["split"]), str(out["tuning_split"])) == ("test", "validation")
  assert float(out["val_macro_f1/image_logreg"]) == 0.75
  assert sorted(out) == ["index", "label", "probs/fusion_knn", "probs/image_logreg", "sex",
                         "split", "tuning_split", "val_macro_f1/fusion_knn",
                         "val_macro_f1/image_logreg"]
