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
  return data_config.get("data_dir") or os.environ.get("JAXMM_DATA_DIR") or DEFAULT_DATA_DIR


def load_builder(data_config):
  """Prepares (builds once, then reuses) the configured tfds builder.

  Real datasets read their release from `data_config.manual_dir` (None: $JAXMM_MANUAL_DIR/
  <name>, else <data_dir>/manual/<name>; see jaxmm.data.manual_dir).
  """
  overrides = dict(data_config.get("builder_overrides", None) or {})
  builder = builders.get_builder(data_config.name, config=data_config.get("builder_config"),
                                 data_dir=data_dir(data_config),
                                 manual_dir=data_config.get("manual_dir", None), **overrides)
  builders.prepare(builder)
  return builder


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
      out[key] = np.stack([np.asarray(v) for v in values])
  return out


def read_fields(source, fields: tuple) -> dict:
  """Reads named fields of every record of a data source (for fitting statistics)."""
  rows = [source[i] for i in range(len(source))]
  return {f: np.array([_decode(r[f]) for r in rows], dtype=object) for f in fields}


ID_FIELDS = ("image_id", "dicom_id", "lesion_id", "study_id", "patient_id")


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


class Preprocessor:
  """Turns a stacked raw batch into the Batch contract (float images, encoded meta, tokens).

  Fitted state (metadata statistics) comes from the training split only and is saved to the
  workdir so evaluation and resumed runs reuse exactly the same encoding.
  """

  def __init__(self, data_config, meta_encoder=None, tokenizer=None):
    self.config = data_config
    self.meta_encoder = meta_encoder
    self.tokenizer = tokenizer
    self.mean = np.asarray(data_config.image_mean, np.float32)
    self.std = np.asarray(data_config.image_std, np.float32)
    self.task = None  # the TaskInfo, once known: batches' labels are then checked against it

  def __call__(self, raw: dict) -> dict:
    cfg = self.config
    batch = {}
    if "image" in raw:
      image = raw["image"].astype(np.float32) / 255.0
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
      id_field = next((f for f in ID_FIELDS if f in raw), None)
      check_labels(batch["label"], self.task, "a batch",
                   [f"{id_field} {v}" for v in raw[id_field]] if id_field else None)
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
                     tokenizer_dir: Optional[str] = None) -> Preprocessor:
  """Fits (or reloads from `workdir/data/`) the metadata encoder; loads the tokenizer.

  The encoder is, first found: the run's copy `workdir/data/metadata_encoder.json`, the one
  saved with the dataset (real datasets: fitted on its train split when prepared), or one
  fitted here on the train split; the workdir copy is then written.

  `train_columns()` returns the training split's `statistics_fields` (read once by the caller,
  who also needs the labels); by default they are read here. The tokenizer is the dataset's
  vocabulary, or with `tokenizer_dir` (a pretrained text encoder's Hugging Face directory,
  `model.text.init_from`) that model's own tokenizer.
  """
  meta_encoder = None
  if data_config.get("use_meta", False):
    meta_encoder = load_meta_encoder(data_config, builder, workdir, train_columns)
  tokenizer = None
  if data_config.get("use_text", False):
    tokenizer = (tokenizer_lib.load_pretrained_tokenizer(tokenizer_dir) if tokenizer_dir
                 else tokenizer_lib.load_tokenizer(builder.data_dir))
  return Preprocessor(data_config, meta_encoder, tokenizer)


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
  """The record fields a batch is made from: image, label, metadata fields, report text."""
  fields = ["image", data_config.label_key]
  if preprocessor.meta_encoder is not None:
    fields += list(preprocessor.meta_encoder.field_names)
  if preprocessor.tokenizer is not None:
    fields.append(data_config.text_key)
  return tuple(dict.fromkeys(fields))


def train_batches(source, preprocessor: Preprocessor, *, global_batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  num_threads: int = 2) -> Iterator[dict]:
  """Endless training batches (this process's share of each global batch), from `start_step`.

  Global batch `s` holds stream positions [s*B, (s+1)*B) of the per-epoch reshuffled stream;
  process p reads positions congruent to p mod process_count.
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"process count {process_count}")
  if len(source) < global_batch_size:
    raise ValueError(f"training split has {len(source)} examples, fewer than one global batch "
                     f"({global_batch_size}); lower config.data.batch_size")
  fields = raw_fields(preprocessor.config, preprocessor)
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  ds = ds[process_index::process_count]
  ds = ds.map(lambda ex: {k: ex[k] for k in fields})
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True,
                batch_fn=stack_examples)
  ds = ds[start_step:].map(preprocessor)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=4)))


def eval_batches(source, preprocessor: Preprocessor, *, batch_size: int,
                 extra_fields: tuple = (), process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """One ordered pass over a split in fixed-size batches; the last one is padded.

  Each batch has `weight` (1.0 real, 0.0 padding) and `index` (position in the split, -1 for
  padding) so results can be matched back to examples, and the raw `extra_fields` (padded).
  """
  n = len(source)
  if n == 0:
    raise ValueError("evaluation split is empty")
  fields = tuple(dict.fromkeys(raw_fields(preprocessor.config, preprocessor) + tuple(extra_fields)))
  indices = np.arange(n)[process_index::process_count]
  for start in range(0, len(indices), batch_size):
    batch, raw = read_examples(source, preprocessor, indices[start:start + batch_size], fields,
                               batch_size)
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
