"""A model retrained from scratch and saved at the same step as the old one is another model:
the saliency shards and the explanation-evaluation units of the old one are recomputed, not
reused (they were keyed on the checkpoint's step and the data / model config only), while a
rerun with nothing changed reuses everything. One identity of the model serves every cache:
checkpointing.model_identity (the fingerprint of the checkpoint's files, the config hash).

Checkpoints hold initialised weights (tests.saliency.test_shap_runner's `checkpointed`, step 1):
the caches need a checkpoint, not a trained model."""
import json
import os
import shutil

import pytest

from jaxmm.baselines import embeddings
from jaxmm.evaluation import runner
from jaxmm.saliency import runner as saliency_runner
from jaxmm.train import checkpointing
from tests.saliency.test_shap_runner import checkpointed


def small_config(smoke_config, seed: int = 0):
  """synthetic_derm's image-only smoke model with a small CNN; Grad-CAM on 8 test examples,
  the other evaluation stages cut to almost nothing."""
  config = smoke_config("synthetic_derm", "model=image")
  config.model.image.encoder = "small_cnn"
  config.seed = seed
  evaluation = config.evaluation
  evaluation.saliency_methods = ("gradcam",)
  evaluation.max_examples = 8
  evaluation.bootstrap_resamples = 20
  evaluation.ifa.enabled = False
  evaluation.faithfulness.update({"num_examples": 2, "steps": 2, "chunk_size": 3})
  evaluation.sanity.update({"num_examples": 0})
  config.saliency.update({"methods": ("gradcam",), "max_examples": 4, "shard_size": 2,
                          "batch_size": 2, "progress": False})
  return config


def retrain(smoke_config, workdir: str, seed: int) -> None:
  """Deletes the workdir's checkpoints and saves another model's as best at the same step."""
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  checkpointed(small_config(smoke_config, seed), workdir)


def per_image(workdir) -> str:
  with open(os.path.join(workdir, "analysis", "roi_agreement", "gradcam_per_image.csv")) as f:
    return f.read()


def unit_lines(out: str) -> list:
  return [line for line in out.splitlines() if line.startswith("evaluation: ") and
          ("reused" in line or "recomputed" in line)]


def test_a_retrain_at_the_same_step_recomputes_the_maps_and_every_unit(smoke_config, tmp_path,
                                                                      capsys):
  config = small_config(smoke_config)
  workdir, fresh = str(tmp_path / "run"), str(tmp_path / "fresh")
  checkpointed(config, workdir)
  runner.run_evaluation(config, workdir)
  old = per_image(workdir)
  capsys.readouterr()

  runner.run_evaluation(config, workdir)  # nothing changed: everything reused
  lines = unit_lines(capsys.readouterr().out)
  assert lines and all("reused" in line for line in lines), lines

  retrain(smoke_config, workdir, seed=1)  # evaluated with the same config: only the files differ
  runner.run_evaluation(config, workdir)
  out = capsys.readouterr().out
  assert "held maps of another model or method definition (checkpoint_fingerprint changed)" in out
  lines = unit_lines(out)
  assert lines and not any("reused" in line for line in lines), lines
  assert all("checkpoint_fingerprint" in line for line in lines), lines
  assert per_image(workdir) != old

  checkpointed(small_config(smoke_config, seed=1), fresh)  # the same model, evaluated afresh
  runner.run_evaluation(config, fresh)
  assert per_image(workdir) == per_image(fresh)


def test_saliency_shards_of_another_model_are_recomputed_and_other_settings_refused(
    smoke_config, tmp_path, capsys):
  config = small_config(smoke_config)
  workdir = str(tmp_path)
  checkpointed(config, workdir)
  summary = saliency_runner.run_saliency(config, workdir)
  assert summary["computed_shards"] == [0, 1]
  assert saliency_runner.run_saliency(config, workdir)["computed_shards"] == []

  # The manifest holds the identity every cache of the model's outputs records.
  manifest_path = os.path.join(summary["directory"], "manifest.json")
  with open(manifest_path) as f:
    manifest = json.load(f)
  identity = checkpointing.model_identity(config, workdir, "best", 1)
  assert {k: manifest[k] for k in identity} == identity
  key = embeddings.cache_key(config, workdir, "best", 1)
  assert {k: key[k] for k in identity} == identity

  # Another seed / optimizer: another model, even with the checkpoint unchanged.
  other = small_config(smoke_config, seed=1)
  assert saliency_runner.run_saliency(other, workdir)["computed_shards"] == [0, 1]
  assert "config_hash changed" in capsys.readouterr().out

  # A manifest written before the identity was recorded cannot vouch for the model.
  with open(manifest_path) as f:
    legacy = json.load(f)
  del legacy["checkpoint_fingerprint"], legacy["config_hash"]
  with open(manifest_path, "w") as f:
    json.dump(legacy, f)
  assert saliency_runner.run_saliency(config, workdir)["computed_shards"] == [0, 1]

  # A changed setting is still refused (the old shards may be wanted).
  changed = config.copy_and_resolve_references()
  changed.saliency.seed = 5
  with pytest.raises(ValueError, match="different settings \\(seed: \\[0\\] now \\[5\\]"):
    saliency_runner.run_saliency(changed, workdir)
