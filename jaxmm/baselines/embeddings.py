"""Per-example features of a trained jaxmm checkpoint, for the scikit-learn baselines.

`extract_embeddings(config, workdir)` restores the workdir's best checkpoint, runs the model in
inference mode over every example of each split (one jitted forward pass per batch) and
returns, per split, a dict of arrays with one row per example in split order:

  index             [N] int64, position in the split
  label             [N] int, the configured task label (`config.data.label_key`)
  label_multiclass  [N] int, the dataset's `label` ClassLabel (7 classes on HAM-style data),
                    when the dataset has one
  malignant         [N] int 0/1, when the dataset has it
  image             [N, D_img] the image encoder's pooled features ("image/pre_logits")
  text              [N, D_txt] the text encoder's pooled output ("text/pooled" or "text/cls",
                    whichever the encoder hands to the fusion head)
  meta_embedding    [N, D_emb] the metadata MLP's embedding ("meta/embedding")
  meta              [N, D_meta] float32, the ENCODED metadata input (24 columns on HAM-style
                    data), whenever the dataset has the metadata fields, also for models
                    without a metadata encoder (paper 000 uses it as the metadata features)
  sex, age, localization, site   raw grouping fields, when the dataset has them

Encoder features are present only for the model's modalities. The arrays are cached in
`<workdir>/baselines/embeddings/<split>.npz` with a `manifest.json` (checkpoint name and step,
the model's identity as checkpointing.model_identity gives it to every cache of a model's
outputs: a fingerprint of the checkpoint's saved files and a hash of the config sections that
change the model or its inputs (data, model, seed, train, optimizer); class and metadata
feature names, the metadata encoder's age mean and std, cached splits); a later call reuses
the splits the manifest lists when all of checkpoint name, step, fingerprint and hash match,
and computes the rest (all of them, stale files deleted, when one differs). The fingerprint is
what tells a retrained checkpoint saved at the same step from the old one.

With several processes every one takes part in restoring the checkpoint (orbax restores
together); process 0 alone then extracts every example on its own devices and writes the
cache and manifest, while the others wait for it and read the cache back.
"""
import json
import os
from typing import Optional, Sequence

import jax
import numpy as np
from tqdm import tqdm

from jaxmm.data import metadata as metadata_lib
from jaxmm.data import pipeline
from jaxmm.data.atomic import write_npz_atomic, write_text_atomic
from jaxmm.saliency import runner as saliency_runner
from jaxmm.train import checkpointing, distributed, loop, sharding

# Modality -> (the name given to its features here, the `out` keys holding the pooled features
# the encoder hands to the fusion head, first present wins).
ENCODER_FEATURES = {
    "image": ("image", ("image/pre_logits",)),
    "text": ("text", ("text/pooled", "text/cls")),
    "meta": ("meta_embedding", ("meta/embedding",)),
}
MULTICLASS_FIELD, BINARY_FIELD = "label", "malignant"
BINARY_NAMES = ("benign", "malignant")
SPLITS = ("train", "validation", "test")


def cache_dir(workdir: str) -> str:
  return os.path.join(workdir, "baselines", "embeddings")


def text_feature_key(model) -> str:
  """The `out` key of the text features the fusion head receives."""
  return "text/pooled" if getattr(model.text, "use_pooler", False) else "text/cls"


def feature_keys(model) -> dict[str, str]:
  """{saved name: `out` key} of the pooled features of the model's encoders."""
  keys = {}
  for modality in model.modalities:
    name, candidates = ENCODER_FEATURES[modality]
    keys[name] = text_feature_key(model) if modality == "text" else candidates[0]
  return keys


def make_feature_fn(model, keys: dict[str, str]):
  """A jitted (variables, batch) -> {saved name: [N, D] float32} in one inference forward."""
  def features(variables, batch):
    _, out = model.apply(variables, batch, train=False)
    missing = [key for key in keys.values() if key not in out]
    if missing:
      raise KeyError(f"model output has no {missing}; its named intermediates are {sorted(out)}")
    return {name: out[key].astype(np.float32) for name, key in keys.items()}
  return jax.jit(features)


def has_metadata(data_config, builder) -> bool:
  """Whether the dataset has every configured metadata field (`config.data.meta_fields`)."""
  fields = tuple(data_config.get("meta_fields", ()) or ())
  return bool(fields) and all(f in builder.info.features for f in fields)


def metadata_encoder(run) -> Optional[metadata_lib.MetadataEncoder]:
  """The run's metadata encoder: the preprocessor's, else `<workdir>/data/metadata_encoder.json`,
  else the dataset's saved one or one fitted on the train split (not written to the workdir);
  None when the dataset has no metadata."""
  if run.preprocessor.meta_encoder is not None:
    return run.preprocessor.meta_encoder
  if not has_metadata(run.config.data, run.builder):
    return None
  saved = os.path.exists(os.path.join(run.workdir, "data", "metadata_encoder.json"))
  return pipeline.load_meta_encoder(run.config.data, run.builder,
                                    run.workdir if saved else None)


