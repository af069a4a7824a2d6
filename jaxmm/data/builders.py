"""Registry of jaxmm's tfds builders and the helpers that configure, prepare and load them.

  builder = get_builder("synthetic_derm", config="small", data_dir=d, num_examples=120)
  prepare(builder)                        # builds once (array_record), later calls reuse it
  source = builder.as_data_source("train")  # random access, no TensorFlow

  # a real dataset, read from the user's copy of the official release
  builder = get_builder("ham10000", data_dir=d, manual_dir="~/data/HAM10000", image_size=64)

The synthetic datasets are generated locally. The real ones (ham10000, isic2020, mimic_cxr)
need credentialed downloads that jaxmm never fetches: they are built from `manual_dir`, else
$JAXMM_MANUAL_DIR/<name>, else <data_dir>/manual/<name> (manual_dir.resolve), and only read
when the dataset is first built. Config overrides are the dataclass fields of the builder's
config class (`config_fields`): num_examples / image_size / seed for the synthetic builders,
image_size / skip_bad_rows / seed (+ split / views for mimic_cxr) for the real ones.

`prepare` also writes the side files a dataset needs next to its records, rebuilding them when
missing: the WordPiece `vocab.txt` (synthetic_cxr: from its generator; mimic_cxr: from its
training reports) and `metadata_encoder.json` (ham10000, isic2020: metadata statistics fitted
on the train split, saved_statistics).
"""
import dataclasses
import os
from typing import Any, Callable

import tensorflow_datasets as tfds

from jaxmm.data import ham10000
from jaxmm.data import isic2020
from jaxmm.data import manual_base
from jaxmm.data import manual_dir as manual_dir_lib
from jaxmm.data import mimic_cxr
from jaxmm.data import saved_statistics
from jaxmm.data import synthetic_cxr
from jaxmm.data import synthetic_derm
from jaxmm.data import tokenizer

DATASETS = {
    "synthetic_derm": synthetic_derm.SyntheticDerm,
    "synthetic_cxr": synthetic_cxr.SyntheticCxr,
    "ham10000": ham10000.Ham10000,
    "isic2020": isic2020.Isic2020,
    "mimic_cxr": mimic_cxr.MimicCxr,
}
# Fields every tfds BuilderConfig has; the others are a builder's own (overridable) fields.
_BASE_FIELDS = frozenset(f.name for f in dataclasses.fields(tfds.core.BuilderConfig))


def _write_cxr_vocab(builder) -> None:
  path = os.path.join(builder.data_dir, tokenizer.VOCAB_FILE)
  if not os.path.exists(path):
    tokenizer.write_vocab(path, tokenizer.build_vocab(synthetic_cxr.vocabulary_texts()))


def _write_report_vocab(builder) -> None:
  """vocab.txt of the training split's (already cleaned) reports."""
  path = os.path.join(builder.data_dir, tokenizer.VOCAB_FILE)
  if not os.path.exists(path):
    reports = saved_statistics.read_columns(builder.as_data_source("train"), ("report",))
    tokenizer.write_vocab(path, tokenizer.build_vocab(reports["report"]))


def _write_meta_encoder(builder) -> None:
  saved_statistics.write_encoder(builder, builder.META_VOCABULARIES)


# name -> function(builder) writing side files into builder.data_dir after preparation.
SIDE_FILE_WRITERS: dict[str, Callable[[Any], None]] = {
    "synthetic_cxr": _write_cxr_vocab,
    "mimic_cxr": _write_report_vocab,
    "ham10000": _write_meta_encoder,
    "isic2020": _write_meta_encoder,
}


def builder_class(name: str):
  """The builder class registered under `name`; ValueError listing valid names otherwise."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}")
  return DATASETS[name]


def needs_manual_dir(cls) -> bool:
  """Whether builder class `cls` reads a manual download."""
  return issubclass(cls, manual_base.ManualBuilder)


def config_fields(cls) -> tuple[str, ...]:
  """The overridable fields of `cls`'s config class, in declaration order."""
  config_cls = type(cls.BUILDER_CONFIGS[0])
  return tuple(f.name for f in dataclasses.fields(config_cls) if f.name not in _BASE_FIELDS)


