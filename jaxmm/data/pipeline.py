"""Input pipeline: tfds data sources -> grain -> batches of the Batch contract.

A training batch for step `s` is a pure function of (seed, s): the shuffled, repeated
example stream is random-access, so resuming at step `s` needs nothing but `s`. Each process
reads only its share of every global batch (interleaved by process index), so the global
batch assembled across processes is the same as one process would see.
"""
import dataclasses
import json
import os
from typing import Callable, Iterator, Optional

import grain
import numpy as np

from jaxmm.data import builders
from jaxmm.data.atomic import write_text_atomic
from jaxmm.data import metadata as metadata_lib
from jaxmm.data import saved_statistics
from jaxmm.data import tokenizer as tokenizer_lib
from jaxmm.train import config_lib

MODEL_KEYS = ("image", "meta", "text_ids", "text_mask")
DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), "jaxmm_datasets")


@dataclasses.dataclass
class TaskInfo:
  """What the model and metrics need to know about the dataset and task."""
  num_classes: int
  class_names: list
  multilabel: bool
  split_sizes: dict
  meta_dim: int = 0
  vocab_size: int = 0
  image_shape: tuple = ()


# Raw record fields kept next to a split's predictions for subgroup analysis, when present.
GROUP_FIELDS = ("lesion_id", "patient_id", "study_id", "sex", "age", "localization", "site",
                "malignant")


def group_fields(data_config, builder) -> tuple:
  """GROUP_FIELDS the dataset has, except the task's own label key (saved as `label`)."""
  features = builder.info.features
  return tuple(f for f in GROUP_FIELDS if f in features and f != data_config.label_key)


def data_dir(data_config) -> str:
  """config.data.data_dir, else $JAXMM_DATA_DIR, else DEFAULT_DATA_DIR, with "~" expanded (a
  shell leaves it in `--config.data.data_dir=~/x` and in a quoted variable: tfds wrote to a
  literal `./~/x`)."""
  path = data_config.get("data_dir") or os.environ.get("JAXMM_DATA_DIR") or DEFAULT_DATA_DIR
  return os.path.expanduser(path)


def configured_builder(data_config):
  """The configured tfds builder, not prepared, with the data config's fields checked
  against its records' features (which a builder knows before it is prepared)."""
  overrides = dict(data_config.get("builder_overrides", None) or {})
  builder = builders.get_builder(data_config.name, config=data_config.get("builder_config"),
                                 data_dir=data_dir(data_config),
                                 manual_dir=data_config.get("manual_dir", None), **overrides)
  check_fields(data_config, builder)
  return builder


def load_builder(data_config):
  """Prepares (builds once, then reuses) the configured tfds builder.

  Real datasets read their release from `data_config.manual_dir` (None: $JAXMM_MANUAL_DIR/
  <name>, else <data_dir>/manual/<name>; see jaxmm.data.manual_dir).
  """
  return builders.prepare(configured_builder(data_config))


def configured_fields(data_config) -> list[tuple[str, str]]:
  """(config key, record field) of every field the data config names: label_key, meta_fields
  (with use_meta), text_key (with use_text) and keep_fields (a config that only names the
  dataset, to build or read it, names none)."""
  named = [("label_key", data_config.label_key)] if data_config.get("label_key") else []
  if data_config.get("use_meta", False):
    named += [("meta_fields", f) for f in data_config.get("meta_fields", ()) or ()]
  if data_config.get("use_text", False):
    named.append(("text_key", data_config.get("text_key", "")))
  named += [("keep_fields", f) for f in data_config.get("keep_fields", ()) or ()]
  return named


def check_fields(data_config, builder) -> None:
  """ValueError naming the first field of the data config that the dataset's records lack
  (a typo such as label_key='lable' used to surface as a bare KeyError deep in a reader)."""
  features = list(builder.info.features)
  for key, field in configured_fields(data_config):
    if field not in features:
      raise ValueError(f"config.data.{key} names {field!r}, which is not a field of "
                       f"{builder.name}'s records; its fields: {sorted(features)}."
                       f"{config_lib.closest(str(field), features)}")


