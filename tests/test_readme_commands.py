"""Every `--config.key=value` override the README shows parses as absl parses it, for a
config that has the key, and every `config.key` it names exists: a documented override of a
None field (data.data_dir), or of a key no config had (data.prefetch_to_device,
saliency.options.scorecam.score), failed for a user."""
import os
import re

import pytest

from jaxmm.train import config_lib
from tests.test_configs import REPO, parsed

README = open(os.path.join(REPO, "README.md")).read()
CONFIGS = ("synthetic_derm.py", "synthetic_cxr.py", "ham10000.py", "isic2020.py",
           "mimic_cxr.py")
OVERRIDES = sorted(set(re.findall(r"--config\.([A-Za-z0-9_.]+)=(\"[^\"]*\"|'[^']*'|[^\s`]+)",
                                  README)))
KEYS = sorted(set(re.findall(r"`config\.([A-Za-z0-9_.]+)`", README)) - {"json"})
# Values the README leaves open ("...", "DIR", "<Hugging Face directory>"), by key.
SAMPLES = {"num_examples": "100", "views": "('PA',)", "data_dir": "/tmp/jaxmm_data",
           "manual_dir": "/tmp/jaxmm_manual", "init_from": "/tmp/jaxmm_weights"}


def configs_with(key: str) -> list:
  """The CONFIGS (paths) that have the dotted key `key`."""
  found = []
  for name in CONFIGS:
    path = os.path.join(REPO, "configs", name)
    try:
      config_lib.check_override_paths(config_lib.load_config_file(path), [f"--config.{key}=1"])
    except ValueError as e:
      if "has no key" not in str(e):
        raise
      continue
    found.append(name)
  return found


def test_the_readme_shows_overrides_and_keys():
  assert len(OVERRIDES) > 15 and len(KEYS) > 10


@pytest.mark.parametrize("key, value", OVERRIDES)
def test_a_documented_override_parses(key, value):
  names = configs_with(key)
  assert names, f"--config.{key}: no config has this key"
  if value == "..." or value.isupper() or value.startswith("<"):
    assert key.rsplit(".", 1)[-1] in SAMPLES, f"--config.{key}={value}: add a sample value"
    value = SAMPLES[key.rsplit(".", 1)[-1]]
  config = parsed(names[0], f"--config.{key}={value.strip(chr(34))}")
  node = config
  for part in key.split("."):
    node = node[part]
  assert node is not None, key


@pytest.mark.parametrize("key", KEYS)
def test_a_documented_key_exists(key):
  assert configs_with(key), f"config.{key}: no config has this key"
