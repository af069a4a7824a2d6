"""A run resumed at an older step than its best checkpoint (the newer latest checkpoints
damaged, or never committed) sets that best aside, trains the steps again and ends as an
uninterrupted run would (orbax refused to save the best step again: StepAlreadyExistsError)."""
import functools
import glob
import os
import shutil

import pytest

from jaxmm.train import loop
from tests.train.test_checkpoint_recovery import truncate_arrays

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in\x3a None[\s\S]*RuntimeError\x3a Event loop is closed"
    r":pytest.PytestUnraisableExceptionWarning")


class Killed(BaseException):
  """Stands for SIGKILL (BaseException: nothing in the loop catches it)."""


def config_of(smoke_config):
  config = smoke_config("synthetic_derm", "model=meta")
  config.train.num_steps = 6
  config.train.eval_every_steps = 2
  config.train.checkpoint_every_steps = 1
  config.train.async_checkpoints = False
  config.train.early_stopping.min_delta = -100.0  # every evaluation improves: best = 2, 4, 6
  return config


def killed_at(monkeypatch, config, workdir: str, kill_step: int) -> None:
  """Trains `config` in `workdir` until step `kill_step` starts."""
  setup = loop.setup_run

  def killing(inner, state, batch):
    if int(state.step) + 1 == kill_step:
      raise Killed()
    return inner(state, batch)

  def setup_killing(*args, **kwargs):
    run = setup(*args, **kwargs)
    run.train_fn = functools.partial(killing, run.train_fn)
    return run

  with monkeypatch.context() as patch:
    patch.setattr(loop, "setup_run", setup_killing)
    with pytest.raises(Killed):
      loop.train_and_evaluate(config, workdir)


def steps(workdir: str, which: str) -> list:
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints", which)))


@pytest.mark.parametrize("damage", ["truncated", "uncommitted"])
def test_resume_behind_the_best_checkpoint_ends_as_an_uninterrupted_run(
    smoke_config, tmp_path, monkeypatch, damage):
  config = config_of(smoke_config)
  straight, workdir = str(tmp_path / "straight"), str(tmp_path / "resumed")
  expected = loop.train_and_evaluate(config, straight)
  killed_at(monkeypatch, config, workdir, kill_step=5)
  assert (steps(workdir, "latest"), steps(workdir, "best")) == ([3, 4], [4])
  latest_4 = os.path.join(workdir, "checkpoints", "latest", "4")
  if damage == "truncated":  # README: a damaged latest checkpoint falls back to the previous one
    truncate_arrays(latest_4)
  else:  # the best save of step 4 committed, the latest one not
    shutil.rmtree(latest_4)
  with pytest.warns(RuntimeWarning, match=r"checkpoints/best held step\(s\) \[4\], newer than "
                                          r"the restored step 3"):
    results = loop.train_and_evaluate(config, workdir)
  assert (results["best_step"], results["evaluated_step"], results["final_step"]) == (6, 6, 6)
  assert results["test"] == expected["test"]
  assert steps(workdir, "best") == [6]
  assert len(glob.glob(os.path.join(workdir, "checkpoints", "superseded", "best_4_*"))) == 1
