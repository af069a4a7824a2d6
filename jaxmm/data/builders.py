"""Registry of jaxmm's tfds builders and the helpers that configure, prepare and load them.

  builder = get_builder("synthetic_derm", config="small", data_dir=d, num_examples=120)
  prepare(builder)                        # builds once (array_record), later calls reuse it
  source = builder.as_data_source("train")  # random access, no TensorFlow

Everything is generated locally: nothing is downloaded. `prepare` also writes the side files a
dataset needs next to its records (the WordPiece `vocab.txt` of synthetic_cxr), rebuilding them
from the generator when missing.
"""
import os
from typing import Any, Callable

from jaxmm.data import synthetic_cxr
from jaxmm.data import synthetic_derm
from jaxmm.data import tokenizer

DATASETS = {
    "synthetic_derm": synthetic_derm.SyntheticDerm,
    "synthetic_cxr": synthetic_cxr.SyntheticCxr,
}
# Fields of a config that `get_builder` overrides accept (all builders share them).
CONFIG_FIELDS = ("num_examples", "image_size", "seed")


def _write_cxr_vocab(builder) -> None:
  path = os.path.join(builder.data_dir, tokenizer.VOCAB_FILE)
  if not os.path.exists(path):
    tokenizer.write_vocab(path, tokenizer.build_vocab(synthetic_cxr.vocabulary_texts()))


# name -> function(builder) writing side files into builder.data_dir after preparation.
SIDE_FILE_WRITERS: dict[str, Callable[[Any], None]] = {
    "synthetic_cxr": _write_cxr_vocab,
}


def builder_class(name: str):
  """The builder class registered under `name`; ValueError listing valid names otherwise."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}")
  return DATASETS[name]


def resolve_config(cls, config=None, **overrides):
  """A BuilderConfig of `cls` from a name, a config object or None, with field overrides.

  Overrides (num_examples, image_size, seed) start from the named/given config (default:
  the builder's DEFAULT_CONFIG_NAME) and give a custom config whose name encodes them.
  """
  unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
  if unknown:
    raise ValueError(f"unknown config overrides {unknown}; valid overrides: {list(CONFIG_FIELDS)}")
  predefined = {c.name: c for c in cls.BUILDER_CONFIGS}
  if config is None:
    config = cls.DEFAULT_CONFIG_NAME
  if isinstance(config, str):
    if config not in predefined:
      raise ValueError(f"unknown config {config!r} of {cls.name}; valid configs: "
                       f"{sorted(predefined)} (or pass overrides {list(CONFIG_FIELDS)})")
    config = predefined[config]
  values = {k: getattr(config, k) for k in CONFIG_FIELDS}
  if config.name in predefined and values != {
      k: getattr(predefined[config.name], k) for k in CONFIG_FIELDS}:
    raise ValueError(f"config named {config.name!r} differs from the predefined one; "
                     f"give custom configs their own name (e.g. {type(config).__name__}.custom)")
  values.update({k: v for k, v in overrides.items() if v is not None})
  if values != {k: getattr(config, k) for k in CONFIG_FIELDS}:
    config = type(config).custom(**values)
  return config


def get_builder(name: str, *, config=None, data_dir: str, **config_overrides):
  """An (unprepared) builder of dataset `name` writing under `data_dir`.

  Args:
    name: a key of DATASETS.
    config: a predefined config name ("small", "default", "large"), a config object, or None
      for the default config.
    data_dir: root folder of prepared datasets.
    **config_overrides: num_examples / image_size / seed; they produce a custom config whose
      name encodes them, e.g. "n120_px32_seed0".
  """
  cls = builder_class(name)
  return cls(config=resolve_config(cls, config, **config_overrides), data_dir=data_dir)


def prepare(builder):
  """Generates the dataset if not yet prepared (no downloads), then writes its side files."""
  builder.download_and_prepare()
  writer = SIDE_FILE_WRITERS.get(builder.name)
  if writer is not None:
    writer(builder)
  return builder


def load(name: str, split: str, *, config=None, data_dir: str, **config_overrides):
  """Prepares dataset `name` if needed and returns the random-access source of `split`."""
  builder = prepare(get_builder(name, config=config, data_dir=data_dir, **config_overrides))
  if split not in builder.info.splits:
    raise ValueError(f"unknown split {split!r} of {name}; valid splits: "
                     f"{sorted(builder.info.splits)}")
  return builder.as_data_source(split)


def config_values(builder) -> dict:
  """The (num_examples, image_size, seed) values of a builder's config, as a dict."""
  return {k: getattr(builder.builder_config, k) for k in CONFIG_FIELDS}

