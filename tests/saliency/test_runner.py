"""`--mode=saliency` on a trained smoke run: shards, resume without duplicates or gaps,
settings checks, and the CXR (multilabel, text) path with top-k targets and per-finding ROIs."""
import contextlib
import glob
import json
import os

import numpy as np
import pytest

from jaxmm.data import cxr_reports, pipeline
from jaxmm.evaluation import agreement
from jaxmm.saliency import runner
from jaxmm.train import loop

METHODS = ("gradcam", "ig_smoothgrad", "multimodal_ig")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  from tests.conftest import load_smoke_config
  config = load_smoke_config(data_dir, "synthetic_derm", "model=concat")
  config.saliency.update({"methods": METHODS, "max_examples": 10, "shard_size": 4,
                          "batch_size": 4, "progress": False, "layer": "image/stage3"})
  workdir = str(tmp_path_factory.mktemp("saliency_run"))
  loop.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture(scope="module")
def computed(trained):
  config, workdir = trained
  summary = runner.run_saliency(config, workdir)
  return summary, runner.load_saliency(summary["directory"])


def test_writes_every_example_once_with_maps_and_records(computed):
  summary, first = computed
  assert summary["num_shards"] == 3 and summary["computed_shards"] == [0, 1, 2]
  np.testing.assert_array_equal(first["index"], np.arange(10))
  assert first["gradcam.normalized"].shape == (10, 32, 32)
  assert first["ig_smoothgrad.raw"].shape == (10, 32, 32)
  assert first["multimodal_ig.meta_fields"].shape == (10, 4)
  assert first["image"].dtype == np.uint8 and first["roi_mask"].shape == (10, 32, 32)
  assert len(set(first["id"])) == 10


def test_a_rerun_after_a_kill_fills_only_the_missing_shard_identically(trained, computed):
  config, workdir = trained
  summary, first = computed
  # A run killed while writing shard 1 leaves no shard 1, maybe a temporary file.
  os.remove(runner.shard_file(summary["directory"], 1))
  open(runner.shard_file(summary["directory"], 1) + ".tmp-999", "wb").close()
  again = runner.run_saliency(config, workdir)
  assert again["computed_shards"] == [1]
  second = runner.load_saliency(summary["directory"])
  for key in first:
    np.testing.assert_array_equal(second[key], first[key], err_msg=key)


def test_changed_settings_on_existing_shards_are_refused(trained, computed):
  config, workdir = trained
  changed = config.copy_and_resolve_references()
  changed.saliency.options.ig_smoothgrad.num_samples = 3
  with pytest.raises(ValueError, match="different settings \\(options"):
    runner.run_saliency(changed, workdir)
  changed = config.copy_and_resolve_references()
  changed.saliency.save_images = False  # shards with and without images would not concatenate
  with pytest.raises(ValueError, match="different settings \\(save_images: \\[True\\] now "
                                       "\\[False\\]"):
    runner.run_saliency(changed, workdir)


def test_an_examples_maps_do_not_depend_on_shard_or_batch_size(trained, computed):
  # SmoothGrad noise is keyed by the example's index in the split; it used to be keyed by
  # shard and batch, so the main job's 8-example sample and the evaluation's shards of 64
  # gave the same image different IG + SmoothGrad maps.
  config, workdir = trained
  _, first = computed
  other = config.copy_and_resolve_references()
  other.saliency.update({"shard_size": 5, "batch_size": 2, "output_name": "test_regrouped"})
  second = runner.load_saliency(runner.run_saliency(other, workdir)["directory"])
  for key in ("ig_smoothgrad.raw", "gradcam.raw", "multimodal_ig.modality_shares"):
    np.testing.assert_allclose(second[key], first[key], rtol=1e-4, atol=1e-6, err_msg=key)


@contextlib.contextmanager
def manifest_without(directory: str, key: str):
  """The saliency manifest in `directory` as written before it recorded `key`; restored after."""
  manifest = os.path.join(directory, "manifest.json")
  with open(manifest) as f:
    saved = f.read()
  legacy = json.loads(saved)
  del legacy[key]
  with open(manifest, "w") as f:
    json.dump(legacy, f)
  try:
    yield json.loads(saved)
  finally:
    with open(manifest, "w") as f:
      f.write(saved)


