"""A training run on a workdir trained with another model's config is refused before anything
is built or written; the same config (later-stage settings and logging aside) resumes."""
import json
import os

import pytest

from jaxmm.train import config_lib, loop

RECORDS = ("config.json", "env_info.json", "metrics.jsonl", "results.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  """A finished smoke run of the metadata model: (its config loader, workdir, results)."""
  from tests.conftest import load_smoke_config
  config = lambda: load_smoke_config(data_dir, "synthetic_derm", "model=meta")
  workdir = str(tmp_path_factory.mktemp("reuse"))
  return config, workdir, loop.train_and_evaluate(config(), workdir)


def contents(workdir):
  return {name: open(os.path.join(workdir, name), "rb").read() for name in RECORDS}


@pytest.mark.parametrize("change,listed", [
    (lambda c: setattr(c, "seed", 1), "seed: 0 -> 1"),
    (lambda c: setattr(c.optimizer, "learning_rate", 0.5), "optimizer.learning_rate: 0.002 -> 0.5"),
    (lambda c: setattr(c.train, "num_steps", 6), "train.num_steps: 3 -> 6"),
    (lambda c: setattr(c.train.early_stopping, "min_delta", 0.1),
     "train.early_stopping.min_delta: 0.0 -> 0.1"),
    (lambda c: setattr(c.train, "class_weights", None), "train.class_weights: 'balanced' -> None"),
])
def test_another_models_config_is_refused_and_leaves_the_records(trained, change, listed):
  config, workdir, _ = trained
  before = contents(workdir)
  other = config()
  change(other)
  with pytest.raises(ValueError) as error:
    loop.train_and_evaluate(other, workdir)
  assert type(error.value).__name__ == "WorkdirConfigMismatch"
  message = str(error.value)
  assert listed in message, message
  assert "new --workdir" in message and f"delete {workdir}" in message
  assert contents(workdir) == before


def test_the_same_model_with_other_later_stage_and_logging_settings_resumes(trained):
  config, workdir, results = trained
  again = config()
  again.train.log_every_steps = 7
  again.train.progress = True
  again.data.eval_batch_size = 16
  again.saliency.methods = ("gradcam",)
  again.pipeline.variants = ("meta",)
  resumed = loop.train_and_evaluate(again, workdir)
  assert (resumed["final_step"], resumed["best_step"]) == (results["final_step"],
                                                           results["best_step"])
  assert resumed["test"] == results["test"]
  # The records are the latest run's.
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["log_every_steps"] == 7


def test_model_settings_skip_paths_and_later_stages_and_unify_spellings():
  base = {"seed": 0, "model": {"fusion": "concat"}, "data": {"data_dir": "/a", "batch_size": 8},
          "train": {"class_weights": None, "early_stopping": {"patience": None},
                    "log_every_steps": 5}, "saliency": {"methods": ["gradcam"]}}
  same = {"seed": 0, "model": {"fusion": "concat"}, "data": {"data_dir": "/b", "batch_size": 8},
          "train": {"class_weights": "None", "early_stopping": {"patience": 0},
                    "log_every_steps": 50}, "saliency": {"methods": ["hirescam"]}}
  assert config_lib.model_settings(base) == config_lib.model_settings(same) == {
      "seed": 0, "model.fusion": "concat", "data.batch_size": 8, "train.class_weights": None,
      "train.early_stopping.patience": 0}


def test_a_key_only_one_config_has_is_named_and_resumes(trained):
  # A config.json written by another jaxmm version lacks (or has) a key: not a changed setting.
  config, workdir, results = trained
  path = os.path.join(workdir, "config.json")
  recorded = json.load(open(path))
  recorded["train"]["a_setting_of_another_version"] = 1
  del recorded["optimizer"]["learning_rate"]
  with open(path, "w") as f:
    json.dump(recorded, f)
  with pytest.warns(RuntimeWarning, match=r"only one of them has .*'optimizer.learning_rate', "
                                          r"'train.a_setting_of_another_version'"):
    resumed = loop.train_and_evaluate(config(), workdir)
  assert resumed["test"] == results["test"]


def test_analysis_modes_on_an_untrained_workdir_write_nothing(smoke_config, tmp_path):
  """They created the workdir and its metadata encoder (and prepared the dataset) before
  finding no checkpoint; a later training run there then used that encoder."""
  from jaxmm import workflow
  from jaxmm.saliency import runner as saliency_runner
  config = smoke_config("synthetic_derm", "model=concat")
  workdir = str(tmp_path / "untrained")
  for mode in (loop.evaluate, saliency_runner.run_saliency, workflow.run_evaluate_explanations,
               workflow.run_baselines, workflow.run_shap):
    with pytest.raises(FileNotFoundError, match="no (best )?checkpoint under .*untrained/checkpoints; "
                                                "train first with --mode=train"):
      mode(config, workdir)
    assert not os.path.exists(workdir), mode.__name__
