"""The embedding cache's key: the checkpoint's saved files, its name and the config sections
that change the model. Checkpoints hold initialised weights (tests.saliency.test_shap_runner's
`checkpointed`): the cache needs a checkpoint, not a trained model."""
import json
import shutil

import numpy as np

from jaxmm.baselines import embeddings
from jaxmm.train import checkpointing
from tests.saliency.test_shap_runner import checkpointed


def test_a_retrained_checkpoint_at_the_same_step_is_extracted_again(smoke_config, tmp_path,
                                                                    monkeypatch):
  """Retraining from scratch saved another best checkpoint at the same step: the cache (keyed
  on step and config only) returned the old model's embeddings."""
  config = smoke_config("synthetic_derm", "model=concat")
  workdir = str(tmp_path)
  checkpointed(config, workdir)
  first = embeddings.extract_embeddings(config, workdir, ("test",))["test"]["image"]
  manifest = embeddings.embedding_manifest(workdir)
  assert manifest["checkpoint"] == "best" and manifest["checkpoint_step"] == 1

  shutil.rmtree(tmp_path / "checkpoints")
  other = smoke_config("synthetic_derm", "model=concat")
  other.seed = 1     # other weights; extracted below with the first config, so only the
  checkpointed(other, workdir)   # checkpoint's files tell them apart
  second = embeddings.extract_embeddings(config, workdir, ("test",))["test"]["image"]
  assert np.abs(second - first).max() > 1e-3
  assert embeddings.embedding_manifest(workdir)["checkpoint_fingerprint"] != \
      manifest["checkpoint_fingerprint"]

  # Unchanged checkpoint and config: read back, not extracted.
  def no_extraction(*args, **kwargs):
    raise AssertionError("the embeddings were extracted again")
  with monkeypatch.context() as patch:
    patch.setattr(embeddings, "compute_embeddings", no_extraction)
    again = embeddings.extract_embeddings(config, workdir, ("test",))["test"]["image"]
  np.testing.assert_array_equal(again, second)

  # Another checkpoint name at the same step is another cache entry.
  embeddings.extract_embeddings(config, workdir, ("test",), which="latest")
  latest = json.loads((tmp_path / "baselines" / "embeddings" / "manifest.json").read_text())
  assert latest["checkpoint"] == "latest"
  # The metadata encoder's age scale, with which the baselines' SHAP shows age in years.
  assert set(latest["meta_age"]) == {"mean", "std"} and latest["meta_age"]["std"] > 0


def test_config_hash_covers_what_changes_the_model(smoke_config):
  """seed, train and optimizer were left out of the hash: a retrained model with another seed
  or learning rate shared the cache key. The hash covers what a training run compares before
  it resumes (the train batch size included); paths, speed and display keys stay out."""
  base = checkpointing.config_hash(smoke_config("synthetic_derm", "model=concat"))
  changes = {"seed": lambda c: setattr(c, "seed", c.seed + 1),
             "train": lambda c: setattr(c.train, "num_steps", (c.train.num_steps or 1) + 1),
             "optimizer": lambda c: setattr(c.optimizer, "learning_rate",
                                            c.optimizer.learning_rate * 2),
             "data.batch_size": lambda c: setattr(c.data, "batch_size", c.data.batch_size + 1)}
  for name, change in changes.items():
    config = smoke_config("synthetic_derm", "model=concat")
    with config.unlocked():
      change(config)
    assert checkpointing.config_hash(config) != base, name
  same = smoke_config("synthetic_derm", "model=concat")
  same.data.eval_batch_size = 3
  same.train.progress = True
  same.data.data_dir = "/elsewhere"
  same.train.log_every_steps = 1
  assert checkpointing.config_hash(same) == base