def extra_fields(run) -> tuple:
  """Raw record fields saved next to the features: the 7-class label and the grouping fields
  (pipeline.group_fields, the binary `malignant` label among them)."""
  multiclass = (MULTICLASS_FIELD,) if MULTICLASS_FIELD in run.builder.info.features and \
      MULTICLASS_FIELD != run.config.data.label_key else ()
  return multiclass + pipeline.group_fields(run.config.data, run.builder)


def class_names(run) -> dict[str, list]:
  """Class names of each saved label array ("label", "label_multiclass", "malignant")."""
  features = run.builder.info.features
  names = {"label": list(run.info.class_names)}
  feature = features[MULTICLASS_FIELD] if MULTICLASS_FIELD in features else None
  if feature is not None and hasattr(feature, "names"):
    names["label_multiclass"] = list(feature.names)
  if BINARY_FIELD in features:
    names["malignant"] = list(BINARY_NAMES)
  return names


def saved_arrays(batch: dict, raw: dict, features: dict, fields: tuple,
                 label_key: str) -> dict[str, np.ndarray]:
  """One batch's saved arrays (padding dropped): features, index, task label, encoded `meta`,
  the raw `fields` (7-class `label` saved as "label_multiclass", text as str)."""
  keep = np.asarray(batch["weight"]) > 0
  out = {k: np.asarray(v)[keep] for k, v in features.items()}
  out["index"] = np.asarray(batch["index"])[keep]
  out["label"] = np.asarray(batch["label"])[keep]
  if "meta" in batch:
    out["meta"] = np.asarray(batch["meta"], np.float32)[keep]
  for field in fields:
    value = np.asarray(raw[field])
    out["label_multiclass" if field == MULTICLASS_FIELD else field] = (
        value.astype(str) if value.dtype == object else value)
  if label_key == MULTICLASS_FIELD:
    out["label_multiclass"] = out["label"]
  elif label_key == BINARY_FIELD:
    out["malignant"] = out["label"]
  return out


def extract_split(run, variables: dict, preprocessor, split: str, fields: tuple,
                  feature_fn, progress: bool, mesh) -> dict[str, np.ndarray]:
  """Features, labels and raw fields of every example of one split, in split order; each
  batch is sharded over `mesh`, this process's own devices (distributed.local_mesh), which
  hold `variables`."""
  source = run.builder.as_data_source(split)
  batch_size = run.config.data.get("eval_batch_size", run.config.data.batch_size)
  sharding.check_batch_size(batch_size, mesh, "config.data.eval_batch_size")
  read = tuple(dict.fromkeys(pipeline.raw_fields(run.config.data, preprocessor) + fields))
  on_mesh = sharding.batch_sharding(mesh)
  parts = []
  with tqdm(total=len(source), desc=f"embeddings {split}", disable=not progress,
            leave=False) as bar:
    for start in range(0, len(source), batch_size):
      indices = np.arange(start, min(start + batch_size, len(source)))
      batch, raw = pipeline.read_examples(source, preprocessor, indices, read, batch_size)
      device_batch = {k: jax.device_put(v, on_mesh) for k, v in batch.items()
                      if k in pipeline.MODEL_KEYS}
      features = jax.device_get(feature_fn(variables, device_batch))
      parts.append(saved_arrays(batch, raw, features, fields, run.config.data.label_key))
      bar.update(len(indices))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def checkpoint_step(workdir: str, which: str = "best") -> Optional[int]:
  """The step of the workdir's `which` checkpoint, or None, without restoring it (or creating
  the checkpoint folders, as a Checkpointer does, in a workdir without any)."""
  if not checkpointing.has_checkpoint(workdir):
    return None
  checkpointer = checkpointing.Checkpointer(workdir, async_save=False)
  try:
    return checkpointer.latest_step(which)
  finally:
    checkpointer.close()