def _decode(value):
  return value.decode("utf-8") if isinstance(value, bytes) else value


def stack_examples(examples: list) -> dict:
  """Stacks a list of raw tfds records into a dict of arrays (text fields become str arrays)."""
  out = {}
  for key in examples[0]:
    values = [ex[key] for ex in examples]
    if isinstance(values[0], (bytes, str)):
      out[key] = np.array([_decode(v) for v in values], dtype=object)
    else:
      out[key] = stack_field(key, [np.asarray(v) for v in values], examples)
  return out


def read_fields(source, fields: tuple) -> dict:
  """{field: object array} of every record of a data source (for fitting statistics), read a
  chunk of records at a time so the decoded split never sits in memory
  (saved_statistics.read_columns)."""
  return saved_statistics.read_columns(source, fields)


# The field that names one example, first found: derm / ISIC images, MIMIC-CXR images, ISIC
# 2020 CSV names, (synthetic) CXR studies, generic. Errors, saliency shards and SHAP use it.
ID_FIELDS = ("image_id", "dicom_id", "image_name", "study_id", "example_id")


def check_labels(labels, info: "TaskInfo", where: str, ids=None) -> None:
  """Raises ValueError at the first label outside the task (multiclass: [0, num_classes);
  multilabel: K columns of 1 / 0 / -1 / -2), naming `where`, the row and its id."""
  labels = np.asarray(labels)
  if info.multilabel:
    if labels.ndim != 2 or labels.shape[1] != info.num_classes:
      raise ValueError(f"{where}: labels have shape {labels.shape}, expected [N, "
                       f"{info.num_classes}] for the labels {info.class_names}")
    bad, valid = ~np.isin(labels, (-2, -1, 0, 1)), "1 / 0 / -1 / -2"
  else:
    bad, valid = (labels < 0) | (labels >= info.num_classes), f"0..{info.num_classes - 1}"
  if bad.any():
    row = int(np.argwhere(bad)[0][0])
    named = f" ({ids[row]})" if ids is not None else ""
    raise ValueError(
        f"{where}: label {labels[row].tolist()} of example {row}{named} is outside {valid} "
        f"(the task has {info.num_classes} classes {info.class_names}); check "
        f"config.data.label_key and config.data.label_names")


class BadBatch(ValueError):
  """A batch the model must not see, found before it reaches the model.

  Attributes: `field` (the batch key), `positions` (the bad rows of the batch) and `ids`
  ("<id field> <value>" of each of those rows; None when the batch has no id field), made from
  `row_ids`, the ids of every row of the batch. A caller that knows more (the training step,
  the split) re-raises `error.at(f"step {step}")`.
  """

  def __init__(self, message: str, field: str, positions, row_ids=None):
    super().__init__(message)
    self.field, self.positions = field, tuple(int(p) for p in positions)
    self.ids = None if row_ids is None else tuple(row_ids[p] for p in self.positions)

  def at(self, where: str) -> "BadBatch":
    """The same error, its message prefixed with `where` (e.g. "step 12")."""
    error = type(self).__new__(type(self))
    error.__dict__.update(self.__dict__)
    error.args = (f"{where}: {self}",)
    return error

  def __reduce__(self):  # keeps the type and attributes across worker processes
    return _rebuild_bad_batch, (type(self), self.args, self.__dict__)


def _rebuild_bad_batch(cls, args, state):
  error = cls.__new__(cls)
  error.args = args
  error.__dict__.update(state)
  return error


class ImageShapeMismatch(BadBatch):
  """Images whose shape is not the configured [size, size, channels]."""


class NonFiniteInput(BadBatch):
  """NaN or inf in a float model input; `count` is the number of non-finite values."""

  def __init__(self, message: str, field: str, positions, row_ids=None, count: int = 0):
    super().__init__(message, field, positions, row_ids)
    self.count = int(count)


MAX_NAMED = 5  # examples named one by one in a bad-batch message


