"""Metadata-encoding statistics fitted on a prepared dataset's train split and saved with it.

Paper 000 imputes missing ages with the TRAINING median and z-scores them with training
statistics. For the real datasets these statistics are fitted once, when the dataset is
prepared, on exactly the examples of its train split, and written next to the records as
`<builder.data_dir>/metadata_encoder.json` (a metadata.MetadataEncoder), so every training run
and evaluation on that dataset encodes metadata the same way. pipeline.fit_preprocessor uses
it when present (a run's own copy in `<workdir>/data/` still wins, for resumed runs).

A train split the encoder cannot be fitted on (e.g. every training age blank) is an error that
names the dataset, where the encoder goes and the field's CSV column. The manual builders
check this while the train split is written (manual_base), so such a release fails to build
and is not left prepared; `write_encoder` only meets it for a dataset prepared before that check.
"""
import os
from typing import Mapping, Sequence

import numpy as np

from jaxmm.data import metadata
from jaxmm.data.atomic import write_text_atomic

ENCODER_FILE = "metadata_encoder.json"


def encoder_path(data_dir: str) -> str:
  """Where a prepared dataset's metadata encoder lives."""
  return os.path.join(os.fspath(data_dir), ENCODER_FILE)


READ_CHUNK = 16  # records decoded at once by read_columns: bounds its memory, keeps reads batched


def _decode(value):
  return value.decode("utf-8") if isinstance(value, bytes) else value


def _own(value):
  """`value`, an array copied: a decoded field may be a view into its record's buffer (image
  included), which a kept view would hold in memory."""
  return value.copy() if isinstance(value, np.ndarray) else value


def iter_records(source, chunk: int = READ_CHUNK):
  """Every record of a random-access source, in order, decoded `chunk` at a time (one batched
  read per chunk); a chunk is released before the next is decoded."""
  for start in range(0, len(source), chunk):
    positions = list(range(start, min(start + chunk, len(source))))
    yield from (source.__getitems__(positions) if hasattr(source, "__getitems__")
                else [source[i] for i in positions])


def read_columns(source, fields: Sequence[str], chunk: int = READ_CHUNK) -> dict:
  """{field: object array of every record's value (bytes decoded to str)} of a random-access
  source, in source order: np.array(values, dtype=object), so a fixed-shape array field is
  [N, ...].

  Only `fields` are kept from each record, so peak memory is the values plus one chunk of
  decoded records, not the decoded split (images and masks included).
  """
  values = {f: [] for f in fields}
  for record in iter_records(source, chunk):
    for f, column in values.items():
      column.append(_own(_decode(record[f])))
  return {f: np.array(column, dtype=object) for f, column in values.items()}


def fit_error_message(builder, error, num_train: int, data_dir: str, source: str,
                      remedy: str) -> str:
  """The error of a metadata encoder that cannot be fitted on the `num_train` examples of a
  builder's train split: the dataset and config, the encoder's path under `data_dir`, the
  metadata.FieldError, the CSV column (builder.META_COLUMNS) of its field in `source`, and
  what to do (`remedy`)."""
  column = getattr(builder, "META_COLUMNS", {}).get(error.field, error.field)
  return (f"{builder.name}/{builder.builder_config.name}: cannot fit the metadata encoder "
          f"({encoder_path(data_dir)}) on the {num_train} example(s) of the train split: "
          f"{error}. The field {error.field!r} is read from column {column!r} of {source}; "
          f"{remedy}")


def fit_train_encoder(builder, vocabularies: Mapping[str, Sequence[str]]):
  """MetadataEncoder fitted on the train split of a prepared builder (strict categories)."""
  fields = (metadata.AGE_FIELD,) + tuple(vocabularies)
  return metadata.MetadataEncoder.fit(read_columns(builder.as_data_source("train"), fields),
                                      vocabularies=vocabularies, strict=True)


def describe(encoder, num_train: int) -> str:
  """One line on the age statistics (the imputed count is what paper 000 reports)."""
  return (f"age: {encoder.num_imputed} of {num_train} training ages missing, imputed with the "
          f"training median {encoder.age_median:g}; z-score mean {encoder.age_mean:.3f}, "
          f"std {encoder.age_std:.3f}")


def write_encoder(builder, vocabularies: Mapping[str, Sequence[str]]) -> None:
  """Fits and writes the dataset's encoder unless `metadata_encoder.json` already exists."""
  path = encoder_path(builder.data_dir)
  if os.path.exists(path):
    return
  num_train = builder.info.splits["train"].num_examples
  try:
    encoder = fit_train_encoder(builder, vocabularies)
  except metadata.FieldError as error:
    source = getattr(builder, "CSV_FILE", "the release")
    raise ValueError(fit_error_message(
        builder, error, num_train, builder.data_dir, source,
        f"fix the release, delete the prepared dataset {builder.data_dir} and prepare it "
        f"again")) from None
  write_text_atomic(path, encoder.to_json())
  print(f"{builder.name}/{builder.builder_config.name}: {describe(encoder, num_train)} "
        f"-> {path}", flush=True)


def read_encoder(data_dir: str):
  """The saved MetadataEncoder of a prepared dataset, or None when it has none."""
  path = encoder_path(data_dir)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return metadata.MetadataEncoder.from_json(f.read())
