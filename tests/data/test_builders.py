"""Registry, config resolution, prepare-twice reuse, load helper, no TensorFlow."""
import os
import subprocess
import sys

import pytest

from jaxmm.data import builders
from jaxmm.data import ham10000
from jaxmm.data import isic2020
from jaxmm.data import mimic_cxr
from jaxmm.data import synthetic_cxr
from jaxmm.data import synthetic_derm
from jaxmm.data import tokenizer


def test_registry_and_unknown_names(tmp_path):
  assert builders.DATASETS == {"synthetic_derm": synthetic_derm.SyntheticDerm,
                               "synthetic_cxr": synthetic_cxr.SyntheticCxr,
                               "ham10000": ham10000.Ham10000, "isic2020": isic2020.Isic2020,
                               "mimic_cxr": mimic_cxr.MimicCxr}
  with pytest.raises(ValueError, match=r"'mnist'.*synthetic_cxr.*synthetic_derm"):
    builders.get_builder("mnist", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"'huge'.*default.*large.*small"):
    builders.get_builder("synthetic_derm", config="huge", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"colour.*num_examples"):
    builders.get_builder("synthetic_derm", data_dir=str(tmp_path), colour=3)


def test_config_resolution(tmp_path):
  d = str(tmp_path)
  assert builders.get_builder("synthetic_derm", data_dir=d).builder_config.name == "default"
  small = builders.get_builder("synthetic_cxr", config="small", data_dir=d)
  assert builders.config_values(small) == {"num_examples": 800, "image_size": 32, "seed": 0}
  custom = builders.get_builder("synthetic_derm", config="small", data_dir=d, num_examples=50,
                                seed=3)
  assert custom.builder_config.name == "n50_px32_seed3"
  assert builders.config_values(custom) == {"num_examples": 50, "image_size": 32, "seed": 3}
  same = builders.get_builder("synthetic_derm", config="small", data_dir=d, num_examples=1200)
  assert same.builder_config.name == "small"  # overrides equal to the config change nothing
  obj = synthetic_derm.SyntheticDermConfig.custom(40, 16, 1)
  assert builders.get_builder("synthetic_derm", config=obj, data_dir=d).builder_config is obj
  clash = synthetic_derm.SyntheticDermConfig(name="small", num_examples=5)
  with pytest.raises(ValueError, match="differs from the predefined"):
    builders.get_builder("synthetic_derm", config=clash, data_dir=d)


def test_prepare_twice_reuses_and_load(tmp_path):
  d = str(tmp_path)
  builder = builders.prepare(builders.get_builder("synthetic_cxr", data_dir=d, num_examples=60,
                                                  image_size=16))
  info_file = os.path.join(builder.data_dir, "dataset_info.json")
  vocab_file = os.path.join(builder.data_dir, tokenizer.VOCAB_FILE)
  stamps = os.path.getmtime(info_file), os.path.getmtime(vocab_file)
  os.remove(vocab_file)  # a missing side file is rebuilt, the records are reused
  again = builders.prepare(builders.get_builder("synthetic_cxr", data_dir=d, num_examples=60,
                                                image_size=16))
  assert os.path.getmtime(info_file) == stamps[0]
  assert tokenizer.read_vocab(vocab_file) == {
      t: i for i, t in enumerate(tokenizer.build_vocab(synthetic_cxr.vocabulary_texts()))}
  assert sum(s.num_examples for s in again.info.splits.values()) == 60
  source = builders.load("synthetic_cxr", "validation", data_dir=d, num_examples=60,
                         image_size=16)
  assert len(source) == again.info.splits["validation"].num_examples
  with pytest.raises(ValueError, match=r"'dev'.*test.*train.*validation"):
    builders.load("synthetic_cxr", "dev", data_dir=d, num_examples=60, image_size=16)


def test_building_and_reading_never_imports_tensorflow(tmp_path):
  code = (
      "import sys\n"
      "from jaxmm.data import builders\n"
      f"s = builders.load('synthetic_derm', 'train', data_dir={str(tmp_path)!r},"
      " num_examples=40, image_size=16)\n"
      "assert s[0]['image'].shape == (16, 16, 3)\n"
      "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
