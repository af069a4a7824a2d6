"""`--mode=saliency` on a trained smoke run: shards, resume without duplicates or gaps,
settings checks, and the CXR (multilabel, text) path with top-k targets."""
import glob
import json
import os

import numpy as np
import pytest

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


def test_shards_written_with_per_batch_noise_keys_are_not_mixed_with_new_ones(trained, computed):
  config, workdir = trained
  summary, _ = computed
  manifest = os.path.join(summary["directory"], "manifest.json")
  with open(manifest) as f:
    saved = f.read()
  legacy = json.loads(saved)
  del legacy["noise_keys"]  # as written before manifests recorded it
  with open(manifest, "w") as f:
    json.dump(legacy, f)
  try:
    with pytest.raises(ValueError, match="noise_keys: \\['per_shard_batch'\\] now "
                                         "\\['per_example'\\]"):
      runner.run_saliency(config, workdir)
  finally:
    with open(manifest, "w") as f:
      f.write(saved)


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


def test_multilabel_text_model_top_k_targets(smoke_config, tmp_path):
  config = smoke_config("synthetic_cxr", "model=joint")
  config.saliency.update({"methods": ("gradcam", "multimodal_ig"), "target": "top_k",
                          "top_k": 2, "max_examples": 4, "shard_size": 4, "batch_size": 4,
                          "progress": False, "layer": "image/stage3"})
  loop.train_and_evaluate(config, str(tmp_path))
  data = runner.load_saliency(runner.run_saliency(config, str(tmp_path))["directory"])
  assert data["targets"].shape == (4, 2)
  np.testing.assert_array_equal(data["targets"], np.argsort(-data["logits"], 1)[:, :2])
  assert data["gradcam.normalized"].shape == (4, 2, 32, 32)
  assert data["multimodal_ig.text_tokens"].shape[:2] == (4, 2)
  assert data["tokens"][0][0] == "[CLS]"
