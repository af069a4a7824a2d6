"""End-to-end training on tiny configs: loss goes down, checkpoints round-trip, a NaN stops
naming the step (resume after a real SIGKILL: test_preemption.py)."""
import contextlib
import functools
import json
import os
import shutil
import types

import jax
import ml_collections
import numpy as np
import pytest

from jaxmm.data import pipeline
from jaxmm.models import batch_norm, onednn_conv
from jaxmm.train import checkpointing, loop, steps


def params_of(workdir, config, which="latest"):
  run = loop.setup_run(config, workdir)
  try:
    restored = run.checkpointer.restore(checkpointing.abstract_like(loop.create_state(run)),
                                        which=which)
    return jax.device_get(restored[0])
  finally:
    run.checkpointer.close()


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def train_split_loss(config, workdir, trained: bool):
  """Loss over the whole training split in inference mode, at init or after training."""
  run = loop.setup_run(config, workdir)
  try:
    state = loop.create_state(run)
    if trained:
      state = run.checkpointer.restore(checkpointing.abstract_like(state))[0]
    return loop.evaluate_split(run, state, "train")["loss"]
  finally:
    run.checkpointer.close()


def test_training_lowers_the_loss(smoke_config, tmp_path):
  config = smoke_config("synthetic_derm", "model=concat")
  config.train.num_steps = 40
  config.train.eval_every_steps = 40
  config.train.checkpoint_every_steps = 40
  config.train.log_every_steps = 5
  config.train.class_weights = None
  config.optimizer.learning_rate = 3e-3
  before = train_split_loss(config, str(tmp_path / "init"), trained=False)
  results = loop.train_and_evaluate(config, str(tmp_path))
  after = train_split_loss(config, str(tmp_path), trained=True)
  assert after < 0.7 * before, (before, after)
  logged = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
  assert [r["step"] for r in logged] == [5, 10, 15, 20, 25, 30, 35, 40]
  assert all(np.isfinite(r["loss"]) and r["learning_rate"] >= 0 for r in logged)
  for name in ("config.json", "env_info.json", "requirements.lock", "results.json"):
    assert (tmp_path / name).exists(), name
  assert "jax==" in (tmp_path / "requirements.lock").read_text()
  env = json.loads((tmp_path / "env_info.json").read_text())
  assert env["seed"] == config.seed
  assert env["convolutions"] == onednn_conv.describe()
  assert env["batch_norm"] == batch_norm.describe()
  assert env["update_guard"] == steps.describe_update_guard()
  assert set(results) >= {"validation", "test", "best_step"}
  assert 0.0 <= results["test"]["macro_f1"] <= 1.0
  # --mode=eval on the workdir reproduces the best checkpoint's test metrics exactly.
  config_json = (tmp_path / "config.json").read_text()
  evaluated = loop.evaluate(config, str(tmp_path))["test"]
  assert evaluated["macro_f1"] == results["test"]["macro_f1"]
  assert evaluated["confusion_matrix"] == results["test"]["confusion_matrix"]
  assert (tmp_path / "eval_test.json").exists()
  assert (tmp_path / "config.json").read_text() == config_json


def test_checkpoint_round_trip(smoke_config, tmp_path):
  config = smoke_config("synthetic_derm", "model=meta")
  run = loop.setup_run(config, str(tmp_path))
  state = loop.create_state(run)
  state = state.replace(step=state.step + 7)
  run.checkpointer.save(7, state, {"best_value": 0.5, "bad_evals": 1})
  restored, record = run.checkpointer.restore(checkpointing.abstract_like(state))
  run.checkpointer.close()
  assert record == {"best_value": 0.5, "bad_evals": 1}
  assert int(restored.step) == 7
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(restored))


