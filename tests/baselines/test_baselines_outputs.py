"""--mode=baselines on synthetic embeddings (no model, the extraction replaced): the metadata
SHAP's class axis when a class is absent from train, age in years, the figures, outputs of an
earlier run removed, config checks of the checkpoint and SHAP keys."""
import os

import ml_collections
import numpy as np
import pytest

from jaxmm.baselines import runner
from jaxmm.data import metadata
from jaxmm.report import shap_figures

CLASS_NAMES = ["nv", "bkl", "mel", "bcc"]
ABSENT = 2   # "mel": no training example
MODELS = {"image": ("logreg",), "meta": ("logreg",), "fusion": ("logreg",),
          "late": ("logreg",)}


def records(rng, n):
  return {"age": rng.integers(5, 90, n).astype(float),
          "sex": rng.choice(["male", "female"], n),
          "localization": rng.choice(list(metadata.LOCALIZATIONS), n),
          "dx_type": rng.choice(list(metadata.DX_TYPES), n)}


def synthetic_embeddings(n=160, seed=0):
  """(splits, manifest, encoder, raw test records) as embeddings.extract_embeddings and
  embedding_manifest give them. The label is the dx_type's index (so the metadata model
  predicts every class it has seen); train has no example of class ABSENT."""
  rng = np.random.default_rng(seed)
  raw = {s: records(rng, n) for s in ("train", "validation", "test")}
  encoder = metadata.MetadataEncoder.fit(raw["train"])
  splits = {}
  for split, recs in raw.items():
    label = np.array([metadata.DX_TYPES.index(d) for d in recs["dx_type"]])
    keep = label != ABSENT if split == "train" else np.ones(n, bool)
    label = label[keep]
    splits[split] = {
        "index": np.arange(len(label)), "label": label, "label_multiclass": label,
        "malignant": (label == 3).astype(np.int64), "sex": recs["sex"][keep],
        "meta": encoder.transform({k: v[keep] for k, v in recs.items()}).astype(np.float32),
        "image": (rng.normal(size=(len(label), 6)) + label[:, None]).astype(np.float32)}
  manifest = {"checkpoint_step": 1, "feature_keys": {"image": "image/pre_logits"},
              "class_names": {"label": CLASS_NAMES, "label_multiclass": CLASS_NAMES,
                              "malignant": ["benign", "malignant"]},
              "meta_feature_names": list(encoder.feature_names),
              "meta_age": {"mean": encoder.age_mean, "std": encoder.age_std}}
  return splits, manifest, encoder, raw["test"]


@pytest.fixture
def fake_extraction(monkeypatch):
  """runner.run_baselines reads synthetic_embeddings() instead of a checkpoint's."""
  splits, manifest, encoder, test_records = synthetic_embeddings()
  monkeypatch.setattr(runner.embeddings_lib, "extract_embeddings",
                      lambda config, workdir, names, which: {s: splits[s] for s in names})
  monkeypatch.setattr(runner.embeddings_lib, "embedding_manifest", lambda workdir: manifest)
  return splits, test_records


def baselines(tasks=runner.TASKS, models=MODELS, **section):
  return ml_collections.ConfigDict({"train": {"progress": False}, "baselines": {
      "tasks": tasks, "models": models, "pca": (), "shap_models": ("meta_logreg",),
      "shap_examples": 60, "shap_background": 40, **section}})


def fields_path(task_dir):
  return os.path.join(task_dir, "shap", "meta_logreg", "fields.npz")


def run_multiclass(workdir):
  """run_baselines of the multiclass task; (its summary, meta_logreg's fields.npz arrays)."""
  summary = runner.run_baselines(baselines(tasks=("multiclass",)), workdir, lambda s: None)
  task_dir = os.path.join(workdir, "baselines", "multiclass")
  return summary, dict(np.load(fields_path(task_dir)))


def test_metadata_shap_columns_are_the_predicted_classes(fake_extraction, tmp_path):
  """Train lacks "mel": the model's outputs are nv, bkl, bcc, so bcc's values are column 2.
  `predicted` indexed the 4-class probabilities (bcc -> 3: out of range, the figures raised
  IndexError; a class after the gap drew another class's values) and class_names were
  "0", "1", "3"."""
  workdir = str(tmp_path)
  summary, fields = run_multiclass(workdir)
  task_dir = os.path.join(workdir, "baselines", "multiclass")
  n = len(fields["predicted"])
  assert fields["values"].shape == (n, 4, 3)
  assert fields["class_names"].tolist() == ["nv", "bkl", "bcc"]
  assert fields["class_index"].tolist() == [0, 1, 3]
  probs = np.load(os.path.join(task_dir, "predictions.npz"))["probs/meta_logreg"][:n]
  predicted_class = probs.argmax(1)
  assert set(predicted_class) == {0, 1, 3}
  np.testing.assert_array_equal(fields["class_index"][fields["predicted"]], predicted_class)
  # The drawn column's output is that class's decision-function value, the largest.
  pipeline_out = fields["base_values"] + fields["values"].sum(1)
  np.testing.assert_array_equal(pipeline_out.argmax(1), fields["predicted"])
  assert summary["tasks"]["multiclass"]["class_names"] == CLASS_NAMES
  paths = shap_figures.shap_figures(os.path.dirname(fields_path(task_dir)),
                                    str(tmp_path / "figures"))
  assert [os.path.basename(p) for p in paths] == ["fields_summary.png", "fields_bar.png",
                                                  "fields_waterfall_0.png"]