def batch_ids(raw) -> list | None:
  """"<id field> <value>" per example of a stacked raw batch (or a list of records), from the
  first ID_FIELDS the batch has; None when it has none."""
  keys = raw[0].keys() if isinstance(raw, list) else raw.keys()
  field = next((f for f in ID_FIELDS if f in keys), None)
  if field is None:
    return None
  values = [r[field] for r in raw] if isinstance(raw, list) else raw[field]
  return [f"{field} {_decode(v)}" for v in values]


def name_examples(positions, ids=None) -> str:
  """'examples 3 (image_id X), 7 (image_id Y)', the first MAX_NAMED of them and the count."""
  named = [f"{p} ({ids[p]})" if ids is not None else str(p) for p in positions[:MAX_NAMED]]
  more = f" and {len(positions) - MAX_NAMED} more" if len(positions) > MAX_NAMED else ""
  word = "example" if len(positions) == 1 else "examples"
  return f"{word} {', '.join(named)}{more} of the batch"


def _dims(shape) -> str:
  return "x".join(str(d) for d in shape) or "a scalar"


def stack_field(key: str, arrays: list, examples: list) -> np.ndarray:
  """np.stack of one field's arrays; BadBatch naming the examples whose shape differs from the
  first example's."""
  shapes = [a.shape for a in arrays]
  odd = [i for i, shape in enumerate(shapes) if shape != shapes[0]]
  if odd:
    ids = batch_ids(examples)
    error = ImageShapeMismatch if key == "image" else BadBatch
    raise error(f"field {key!r} of {name_examples(odd, ids)} is "
                f"{', '.join(sorted({_dims(shapes[i]) for i in odd}))}, while example 0 is "
                f"{_dims(shapes[0])}: a batch needs one shape", key, odd, ids)
  return np.stack(arrays)


def expected_image_shape(data_config, builder, channels: Optional[int] = None):
  """((H, W, C), where that comes from) for the dataset's images, or (None, "") without them.

  H, W: the size the dataset was built at (the builder config's image_size, or
  config.data.builder_overrides.image_size when set); C: `channels` (the model's
  config.model.image.in_channels) when given, else the dataset's. ValueError when the model's
  channel count is not the dataset's (grayscale chest X-rays have 1, dermoscopy RGB 3).
  """
  if "image" not in builder.info.features:
    return None, ""
  shape = tuple(builder.info.features["image"].shape)
  override = (data_config.get("builder_overrides", None) or {}).get("image_size")
  size = (f"config.data.builder_overrides.image_size={override}" if override else
          f"the image size of {data_config.name}/{builder.builder_config.name}")
  if channels is not None and channels != shape[-1]:
    raise ValueError(f"config.model.image.in_channels is {channels} but {data_config.name}'s "
                     f"images are {_dims(shape)} ({shape[-1]} channel(s)); set "
                     f"--config.model.image.in_channels={shape[-1]}")
  depth = (f"config.model.image.in_channels={channels}" if channels is not None else
           f"{shape[-1]} channel(s) in {data_config.name}")
  return shape, f"{size}, {depth}"


def check_images(images, expected: tuple, origin: str, ids=None) -> None:
  """ImageShapeMismatch naming the examples whose image (a stacked [N, H, W, C] array or a
  list of arrays) is not `expected` (H, W, C)."""
  shapes = ([np.shape(image) for image in images] if isinstance(images, list) or
            images.dtype == object else [images.shape[1:]] * len(images))
  bad = [i for i, shape in enumerate(shapes) if tuple(shape) != tuple(expected)]
  if bad:
    found = ", ".join(sorted({_dims(shapes[i]) for i in bad}))
    noun, verb = ("image", "is") if len(bad) == 1 else ("images", "are")
    raise ImageShapeMismatch(
        f"{noun} of {name_examples(bad, ids)} {verb} {found}, the config expects "
        f"{_dims(expected)} ({origin})", "image", bad, ids)


NONFINITE_HINTS = {
    "image": "check config.data.image_mean / image_std (a std of 0 divides by zero)",
    "meta": "check the metadata values and the encoder's statistics "
            "(<workdir>/data/metadata_encoder.json: a std of 0?)",
}