def test_shards_written_with_per_batch_noise_keys_are_not_mixed_with_new_ones(trained, computed):
  config, workdir = trained
  summary, _ = computed
  with manifest_without(summary["directory"], "noise_keys"):
    with pytest.raises(ValueError, match="noise_keys: \\['per_shard_batch'\\] now "
                                         "\\['per_example'\\]"):
      runner.run_saliency(config, workdir)


def test_single_roi_shards_from_before_roi_mask_was_recorded_are_resumed(trained, computed):
  # The record's roi_mask is what shards of single-ROI data always held: nothing to recompute.
  config, workdir = trained
  summary, _ = computed
  with manifest_without(summary["directory"], "roi_mask") as saved:
    assert saved["roi_mask"] == "record"
    assert runner.run_saliency(config, workdir)["computed_shards"] == []


def test_shards_with_different_arrays_name_the_odd_shard(computed, tmp_path):
  summary, _ = computed
  for path in glob.glob(os.path.join(summary["directory"], "*")):
    os.link(path, tmp_path / os.path.basename(path))
  odd = runner.shard_file(str(tmp_path), 1)
  with np.load(odd) as data:
    arrays = {k: data[k] for k in data.files if k != "image"}
  os.remove(odd)
  np.savez(odd, **arrays)
  with pytest.raises(ValueError, match=r"shard_00001.npz holds other arrays than .*shard_00000"
                                       r".npz \(only in one of them: \['image'\]\)"):
    runner.load_saliency(str(tmp_path))


def test_incomplete_directories_and_bad_config_keys_are_reported(trained, computed, tmp_path):
  config, _ = trained
  summary, _ = computed
  os.makedirs(tmp_path / "copy")
  for path in glob.glob(os.path.join(summary["directory"], "*")):
    if not path.endswith("00002.npz"):
      os.link(path, tmp_path / "copy" / os.path.basename(path))
  with pytest.raises(FileNotFoundError, match=r"missing shards \[2\]"):
    runner.load_saliency(str(tmp_path / "copy"))
  bad = config.copy_and_resolve_references()
  with bad.unlocked():
    bad.saliency.metods = ("gradcam",)
  with pytest.raises(ValueError, match="Did you mean 'methods'"):
    runner.saliency_config(bad)
  bad = config.copy_and_resolve_references()
  bad.saliency.methods = ("gradcam", "integrated_gradient")
  with pytest.raises(ValueError, match="unknown saliency method 'integrated_gradient'"):
    runner.run_saliency(bad, str(tmp_path / "w"))


@pytest.fixture(scope="module")
def cxr_trained(tmp_path_factory, data_dir):
  from tests.conftest import load_smoke_config
  config = load_smoke_config(data_dir, "synthetic_cxr", "model=joint")
  config.saliency.update({"methods": ("gradcam", "multimodal_ig"), "target": "top_k",
                          "top_k": 2, "max_examples": 4, "shard_size": 4, "batch_size": 4,
                          "progress": False, "layer": "image/stage3"})
  workdir = str(tmp_path_factory.mktemp("cxr_saliency_run"))
  loop.train_and_evaluate(config, workdir)
  return config, workdir


def test_multilabel_text_model_top_k_targets(cxr_trained):
  config, workdir = cxr_trained
  data = runner.load_saliency(runner.run_saliency(config, workdir)["directory"])
  assert data["targets"].shape == (4, 2)
  np.testing.assert_array_equal(data["targets"], np.argsort(-data["logits"], 1)[:, :2])
  assert data["gradcam.normalized"].shape == (4, 2, 32, 32)
  assert data["multimodal_ig.text_tokens"].shape[:2] == (4, 2)
  assert data["tokens"][0][0] == "[CLS]"
  source = pipeline.load_builder(config.data).as_data_source(config.saliency.split)
  for i, target in zip(data["index"], data["targets"][:, 0]):
    np.testing.assert_array_equal(data["roi_mask"][i], source[int(i)]["roi_masks"][target])


def last_positive_finding(spec, logits, labels, top_k):
  """Targets [N, 2] whose first column is each study's last positive finding (No Finding, 0,
  where none is), the second the next class: with several findings, not the union's mask."""
  del spec, logits, top_k
  positive = np.asarray(labels) == 1
  first = np.where(positive.any(1), positive.shape[1] - 1 - positive[:, ::-1].argmax(1), 0)
  return np.stack([first, (first + 1) % positive.shape[1]], 1).astype(np.int32)