def test_metadata_shap_shows_age_in_years(fake_extraction, tmp_path):
  """fields.npz said it had shap_runner's layout (age in years) but held the z-score."""
  _, test_records = fake_extraction
  _, fields = run_multiclass(str(tmp_path))
  n = len(fields["predicted"])
  np.testing.assert_allclose(fields["data"][:, 0], test_records["age"][:n], atol=1e-3)
  assert fields["display_data"][:, 0].tolist() == [f"{a:.0f}" for a in test_records["age"][:n]]
  assert fields["display_data"][:, 1].tolist() == test_records["sex"][:n].tolist()


def test_figures_draw_files_whose_predicted_class_has_no_column(tmp_path):
  """A fields.npz written before the fix: `predicted` 3 with 3 columns. The figures draw the
  highest explained class of such rows (and say so) instead of raising IndexError."""
  rng = np.random.default_rng(1)
  values, base = rng.normal(size=(5, 4, 3)), rng.normal(size=(5, 3))
  fields = {"values": values, "base_values": base, "data": rng.normal(size=(5, 4)),
            "predicted": np.array([0, 3, 1, 3, 2]), "field_names": np.array(list("abcd")),
            "class_names": np.array(["nv", "bkl", "bcc"]), "output": np.array("log_odds")}
  assert len(shap_figures.field_figures(fields, str(tmp_path), example=1)) == 3
  columns, fallbacks = shap_figures.explained_columns(fields)
  best = (base + values.sum(1)).argmax(1)
  assert fallbacks == 2
  np.testing.assert_array_equal(columns, [0, best[1], 1, best[3], 2])
  explanation = shap_figures.predicted_class_explanation(fields)
  np.testing.assert_array_equal(explanation.values[1], values[1, :, best[1]])


def test_a_rerun_without_fusion_models_removes_the_earlier_deltas(fake_extraction, tmp_path):
  """The earlier run's deltas.csv was kept and shown by the report as this run's table 15."""
  workdir = str(tmp_path)
  task_dir = tmp_path / "baselines" / "multiclass"
  runner.run_baselines(baselines(), workdir, lambda s: None)
  assert (task_dir / "deltas.csv").exists()
  (task_dir / "shap" / "meta_old").mkdir()
  printed = []
  summary = runner.run_baselines(baselines(models={
      "image": ("logreg",), "meta": ("knn",), "fusion": (), "late": ()}), workdir, printed.append)
  assert summary["tasks"]["multiclass"]["deltas"] == []
  assert sorted(os.listdir(task_dir)) == ["predictions.npz", "table.csv"]
  # meta_logreg is a valid name but not fitted this time: said, not silent.
  assert any("no SHAP of meta_logreg (multiclass task): not fitted" in p for p in printed)


def test_a_rerun_without_a_task_removes_its_folder(fake_extraction, tmp_path):
  """A task dropped from config.baselines.tasks kept binary/predictions.npz (which fairness
  scored); the embedding cache stays."""
  workdir = str(tmp_path)
  root = tmp_path / "baselines"
  (root / "embeddings").mkdir(parents=True)
  (root / "embeddings" / "manifest.json").write_text("{}")
  runner.run_baselines(baselines(), workdir, lambda s: None)
  assert (root / "binary" / "predictions.npz").exists()
  runner.run_baselines(baselines(tasks=("multiclass",)), workdir, lambda s: None)
  assert sorted(os.listdir(root)) == ["baselines.json", "embeddings", "multiclass"]
  assert (root / "embeddings" / "manifest.json").read_text() == "{}"


@pytest.mark.parametrize("section, message", [
    ({"checkpoint": "bset"}, r"config.baselines.checkpoint must be one of \['best', 'latest'\],"
                             r" got 'bset'. Did you mean 'best'\?"),
    ({"shap_models": ("meta_lgreg",)}, r"config.baselines.shap_models: 'meta_lgreg' is not a "
                                       r"metadata model name .*Did you mean 'meta_logreg'\?"),
    ({"shap_models": ("meta_logreg", "fusion_logreg")},
     r"config.baselines.shap_models: 'fusion_logreg' is not a metadata model name"),
    ({"shap_examples": 0}, r"config.baselines.shap_examples must be >= 1, got 0"),
    ({"shap_background": 0}, r"config.baselines.shap_background must be >= 1, got 0"),
    ({"max_train_examples": 0}, r"config.baselines.max_train_examples must be >= 1 \(or None"),
])
def test_checkpoint_and_shap_keys_are_checked(section, message):
  with pytest.raises(ValueError, match=message):
    runner.baselines_config(ml_collections.ConfigDict({"baselines": section}))


def test_valid_shap_models_and_checkpoints_are_accepted():
  cfg = runner.baselines_config(ml_collections.ConfigDict({"baselines": {
      "checkpoint": "latest", "shap_models": ("meta_gboost_pca", "meta_rf")}}))
  assert cfg.checkpoint == "latest" and tuple(cfg.shap_models) == ("meta_gboost_pca", "meta_rf")
  assert tuple(runner.baselines_config(ml_collections.ConfigDict({})).shap_models) == (
      "meta_logreg", "meta_gboost")