@contextlib.contextmanager
def wrapped_train_fn(monkeypatch, wrapper):
  """Runs set up inside the block call `wrapper(real_train_fn, state, batch)` for each step."""
  setup = loop.setup_run

  def setup_wrapped(config, workdir):
    run = setup(config, workdir)
    run.train_fn = functools.partial(wrapper, run.train_fn)
    return run

  with monkeypatch.context() as patch:
    patch.setattr(loop, "setup_run", setup_wrapped)
    yield


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(smoke_config, tmp_path,
                                                                      monkeypatch):
  config = smoke_config("synthetic_derm", "model=meta")
  config.train.num_steps = 6
  config.train.checkpoint_every_steps = 2
  config.train.log_every_steps = 1
  def nan_at_step_3(inner, state, batch):
    if int(state.step) == 2:
      batch = dict(batch, meta=batch["meta"] * np.nan)
    return inner(state, batch)

  with wrapped_train_fn(monkeypatch, nan_at_step_3), pytest.raises(
      FloatingPointError, match=r"at step 3 \(training batch index 2"):
    loop.train_and_evaluate(config, str(tmp_path))
  good = params_of(str(tmp_path), config)
  assert int(good.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good.params))


def subclass_copy(preprocessor, call):
  """A copy of `preprocessor` whose __call__ is `call(raw, real_call)`."""
  class Wrapped(type(preprocessor)):
    def __call__(self, raw):
      return call(raw, super().__call__)
  copy = Wrapped.__new__(Wrapped)
  copy.__dict__.update(preprocessor.__dict__)
  return copy


def test_a_bad_input_batch_stops_naming_the_step_and_examples(smoke_config, tmp_path,
                                                              monkeypatch):
  """A batch whose images have the wrong size (met in grain's reader threads) stops training
  with the step and the example ids; the checkpoints already written stay."""
  config = smoke_config("synthetic_derm", "model=image")
  config.train.num_steps = 5
  config.train.checkpoint_every_steps = 2
  run = loop.setup_run(config, str(tmp_path / "probe"), record_run=False)
  run.checkpointer.close()
  seen = []
  recording = subclass_copy(run.preprocessor,
                            lambda raw, call: seen.append(set(raw["image_id"])) or call(raw))
  stream = pipeline.train_batches(run.builder.as_data_source("train"), recording,
                                  global_batch_size=config.data.batch_size, seed=config.seed,
                                  num_threads=0)
  for _ in range(3):
    next(stream)
  bad_ids = seen[2]
  real_train_batches = pipeline.train_batches

  def crop(raw, call):
    if set(raw["image_id"]) == bad_ids:
      raw = dict(raw, image=raw["image"][:, 1:])
    return call(raw)

  monkeypatch.setattr(pipeline, "train_batches", lambda source, preprocessor, **kwargs:
                      real_train_batches(source, subclass_copy(preprocessor, crop), **kwargs))
  workdir = str(tmp_path / "run")
  with pytest.raises(pipeline.ImageShapeMismatch, match=r"training step 3 .*image_id") as e:
    loop.train_and_evaluate(config, workdir)
  assert set(e.value.ids) == {f"image_id {i}" for i in bad_ids}
  assert int(params_of(workdir, config).step) == 2


class Killed(BaseException):
  """Stands for SIGKILL at one point of a save (BaseException: nothing in the loop catches it)."""


