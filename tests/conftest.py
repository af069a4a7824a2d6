"""Shared fixtures: one data directory per test session, smoke configs."""
import functools
import os

import pytest

from jaxmm.train import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """Datasets built once per session (tiny smoke builder configs), shared by the tests."""
  path = str(tmp_path_factory.mktemp("datasets"))
  os.environ["JAXMM_DATA_DIR"] = path
  return path


def load_smoke_config(data_dir: str, name: str, arg: str = ""):
  """`configs/<name>.py:<arg>,smoke` on `data_dir`, no progress bars."""
  spec = os.path.join(CONFIG_DIR, f"{name}.py") + (f":{arg},smoke" if arg else ":smoke")
  config = config_lib.load_config_file(spec)
  config.data.data_dir = data_dir
  config.train.progress = False
  return config


@pytest.fixture
def smoke_config(data_dir):
  """Factory: load_smoke_config(name, arg) on the session data directory."""
  return functools.partial(load_smoke_config, data_dir)