def _values(config, fields) -> dict:
  return {k: getattr(config, k) for k in fields}


def _normalise(value, default):
  """Overrides given as lists (command line, JSON) become tuples when the field is a tuple."""
  return tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value


def resolve_config(cls, config=None, **overrides):
  """A BuilderConfig of `cls` from a name, a config object or None, with field overrides.

  Overrides (`config_fields(cls)`, e.g. num_examples / image_size / seed) start from the
  named/given config (default: the builder's DEFAULT_CONFIG_NAME) and give a custom config
  whose name encodes them; None values keep the config's value.
  """
  fields = config_fields(cls)
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"unknown config overrides {unknown} of {cls.name}; valid overrides: "
                     f"{list(fields)}")
  predefined = {c.name: c for c in cls.BUILDER_CONFIGS}
  if config is None:
    config = cls.DEFAULT_CONFIG_NAME
  if isinstance(config, str):
    if config not in predefined:
      raise ValueError(f"unknown config {config!r} of {cls.name}; valid configs: "
                       f"{sorted(predefined)} (or pass overrides {list(fields)})")
    config = predefined[config]
  values = _values(config, fields)
  if config.name in predefined and values != _values(predefined[config.name], fields):
    raise ValueError(f"config named {config.name!r} differs from the predefined one; "
                     f"give custom configs their own name (e.g. {type(config).__name__}.custom)")
  values.update({k: _normalise(v, values[k]) for k, v in overrides.items() if v is not None})
  if values != _values(config, fields):
    config = type(config).custom(**values)
  return config


def get_builder(name: str, *, config=None, data_dir: str, manual_dir: str | None = None,
                **config_overrides):
  """An (unprepared) builder of dataset `name` writing under `data_dir`.

  Args:
    name: a key of DATASETS.
    config: a predefined config name (e.g. "small", "default"), a config object, or None
      for the default config.
    data_dir: root folder of prepared datasets.
    manual_dir: the official release's folder (real datasets only; see manual_dir.resolve
      for the fallbacks when None).
    **config_overrides: fields of the builder's config (`config_fields`); they produce a
      custom config whose name encodes them, e.g. "n120_px32_seed0" or "px64_seed0_skip".
  """
  cls = builder_class(name)
  config = resolve_config(cls, config, **config_overrides)
  if needs_manual_dir(cls):
    return cls(config=config, data_dir=data_dir,
               manual_dir=manual_dir_lib.resolve(name, manual_dir, data_dir))
  if manual_dir is not None:
    raise ValueError(f"{name} is generated locally and reads no manual_dir (got {manual_dir!r})")
  return cls(config=config, data_dir=data_dir)


def prepare(builder, manual_dir: str | None = None):
  """Builds the dataset if not yet prepared, then writes its side files.

  Nothing is downloaded; a real dataset is read from `manual_dir` (default: the folder its
  builder was given by get_builder), and only when it is not prepared yet.
  """
  manual_dir = manual_dir or getattr(builder, "manual_dir", None)
  download_config = None
  if manual_dir is not None:
    download_config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
  builder.download_and_prepare(download_config=download_config)
  writer = SIDE_FILE_WRITERS.get(builder.name)
  if writer is not None:
    writer(builder)
  return builder


def load(name: str, split: str, *, config=None, data_dir: str, manual_dir: str | None = None,
         **config_overrides):
  """Prepares dataset `name` if needed and returns the random-access source of `split`."""
  builder = prepare(get_builder(name, config=config, data_dir=data_dir, manual_dir=manual_dir,
                                **config_overrides))
  if split not in builder.info.splits:
    raise ValueError(f"unknown split {split!r} of {name}; valid splits: "
                     f"{sorted(builder.info.splits)}")
  return builder.as_data_source(split)


def config_values(builder) -> dict:
  """The values of a builder's config fields (`config_fields`), as a dict."""
  return _values(builder.builder_config, config_fields(type(builder)))