def test_a_kill_between_the_latest_and_best_saves_ends_like_an_uninterrupted_run(
    smoke_config, tmp_path, monkeypatch):
  # Only the first evaluation (step 2) improves; the run dies after saving step 2 as latest
  # and before saving it as best. The resumed run must re-save the best from the restored
  # state, evaluate step 2, and log the final records once, as the uninterrupted run does.
  config = smoke_config("synthetic_derm", "model=concat")
  config.train.num_steps = 4
  config.train.eval_every_steps = 2
  config.train.checkpoint_every_steps = 4
  config.train.async_checkpoints = False
  config.train.early_stopping.min_delta = 10.0
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  expected = loop.train_and_evaluate(config, straight)
  assert expected["best_step"] == expected["evaluated_step"] == 2

  def dies_before_best(self, step, state, record, *, best=False):
    self.latest.save(step, args=checkpointing.ocp.args.Composite(
        state=checkpointing.ocp.args.StandardSave(state),
        record=checkpointing.ocp.args.JsonSave(record)), force=True)
    self.latest.wait_until_finished()
    if best:
      raise Killed(step)

  with monkeypatch.context() as patch:
    patch.setattr(checkpointing.Checkpointer, "save", dies_before_best)
    with pytest.raises(Killed):
      loop.train_and_evaluate(config, killed)
  results = loop.train_and_evaluate(config, killed)
  assert (results["best_step"], results["evaluated_step"]) == (2, 2)
  assert results["test"] == expected["test"]

  # Running a finished run again evaluates again without logging the final records twice.
  again = loop.train_and_evaluate(config, straight)
  assert again["test"] == expected["test"]
  kinds = [(r["kind"], r["step"]) for r in read_jsonl(f"{straight}/metrics.jsonl")]
  assert kinds.count(("final_test", 4)) == kinds.count(("final_validation", 4)) == 1
  without_time = lambda path: [{k: v for k, v in r.items() if k != "time"}
                               for r in read_jsonl(path)]
  assert without_time(f"{killed}/metrics.jsonl") == without_time(f"{straight}/metrics.jsonl")

  # A best checkpoint gone for good is not replaced by another state under its name.
  shutil.rmtree(f"{straight}/checkpoints/best")
  with pytest.warns(RuntimeWarning, match=r"best checkpoint \(step 2\) is missing .* final "
                                          r"state \(step 4\)"):
    gone = loop.train_and_evaluate(config, straight)
  assert (gone["best_step"], gone["evaluated_step"]) == (2, 4)


def test_class_weights_other_than_none_or_balanced_are_refused():
  def config(choice):
    return ml_collections.ConfigDict({"train": {"class_weights": choice},
                                      "data": {"name": "synthetic_cxr", "label_key": "label"}})
  single, multi = (types.SimpleNamespace(multilabel=m, num_classes=3) for m in (False, True))
  for bad in ("Balanced", "inverse", (1.0, 5.0, 5.0)):
    with pytest.raises(ValueError, match=r"class_weights=.*valid values: \[None, 'balanced'\]"):
      loop.make_loss(config(bad), single, lambda: None)
  with pytest.raises(ValueError, match="synthetic_cxr is multilabel"):
    loop.make_loss(config("balanced"), multi, lambda: None)


def test_nan_validation_logits_name_the_step_and_keep_the_last_predictions(smoke_config,
                                                                          tmp_path, monkeypatch):
  """predictions/validation.npz was written before its logits were checked: a diverged
  step's NaN logits replaced those of the best checkpoint's step."""
  config = smoke_config("synthetic_derm", "model=meta")
  config.train.num_steps = 3
  config.train.eval_every_steps = 1
  real_predict, calls = loop.predict, []

  def diverging(run, state, split, *args, **kwargs):
    pred = real_predict(run, state, split, *args, **kwargs)
    calls.append(split)
    return dict(pred, logits=pred["logits"] * np.nan) if len(calls) == 2 else pred

  monkeypatch.setattr(loop, "predict", diverging)
  workdir = str(tmp_path / "run")
  path = os.path.join(workdir, "predictions", "validation.npz")
  saved = []
  real_write = loop.write_predictions
  monkeypatch.setattr(loop, "write_predictions", lambda run, split, pred: saved.append(
      (split, np.array(pred["logits"]))) or real_write(run, split, pred))
  with pytest.raises(ValueError, match=r"validation split's logits of the model at step 2 "
                                       r"\(predictions/validation.npz is left as it was\): "
                                       r"\d+ of \d+ rows hold NaN"):
    loop.train_and_evaluate(config, workdir)
  assert [split for split, _ in saved] == ["validation"]
  np.testing.assert_array_equal(np.load(path)["logits"], saved[0][1])
