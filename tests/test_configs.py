"""Every config file loads, every variant of it runs a smoke step; bad names list valid ones."""
import glob
import os
import subprocess
import sys

import pytest

from jaxmm.train import config_lib, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def all_variants():
  for path in CONFIG_FILES:
    config = config_lib.load_config_file(path)
    for variant in config.variants:
      yield os.path.basename(path)[:-3], variant


def test_there_are_configs_for_both_datasets():
  names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
  assert {"synthetic_derm", "synthetic_cxr"} <= names


@pytest.mark.parametrize("name,variant", list(all_variants()))
def test_config_variant_runs_a_smoke_step(smoke_config, tmp_path, name, variant):
  config = smoke_config(name, f"model={variant}")
  config.train.num_steps = 1
  config.train.eval_every_steps = 1
  config.train.checkpoint_every_steps = 1
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["final_step"] == 1
  headline = "roc_auc" if config.data.multilabel else "macro_f1"
  assert headline in results["test"]


def test_config_docstrings_hold_a_command():
  for path in CONFIG_FILES:
    with open(path) as f:
      assert "python -m jaxmm.main --config=configs/" in f.read(), path


def test_unknown_variant_lists_valid_ones():
  with pytest.raises(ValueError, match=r"valid variants: \['concat', 'film', 'image', 'late', 'meta'\]"):
    config_lib.load_config_file(os.path.join(REPO, "configs", "synthetic_derm.py") + ":model=concatt")


def test_unknown_config_argument_suggests_closest():
  with pytest.raises(ValueError, match="Did you mean 'smoke'"):
    config_lib.load_config_file(os.path.join(REPO, "configs", "synthetic_derm.py") + ":smok")


def main_cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxmm.main", *args], capture_output=True,
                        text=True, cwd=REPO, timeout=300)


def test_cli_misspelt_override_lists_valid_keys(tmp_path):
  out = main_cli("--config=configs/synthetic_derm.py:smoke", f"--workdir={tmp_path}",
                 "--config.model.fusionn=late")
  assert out.returncode != 0
  assert "config.model has no key 'fusionn'" in out.stderr
  assert "Did you mean 'fusion'?" in out.stderr and "'modalities'" in out.stderr


def test_cli_unknown_mode_lists_valid_modes(tmp_path):
  out = main_cli("--config=configs/synthetic_derm.py:smoke", f"--workdir={tmp_path}",
                 "--mode=trian")
  assert out.returncode != 0 and "pipeline" in out.stderr and "train" in out.stderr


def test_cxr_freeze_keeps_paper_001_layers_fixed(smoke_config, tmp_path):
  import jax
  import numpy as np
  from jaxmm.train import checkpointing
  config = smoke_config("synthetic_cxr", "model=joint,freeze")
  config.model.image.encoder = "resnet18"
  config.model.image.width = 8
  config.train.num_steps = 2
  run = loop.setup_run(config, str(tmp_path))
  try:
    start = jax.device_get(loop.create_state(run).params)
  finally:
    run.checkpointer.close()
  loop.train_and_evaluate(config, str(tmp_path))
  run = loop.setup_run(config, str(tmp_path))
  try:
    end = jax.device_get(run.checkpointer.restore(
        checkpointing.abstract_like(loop.create_state(run)))[0].params)
  finally:
    run.checkpointer.close()
  for name in ("conv1", "bn1", "layer1", "layer2"):
    jax.tree.map(np.testing.assert_array_equal, start["image"][name], end["image"][name])
  jax.tree.map(np.testing.assert_array_equal, start["text"], end["text"])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                         start["image"]["layer3"], end["image"]["layer3"]))
  assert any(changed)