def check_finite(value: np.ndarray, field: str, ids=None) -> None:
  """NonFiniteInput naming `field`, the examples and the count when a float input holds NaN or
  inf (a single pass over the batch when it is finite)."""
  value = np.asarray(value)
  if not np.issubdtype(value.dtype, np.floating):
    return
  with np.errstate(over="ignore", invalid="ignore"):
    if np.isfinite(value.sum()):
      return
  finite = np.isfinite(value).reshape(len(value), -1)
  bad = np.flatnonzero(~finite.all(1))
  if not len(bad):
    return  # the sum overflowed, every value is finite
  count, nans = int((~finite).sum()), int(np.isnan(value).sum())
  hint = NONFINITE_HINTS.get(field, "")
  raise NonFiniteInput(
      f"non-finite input {field!r}: {count} value(s) ({nans} NaN, {count - nans} inf) in "
      f"{name_examples(list(bad), ids)}" + (f"; {hint}" if hint else ""),
      field, bad, ids, count)


class Preprocessor:
  """Turns a stacked raw batch into the Batch contract (float images, encoded meta, tokens).

  Fitted state (metadata statistics) comes from the training split only and is saved to the
  workdir so evaluation and resumed runs reuse exactly the same encoding.
  """

  def __init__(self, data_config, meta_encoder=None, tokenizer=None, image_shape=None,
               image_origin: str = "", id_field: Optional[str] = None):
    self.config = data_config
    self.meta_encoder = meta_encoder
    self.tokenizer = tokenizer
    self.mean = np.asarray(data_config.image_mean, np.float32)
    self.std = np.asarray(data_config.image_std, np.float32)
    self.task = None  # the TaskInfo, once known: batches' labels are then checked against it
    # Images are checked against (H, W, C) when known; `image_origin` says where it comes from.
    self.image_shape, self.image_origin = image_shape, image_origin
    self.id_field = id_field  # read with every batch so errors can name the examples

  def __call__(self, raw: dict) -> dict:
    cfg = self.config
    batch = {}
    ids = batch_ids(raw)
    if "image" in raw:
      if self.image_shape is not None:
        check_images(raw["image"], self.image_shape, self.image_origin, ids)
      image = np.asarray(raw["image"]).astype(np.float32) / 255.0
      batch["image"] = (image - self.mean) / self.std
    if self.meta_encoder is not None:
      batch["meta"] = self.meta_encoder.transform(
          {f: raw[f] for f in self.meta_encoder.field_names})
    if self.tokenizer is not None:
      texts = [tokenizer_lib.clean_report(t) for t in raw[cfg.text_key]]
      tokens = self.tokenizer(texts, padding="max_length", truncation=True,
                              max_length=cfg.max_text_len, return_tensors="np")
      batch["text_ids"] = tokens["input_ids"].astype(np.int32)
      batch["text_mask"] = tokens["attention_mask"].astype(np.int32)
    batch["label"] = raw[cfg.label_key].astype(np.int32)
    if self.task is not None:
      check_labels(batch["label"], self.task, "a batch", ids)
    for key in MODEL_KEYS:
      if key in batch:
        check_finite(batch[key], key, ids)
    if "roi_mask" in raw:
      batch["roi_mask"] = raw["roi_mask"]
    for key in cfg.get("keep_fields", ()):
      if key in raw:
        batch[key] = raw[key]
    return batch


def statistics_fields(data_config) -> tuple:
  """The training-split fields setup fits statistics on: the label and the metadata fields."""
  return (data_config.label_key,) + tuple(data_config.get("meta_fields", ()) or ())


def dataset_encoder(data_config, builder):
  """The metadata encoder saved with the dataset (fitted on its train split when it was
  prepared; saved_statistics), or None; ValueError if its fields are not `meta_fields`."""
  encoder = saved_statistics.read_encoder(builder.data_dir)
  if encoder is not None and tuple(data_config.meta_fields) != encoder.field_names:
    raise ValueError(f"config.data.meta_fields {tuple(data_config.meta_fields)} differ from the "
                     f"fields of {data_config.name}'s saved metadata statistics "
                     f"{encoder.field_names} ({saved_statistics.encoder_path(builder.data_dir)})")
  return encoder


