"""config.train.early_stopping: mode, metric and patience are checked before the first step;
patience 0 (or None) never stops."""
import os
import types

import ml_collections
import pytest

from jaxmm.train import loop


def update_all(patience, values, mode="max"):
  """The `stopped` flag after each of `values`, fed in order to early_stopping_update."""
  config = ml_collections.ConfigDict({"train": {"early_stopping": {
      "metric": "macro_f1", "mode": mode, "patience": patience, "min_delta": 0.0}}})
  record = {"best_value": None, "best_step": None, "bad_evals": 0, "stopped": False}
  stopped = []
  for step, value in enumerate(values, 1):
    record, _ = loop.early_stopping_update(config, record, value, step)
    stopped.append(record["stopped"])
  return stopped, record["best_step"]


def test_patience_zero_or_none_never_stops_and_still_tracks_the_best():
  for patience in (0, None):
    assert update_all(patience, (0.3, 0.4, 0.2, 0.1, 0.1)) == ([False] * 5, 2)


def test_patience_counts_evaluations_without_improvement():
  assert update_all(2, (0.3, 0.4, 0.2, 0.5, 0.1, 0.1)) == (
      [False, False, False, False, False, True], 4)
  assert update_all(1, (0.5, 0.4), mode="min") == ([False, False], 2)


DERM = types.SimpleNamespace(num_classes=7, multilabel=False, class_names=list("abcdefg"))
CXR = types.SimpleNamespace(num_classes=3, multilabel=True, class_names=["x", "y", "z"])
PLAIN = ml_collections.ConfigDict({"train": {"uncertain_policy": "ignore"}})


def test_metric_names_are_the_tasks_scalar_metrics_and_loss():
  assert loop.metric_names(DERM, PLAIN) == ["accuracy", "macro_f1", "macro_precision",
                                            "macro_recall", "pr_auc", "roc_auc", "loss"]
  assert loop.metric_names(CXR, PLAIN) == ["masked_accuracy", "pr_auc", "roc_auc", "loss"]


@pytest.mark.parametrize("settings,message", [
    ({"mode": "maximize"}, r"mode='maximize'; valid: \['max', 'min'\]. Did you mean 'max'"),
    ({"mode": "MAX"}, r"mode='MAX'; valid: \['max', 'min'\]"),
    ({"metric": "macro-f1"}, r"metric='macro-f1' is not a validation metric .* Did you mean "
                             r"'macro_f1'"),
    ({"metric": "per_class"}, r"metric='per_class' is not a validation metric"),
    ({"patience": -1}, r"patience=-1; give an int >= 0 \(0 = no early stopping\)"),
])
def test_bad_early_stopping_settings_are_refused(settings, message):
  es = {"metric": "macro_f1", "mode": "max", "patience": 3, **settings}
  with pytest.raises(ValueError, match=message):
    loop.check_early_stopping(es, loop.metric_names(DERM, PLAIN))


def test_valid_settings_pass():
  for es in ({"metric": "loss", "mode": "min", "patience": 0},
             {"metric": "roc_auc", "mode": "max", "patience": None}):
    loop.check_early_stopping(es, loop.metric_names(CXR, PLAIN))


@pytest.mark.parametrize("field,value", [("mode", "maximize"), ("metric", "macro-f1")])
def test_a_bad_setting_stops_the_run_before_its_first_step(smoke_config, tmp_path, field, value):
  config = smoke_config("synthetic_derm", "model=meta")
  config.train.early_stopping[field] = value
  with pytest.raises(ValueError, match=f"config.train.early_stopping.{field}={value!r}"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "metrics.jsonl")
  assert not os.path.exists(tmp_path / "checkpoints")
  assert not os.path.exists(tmp_path / "config.json")