def read_manifest(workdir: str) -> Optional[dict]:
  path = os.path.join(cache_dir(workdir), "manifest.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_cached(workdir: str, splits: Sequence[str]) -> dict[str, dict]:
  out = {}
  for split in splits:
    with np.load(split_file(workdir, split)) as data:
      out[split] = {k: data[k] for k in data.files}
  return out


def split_file(workdir: str, split: str) -> str:
  return os.path.join(cache_dir(workdir), f"{split}.npz")


def cache_key(config, workdir: str, which: str, step: int) -> dict:
  """The manifest entries that must all match for a cached split to be reused: the checkpoint
  name and step and checkpointing.model_identity (its files' fingerprint, the config hash)."""
  return {"checkpoint": which, "checkpoint_step": step,
          **checkpointing.model_identity(config, workdir, which, step)}


def cached_splits(workdir: str, key: dict) -> dict[str, int]:
  """{split: examples} of the cache's splits made with `key` (cache_key: the same checkpoint
  name, step and files, and config hash); empty when the manifest is absent or stale."""
  manifest = read_manifest(workdir)
  if manifest is None or any(manifest.get(k) != v for k, v in key.items()):
    return {}
  return {s: n for s, n in manifest["splits"].items() if os.path.exists(split_file(workdir, s))}


def remove_stale(workdir: str, keep: Sequence[str]) -> None:
  """Deletes cached split files other than `keep` (made from another checkpoint or config)."""
  directory = cache_dir(workdir)
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if name.endswith(".npz") and name[:-4] not in keep:
        os.remove(os.path.join(directory, name))


def compute_embeddings(config, workdir: str, splits: Sequence[str], key: dict,
                       kept: Optional[dict] = None) -> dict:
  """Restores the checkpoint key["checkpoint"] (every process), then on process 0 extracts
  `splits` and writes their npz files and the manifest (with `key`, cache_key's entries, and
  the `kept` {split: examples} already cached with the same key); the other processes wait
  for it. Returns the extracted splits on process 0, {} on the others."""
  which = key["checkpoint"]
  run = loop.setup_trained_run(config, workdir)
  try:
    variables, step = saliency_runner.restore_variables(run, which)
  finally:
    run.checkpointer.close()
  if step != key["checkpoint_step"]:
    raise RuntimeError(f"the {which} checkpoint changed since it was looked up (step "
                       f"{key['checkpoint_step']} -> {step}); run again")
  for split in splits:
    if split not in run.info.split_sizes:
      raise ValueError(f"unknown split {split!r}; {config.data.name} has "
                       f"{sorted(run.info.split_sizes)}")
  write = lambda: write_cache(config, run, variables, workdir, splits, key, kept)
  return distributed.on_process_zero(write, f"embedding cache of {workdir}") or {}


def write_cache(config, run, variables: dict, workdir: str, splits: Sequence[str], key: dict,
                kept: Optional[dict]) -> dict:
  """Extracts `splits` on this process's devices, writes them and the manifest (after
  deleting cached splits other than `kept`); returns the extracted splits."""
  encoder = metadata_encoder(run)
  preprocessor = pipeline.Preprocessor(config.data, encoder, run.preprocessor.tokenizer)
  keys = feature_keys(run.model)
  feature_fn = make_feature_fn(run.model, keys)
  fields = extra_fields(run)
  progress = config.train.get("progress", True)
  mesh = distributed.local_mesh()
  variables = distributed.local_replica(variables)
  remove_stale(workdir, tuple(kept or ()))
  out = {}
  for split in splits:
    out[split] = extract_split(run, variables, preprocessor, split, fields, feature_fn,
                               progress, mesh)
    write_npz_atomic(split_file(workdir, split), out[split])
  manifest = {**key, "feature_keys": keys, "class_names": class_names(run),
              "meta_feature_names": list(encoder.feature_names) if encoder else None,
              "meta_age": ({"mean": encoder.age_mean, "std": encoder.age_std}
                           if encoder else None),
              "splits": {**(kept or {}), **{s: int(len(out[s]["index"])) for s in splits}}}
  write_text_atomic(os.path.join(cache_dir(workdir), "manifest.json"),
                    json.dumps(manifest, indent=2))
  return out


def extract_embeddings(config, workdir: str, splits: Sequence[str] = SPLITS,
                       which: str = "best") -> dict[str, dict]:
  """{split: {name: array}} (see the module docstring). Splits cached from the workdir's
  current `which` checkpoint (same step and saved files) with the same config are read back;
  the others are computed and cached (a cache made with another key is deleted first)."""
  splits = tuple(dict.fromkeys(splits))
  step = checkpoint_step(workdir, which)
  if step is None:
    raise FileNotFoundError(f"no {which} checkpoint under {os.path.join(workdir, 'checkpoints')}"
                            f"; train first with --mode=train")
  key = cache_key(config, workdir, which, step)
  kept = cached_splits(workdir, key)
  missing = [s for s in splits if s not in kept]
  # Every process has read the manifest before process 0 may replace it: they must agree on
  # whether to restore the checkpoint, which they do together.
  distributed.barrier(f"embedding cache of {workdir} looked up")
  out = compute_embeddings(config, workdir, missing, key, kept) if missing else {}
  out.update(load_cached(workdir, [s for s in splits if s not in out]))
  return {s: out[s] for s in splits}


def embedding_manifest(workdir: str) -> dict:
  """The cache's manifest (class names, metadata feature names, checkpoint step)."""
  manifest = read_manifest(workdir)
  if manifest is None:
    raise FileNotFoundError(f"no embedding cache in {cache_dir(workdir)}; run "
                            f"extract_embeddings first")
  return manifest