def load_meta_encoder(data_config, builder, workdir: Optional[str],
                      train_columns: Optional[Callable[[], dict]] = None):
  """The run's metadata encoder (see fit_preprocessor), its workdir copy written."""
  path = os.path.join(workdir, "data", "metadata_encoder.json") if workdir else None
  if path and os.path.exists(path):
    with open(path) as f:
      return metadata_lib.MetadataEncoder.from_json(f.read())
  meta_encoder = dataset_encoder(data_config, builder)
  if meta_encoder is None:
    if train_columns is None:
      train = read_fields(builder.as_data_source("train"), tuple(data_config.meta_fields))
    else:
      train = train_columns()
    meta_encoder = metadata_lib.MetadataEncoder.fit(
        {f: train[f] for f in data_config.meta_fields})
  if path:
    write_text_atomic(path, meta_encoder.to_json())
  return meta_encoder


def fit_preprocessor(data_config, builder, workdir: Optional[str],
                     train_columns: Optional[Callable[[], dict]] = None,
                     tokenizer_dir: Optional[str] = None,
                     image_channels: Optional[int] = None) -> Preprocessor:
  """Fits (or reloads from `workdir/data/`) the metadata encoder; loads the tokenizer.

  The encoder is, first found: the run's copy `workdir/data/metadata_encoder.json`, the one
  saved with the dataset (real datasets: fitted on its train split when prepared), or one
  fitted here on the train split; the workdir copy is then written.

  `train_columns()` returns the training split's `statistics_fields` (read once by the caller,
  who also needs the labels); by default they are read here. The tokenizer is the dataset's
  vocabulary, or with `tokenizer_dir` (a pretrained text encoder's Hugging Face directory,
  `model.text.init_from`) that model's own tokenizer.

  Every batch's images are then checked against expected_image_shape (with `image_channels`,
  the model's config.model.image.in_channels, checked against the dataset here), and every
  batch reads the dataset's id field (ID_FIELDS) so bad-batch errors name the examples.
  """
  meta_encoder = None
  if data_config.get("use_meta", False):
    meta_encoder = load_meta_encoder(data_config, builder, workdir, train_columns)
  tokenizer = None
  if data_config.get("use_text", False):
    tokenizer = (tokenizer_lib.load_pretrained_tokenizer(tokenizer_dir) if tokenizer_dir
                 else tokenizer_lib.load_tokenizer(builder.data_dir))
  image_shape, origin = expected_image_shape(data_config, builder, image_channels)
  id_field = next((f for f in ID_FIELDS if f in builder.info.features), None)
  return Preprocessor(data_config, meta_encoder, tokenizer, image_shape, origin, id_field)


def task_info(data_config, builder, preprocessor: Preprocessor) -> TaskInfo:
  """Reads class names and sizes from the builder's DatasetInfo."""
  info = builder.info
  feature = info.features[data_config.label_key]
  multilabel = bool(data_config.get("multilabel", False))
  if multilabel:
    names = list(data_config.label_names)
  elif hasattr(feature, "names"):
    names = list(feature.names)
  else:
    names = list(data_config.label_names)
  sizes = {name: split.num_examples for name, split in info.splits.items()}
  meta_dim = preprocessor.meta_encoder.dim if preprocessor.meta_encoder is not None else 0
  vocab = preprocessor.tokenizer.vocab_size if preprocessor.tokenizer is not None else 0
  image_shape = tuple(info.features["image"].shape) if "image" in info.features else ()
  return TaskInfo(len(names), names, multilabel, sizes, meta_dim, vocab, image_shape)


def raw_fields(data_config, preprocessor: Preprocessor) -> tuple:
  """The record fields a batch is made from: image, label, metadata fields, report text, and
  the id field that names examples in errors."""
  fields = ["image", data_config.label_key]
  if preprocessor.meta_encoder is not None:
    fields += list(preprocessor.meta_encoder.field_names)
  if preprocessor.tokenizer is not None:
    fields.append(data_config.text_key)
  if getattr(preprocessor, "id_field", None):
    fields.append(preprocessor.id_field)
  return tuple(dict.fromkeys(fields))