def test_per_finding_masks_give_each_map_its_own_findings_roi(cxr_trained, monkeypatch):
  # synthetic_cxr's roi_mask is the union of every positive finding's mask; the shards held it,
  # so a perfect map of one finding was scored against the other findings' pixels as well.
  config, workdir = cxr_trained
  config = config.copy_and_resolve_references()
  config.saliency.update({"methods": ("gradcam",), "max_examples": 24, "shard_size": 24,
                          "batch_size": 8, "output_name": "per_finding_roi"})
  monkeypatch.setattr(runner, "resolve_targets", last_positive_finding)
  summary = runner.run_saliency(config, workdir)
  data = runner.load_saliency(summary["directory"])
  records = pipeline.load_builder(config.data).as_data_source(config.saliency.split)
  records = [records[int(i)] for i in data["index"]]
  first = data["targets"][:, 0]
  own = np.stack([r["roi_masks"][k] for r, k in zip(records, first)])
  union = np.stack([r["roi_mask"] for r in records])
  assert (own != union).any(axis=(1, 2)).sum() >= 3  # studies with another finding's pixels
  np.testing.assert_array_equal(data["roi_mask"], own)
  # A map equal to its finding's mask is perfect; studies whose finding has no mask are left out.
  perfect = dict(data, **{"gradcam.normalized": np.stack(
      [np.stack([r["roi_masks"][k] for k in ks]) for r, ks in zip(records, data["targets"])]
  ).astype(np.float32)})
  table = agreement.per_image_table(perfect, "gradcam", cxr_reports.CHEXPERT_LABELS)
  np.testing.assert_array_equal(table["index"], data["index"][own.any(axis=(1, 2))])
  assert len(table["index"]) >= 5
  np.testing.assert_allclose(table["dice"], 1.0)
  with open(os.path.join(summary["directory"], "manifest.json")) as f:
    assert json.load(f)["roi_mask"] == "first_target"


def test_shards_with_union_roi_masks_are_not_mixed_with_per_finding_ones(cxr_trained):
  config, workdir = cxr_trained
  summary = runner.run_saliency(config, workdir)
  with manifest_without(summary["directory"], "roi_mask"):  # before it was recorded: unions
    with pytest.raises(ValueError, match="roi_mask: \\['record'\\] now \\['first_target'\\]"):
      runner.run_saliency(config, workdir)


def test_shards_of_an_older_method_definition_are_recomputed(trained, computed, capsys):
  # Score-CAM's weights changed (definition 2): its older shards are maps this code no longer
  # makes, recomputed rather than mixed with new ones; other methods keep definition 1.
  assert runner.definitions(("gradcam", "scorecam", "smoothgrad"),
                            {"smoothgrad": {"kind": "vargrad"}}) == {
      "gradcam": 1, "scorecam": 2, "smoothgrad": 2}
  config, workdir = trained
  summary, _ = computed
  with manifest_without(summary["directory"], "definitions") as saved:
    assert runner.run_saliency(config, workdir)["computed_shards"] == []  # all version 1
    legacy = {**saved, "definitions": {m: 0 for m in saved["methods"]}}
    with open(os.path.join(summary["directory"], "manifest.json"), "w") as f:
      json.dump(legacy, f)
    again = runner.run_saliency(config, workdir)
    assert again["computed_shards"] == list(range(again["num_shards"]))
    assert "another model or method definition (definitions changed)" in capsys.readouterr().out


def test_options_a_manifest_does_not_record_had_their_default(tmp_path):
  """scorecam's score and smoothgrad's kind could not be set on the command line (not in the
  defaults); added to the defaults, they must not make shards written before refused."""
  import ml_collections
  scfg = runner.saliency_config(ml_collections.ConfigDict(
      {"saliency": {"methods": ("scorecam", "smoothgrad")}}))
  assert scfg.options.scorecam.score == "probability" and scfg.options.smoothgrad.kind == (
      "smoothgrad")
  manifest = runner.manifest_for(scfg, ("scorecam", "smoothgrad"), 10, 5, "record",
                                 {"checkpoint_fingerprint": "f", "config_hash": "h"})
  older = json.loads(json.dumps(manifest))
  del older["options"]["scorecam"]["score"], older["options"]["smoothgrad"]["kind"]
  path = str(tmp_path / "manifest.json")
  with open(path, "w") as f:
    json.dump(older, f)
  assert runner.check_manifest(path, manifest) == []
  logit = json.loads(json.dumps(manifest))
  logit["options"]["scorecam"]["score"] = "logit"
  with pytest.raises(ValueError, match="different settings \\(options"):
    runner.check_manifest(path, logit)