def train_batches(source, preprocessor: Preprocessor, *, global_batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  num_threads: int = 2) -> Iterator[dict]:
  """Endless training batches (this process's share of each global batch), from `start_step`.

  Global batch `s` holds stream positions [s*B, (s+1)*B) of the per-epoch reshuffled stream,
  in that order whatever the process count: process p of P reads the p-th of its P equal
  blocks (and only those records), so runs on 1 or P processes see the same global batches.
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"process count {process_count}")
  if len(source) < global_batch_size:
    raise ValueError(f"training split has {len(source)} examples, fewer than one global batch "
                     f"({global_batch_size}); lower config.data.batch_size")
  fields = raw_fields(preprocessor.config, preprocessor)
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  ds = ds.map(lambda ex: {k: ex[k] for k in fields})  # lazy: only the sliced blocks are read
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True,
                batch_fn=stack_examples)
  ds = ds[process_index::process_count]
  ds = ds[start_step:].map(preprocessor)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=4)))


def eval_batches(source, preprocessor: Preprocessor, *, batch_size: int,
                 extra_fields: tuple = (), process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """One ordered pass over a split in fixed-size batches; the last one is padded.

  Each batch has `weight` (1.0 real, 0.0 padding) and `index` (position in the split, -1 for
  padding) so results can be matched back to examples, and the raw `extra_fields` (padded).
  Process p of P reads positions p, p + P, ...; every process yields the same number of
  batches, a process whose share has run out a batch of padding only, so steps that need all
  processes stay in step. A BadBatch names the split positions of its batch.
  """
  n = len(source)
  if n == 0:
    raise ValueError("evaluation split is empty")
  fields = tuple(dict.fromkeys(raw_fields(preprocessor.config, preprocessor) + tuple(extra_fields)))
  indices = np.arange(n)[process_index::process_count]
  for start in range(0, -(-n // (batch_size * process_count)) * batch_size, batch_size):
    chunk = indices[start:start + batch_size]
    positions = chunk if len(chunk) else np.zeros(1, np.int64)  # padding reads position 0
    try:
      batch, raw = read_examples(source, preprocessor, positions, fields, batch_size)
    except BadBatch as e:
      raise e.at(f"split positions {positions[0]}..{positions[-1]}") from e
    if not len(chunk):
      batch["weight"][:], batch["index"][:] = 0.0, -1
    extras = {f: raw[f] for f in extra_fields if f not in batch}
    if extras:
      extras["weight"] = np.ones(len(raw[fields[0]]), np.float32)
      batch.update({k: v for k, v in pad_batch(extras, batch_size).items() if k != "weight"})
    yield batch


def read_examples(source, preprocessor: Preprocessor, indices: np.ndarray, fields: tuple,
                  batch_size: int) -> tuple[dict, dict]:
  """(batch, raw) for the records at split positions `indices`: the preprocessed batch with
  `weight` and `index`, padded to `batch_size` (see eval_batches), and the raw `fields` of the
  records, stacked and unpadded."""
  positions = [int(i) for i in indices]
  # One batched read of the array_record source; each record is decoded once, not per field.
  records = (source.__getitems__(positions) if hasattr(source, "__getitems__")
             else [source[i] for i in positions])
  raw = stack_examples([{k: record[k] for k in fields} for record in records])
  batch = preprocessor(raw)
  batch["weight"] = np.ones(len(indices), np.float32)
  batch["index"] = np.asarray(indices).astype(np.int64)
  return pad_batch(batch, batch_size), raw


def pad_batch(batch: dict, size: int) -> dict:
  """Pads every array of a batch along axis 0 to `size` (weights 0, index -1)."""
  n = len(batch["weight"])
  if n == size:
    return batch
  out = {}
  for key, value in batch.items():
    pad = np.zeros((size - n,) + value.shape[1:], value.dtype) if value.dtype != object else \
        np.array([""] * (size - n), dtype=object)
    if key == "index":
      pad = pad - 1
    out[key] = np.concatenate([value, pad])
  return out


def to_jsonable(info: TaskInfo) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(info)))
