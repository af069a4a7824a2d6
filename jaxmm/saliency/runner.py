"""`--mode=saliency`: saliency maps of a trained checkpoint for a split, in resumable shards.

Output, under `DIR/analysis/saliency/<split>/` (or `<output_name>/`): `manifest.json` (methods,
options, the model: checkpoint step, fingerprint and config hash; shard layout) and
`shard_<i>.npz` files, each holding for its examples "index" (position in the split), "label",
"logits", "targets", the id field, the uint8 "image" and "roi_mask" and the ANALYSIS_FIELDS
when the dataset has them, and per method "<method>.raw" / "<method>.normalized" maps plus the
method's extras.

"roi_mask" [N, H, W] is the ROI the example's first map is scored against (the explanation
evaluation takes the first target's map): the record's own "roi_mask" when the dataset has one
ROI per image, and for data with a mask per class ("roi_masks" [K, H, W], synthetic_cxr's one
per finding) the mask of the first target's class, not the union of every finding's mask. It is
all zero where that finding is absent, so the example has no ROI. The manifest's "roi_mask"
says which ("record" or "first_target"), so shards of one kind are never resumed as the other.

Shards are written atomically, so a killed run leaves only whole shards and re-running the same
command computes exactly the missing ones. With several processes, shard i is computed by
process i mod process_count. Shards of another model are recomputed, not reused: the manifest
records which model made them (checkpointing.model_identity: the fingerprint of the
checkpoint's files and the hash of config.seed/data/model/train/optimizer, with the step), and
when that differs (a retrain, even one saved at the same step; or a manifest written before it
was recorded) the shards are deleted and computed again, with a line saying why. Other changed
settings are refused: they are a choice, and the old shards may be wanted.
"""
import glob
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxmm.data import pipeline
from jaxmm.data.atomic import write_npz_atomic, write_text_atomic
from jaxmm.saliency import methods as methods_lib
from jaxmm.saliency import model_fns, smoothgrad
from jaxmm.saliency.targets import resolve_targets
from jaxmm.train import checkpointing, config_lib, distributed, loop

# Record fields kept next to the maps for the explanation evaluation (when the dataset has them):
# case grouping, demographics, and the synthetic data's planted confounder and its mask.
ANALYSIS_FIELDS = ("lesion_id", "patient_id", "study_id", "sex", "age", "localization",
                   "has_roi_mask", "confounder", "confounder_mask")
MANIFEST_KEYS = ("split", "methods", "options", "target", "top_k", "layer", "shard_size",
                 "num_examples", "checkpoint_step", "seed", "save_images", "noise_keys",
                 "roi_mask", "checkpoint_fingerprint", "config_hash", "definitions")
# The manifest keys that say which model and which method definitions made the shards (module
# docstring): a change means maps that this workdir and code no longer make, recomputed rather
# than refused.
MODEL_KEYS = ("checkpoint_step", "checkpoint_fingerprint", "config_hash", "definitions")
# How random methods (SmoothGrad) are keyed: per example, by its index in the split. Shards
# written before manifests recorded it were keyed per shard and batch.
NOISE_KEYS = "per_example"
# What a shard's "roi_mask" is (module docstring). Shards written before manifests recorded it
# hold the record's roi_mask, for synthetic_cxr the union of every finding's mask.
ROI_MASK_OF_RECORD = "record"
ROI_MASK_OF_FIRST_TARGET = "first_target"
# Manifests written before the model's identity was recorded cannot vouch for it (None).
LEGACY_MANIFEST = {"noise_keys": "per_shard_batch", "roi_mask": ROI_MASK_OF_RECORD,
                   "checkpoint_fingerprint": None, "config_hash": None}


def default_config() -> ml_collections.ConfigDict:
  """config.saliency: what the runner computes (any key may be overridden on the command line).

  methods None chooses by modality: Grad-CAM and IG + SmoothGrad for image models, plus the
  joint multimodal IG when the model has a text or metadata input.
  """
  return ml_collections.ConfigDict({
      "split": "test",
      "output_name": config_dict.placeholder(str),  # folder under analysis/saliency/; = split
      "methods": config_dict.placeholder(tuple),
      "target": "predicted",   # predicted | true | top_k (multilabel)
      "top_k": 3,
      # CAM layer; None = "image/<the encoder's last feature map>"
      "layer": config_dict.placeholder(str),
      "checkpoint": "best",
      "batch_size": 8,
      "shard_size": 64,
      "max_examples": config_dict.placeholder(int),
      "save_images": True,
      "seed": 0,
      "progress": True,
      "options": {
          "integrated_gradients": {"steps": 50, "rule": "riemann_trapezoid", "chunk_size": 10},
          # paper 004: 50 steps, the right Riemann sum of its formula, SmoothGrad noise
          "ig_smoothgrad": {"steps": 50, "rule": "riemann_right", "num_samples": 10,
                            "noise_level": 0.15, "path_chunk_size": 25,
                            "sample_chunk_size": 1},
          "smoothgrad": {"num_samples": 25, "noise_level": 0.15, "chunk_size": 5,
                         "kind": "smoothgrad"},  # or smoothgrad_squared, vargrad
          "scorecam": {"chunk_size": 32, "score": "probability"},  # score=logit: see cams
          "multimodal_ig": {"steps": 50, "chunk_size": 10},
      },
  })


def shrink_for_smoke(saliency: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Few path points and noise samples, so a smoke run's saliency step takes seconds."""
  options = saliency.options
  options.integrated_gradients.update({"steps": 8, "chunk_size": 8})
  options.ig_smoothgrad.update({"steps": 8, "num_samples": 2, "path_chunk_size": 8})
  options.smoothgrad.update({"num_samples": 2, "chunk_size": 2})
  options.multimodal_ig.update({"steps": 8, "chunk_size": 8})
  return saliency


def saliency_config(config) -> ml_collections.ConfigDict:
  """The defaults updated with `config.saliency` (unknown keys raise with the closest one)."""
  out = default_config()
  for key, value in config_lib.checked_items(config.get("saliency"), out, "config.saliency"):
    if key == "options":
      for method, opts in (value or {}).items():
        methods_lib.get_method(method)
        out.options[method] = {**out.options.get(method, {}), **dict(opts)}
    else:
      out[key] = value
  return out


def default_methods(modalities) -> tuple:
  methods = ("gradcam", "ig_smoothgrad") if "image" in modalities else ()
  if "text" in modalities or "meta" in modalities:
    methods += ("multimodal_ig",)
  return methods


def image_baseline(data_config) -> np.ndarray:
  """The normalised black image, per channel: -mean / std (the IG baseline, the deletion fill)."""
  return -np.asarray(data_config.image_mean, np.float32) / np.asarray(data_config.image_std,
                                                                       np.float32)


def context_for(run, scfg) -> methods_lib.Context:
  """Baselines, metadata fields, special tokens and the CAM layer of this run's model."""
  black = image_baseline(run.config.data)
  encoder = run.preprocessor.meta_encoder
  tokenizer = run.preprocessor.tokenizer
  image = run.model.image
  layer = scfg.layer or (f"image/{image.feature_map_name}" if image is not None else "")
  return methods_lib.Context(
      modalities=tuple(run.model.modalities), multilabel=run.info.multilabel,
      image_baseline=black, meta_fields=tuple(encoder.fields) if encoder else None,
      pad_id=int(tokenizer.pad_token_id) if tokenizer else 0,
      keep_ids=tuple(int(t) for t in (tokenizer.cls_token_id, tokenizer.sep_token_id))
      if tokenizer else (), layer=layer)


def restore_variables(run, which: str) -> tuple[dict, int]:
  """The checkpoint's params and batch stats, and its step."""
  state = loop.restore_checkpoint(run, which)
  return {"params": state.params, "batch_stats": state.batch_stats}, int(state.step)


class ShardWriter:
  """Computes and writes the shards of one split for a restored model."""

  def __init__(self, run, scfg, variables: dict, out_dir: str, methods: tuple):
    self.run, self.scfg, self.out_dir, self.methods = run, scfg, out_dir, methods
    self.source = run.builder.as_data_source(scfg.split)
    self.mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
    if scfg.batch_size % self.mesh.devices.size:
      raise ValueError(f"config.saliency.batch_size {scfg.batch_size} is not divisible by the "
                       f"{self.mesh.devices.size} local devices")
    # Host copies first: with several processes the restored state spans every process's
    # devices, and each process computes its own shards on its own devices.
    self.variables = jax.device_put(distributed.host_copy(variables),
                                    NamedSharding(self.mesh, P()))
    context = context_for(run, scfg)
    builder = lambda v: model_fns.linen_apply_fn(run.model, v, train=False)
    self.fns = {m: methods_lib.compiled(m, builder, scfg.options.get(m, {}), context)
                for m in methods}
    self.logits_fn = jax.jit(lambda v, b: builder(v)(b)[0])
    features = run.builder.info.features
    self.id_field = next((f for f in pipeline.ID_FIELDS if f in features), None)
    self.analysis_fields = tuple(f for f in ANALYSIS_FIELDS if f in features)
    extras = [f for f in ("roi_mask", "roi_masks", self.id_field) if f and f in features]
    self.fields = tuple(dict.fromkeys(
        pipeline.raw_fields(run.config.data, run.preprocessor) + tuple(extras) +
        self.analysis_fields))

  def device_batch(self, batch: dict) -> dict:
    """The model inputs of a batch, sharded over the local devices."""
    sharding = NamedSharding(self.mesh, P("data"))
    return {k: jax.device_put(v, sharding) for k, v in batch.items()
            if k in pipeline.MODEL_KEYS}

  def run_methods(self, batch: dict, targets: np.ndarray, keys: jax.Array) -> dict:
    """Every method's outputs for one batch; top-k targets [N, k] give a k axis after N.
    keys: one per example [N] (example_keys)."""
    columns = targets[:, None] if targets.ndim == 1 else targets
    out = {}
    for name, fn in self.fns.items():
      per_column = [jax.device_get(fn(self.variables, batch, jnp.asarray(columns[:, j]),
                                      smoothgrad.fold_in(keys, j)))
                    for j in range(columns.shape[1])]
      for field in per_column[0]:
        values = [np.asarray(c[field]) for c in per_column]
        out[f"{name}.{field}"] = values[0] if targets.ndim == 1 else np.stack(values, 1)
    return out

  def shard(self, shard_id: int, indices: np.ndarray, bar) -> dict:
    """All arrays of one shard (its examples in split order)."""
    del shard_id  # an example's maps depend on its index, not on its shard or batch
    parts = []
    for start in range(0, len(indices), self.scfg.batch_size):
      idx = indices[start:start + self.scfg.batch_size]
      batch, raw = pipeline.read_examples(self.source, self.run.preprocessor, idx,
                                          self.fields, self.scfg.batch_size)
      device_batch = self.device_batch(batch)
      keep = len(idx)
      logits = np.asarray(jax.device_get(self.logits_fn(self.variables, device_batch)))[:keep]
      labels = np.asarray(raw[self.run.config.data.label_key])
      targets = resolve_targets(self.scfg.target, logits, labels, self.scfg.top_k)
      padded = np.zeros((self.scfg.batch_size,) + targets.shape[1:], targets.dtype)
      padded[:keep] = targets
      arrays = self.run_methods(device_batch, padded, example_keys(self.scfg.seed, idx,
                                                                   self.scfg.batch_size))
      record = {"index": idx.astype(np.int64), "logits": logits, "targets": targets,
                "label": labels}
      record.update({k: v[:keep] for k, v in arrays.items()})
      if self.id_field:
        record["id"] = np.asarray(raw[self.id_field]).astype(str)
      if self.scfg.save_images and "image" in raw:
        record["image"] = np.asarray(raw["image"])
      roi_mask = explained_roi_mask(raw, targets)
      if roi_mask is not None:
        record["roi_mask"] = roi_mask
      for field in self.analysis_fields:
        value = np.asarray(raw[field])
        record[field] = value.astype(str) if value.dtype == object else value
      if "text_ids" in batch:
        record["text_ids"] = np.asarray(batch["text_ids"])[:keep]
        tokenizer = self.run.preprocessor.tokenizer
        record["tokens"] = np.array([tokenizer.convert_ids_to_tokens(list(map(int, row)))
                                     for row in record["text_ids"]], dtype=str)
      parts.append(record)
      bar.update(keep)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def roi_mask_kind(features) -> str:
  """What the shards' "roi_mask" of a dataset with these features is (module docstring)."""
  return ROI_MASK_OF_FIRST_TARGET if "roi_masks" in features else ROI_MASK_OF_RECORD


def explained_roi_mask(raw: dict, targets: np.ndarray) -> np.ndarray | None:
  """The ROI each example's first map is scored against, uint8 [N, H, W] (None without one).

  raw: the records' fields, with "roi_masks" [N, K, H, W] (a mask per class) or "roi_mask"
  [N, H, W]; targets: int [N] or top-k [N, k]. Per-class masks give the first target's own
  mask (all zero when that class is absent): a map of one finding is not penalised for
  missing the other findings of the image, as it would be against their union.
  """
  if "roi_masks" in raw:
    masks = np.asarray(raw["roi_masks"])
    first = targets[:, 0] if targets.ndim == 2 else targets
    return masks[np.arange(len(first)), first]
  return np.asarray(raw["roi_mask"]) if "roi_mask" in raw else None


def example_keys(seed: int, indices: np.ndarray, batch_size: int) -> jax.Array:
  """One key per row of a batch [batch_size]: fold_in(key(seed), index in the split), so an
  example's SmoothGrad noise is the same whatever the shard and batch sizes or the process
  count (padding rows, past len(indices), whose outputs are dropped, get index 0's)."""
  rows = np.zeros(batch_size, np.int64)
  rows[:len(indices)] = indices
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(rows, jnp.uint32))


def definition_version(method: str, options) -> int:
  """The version of `method`'s definition with `options`, raised when its maps change so that
  shards made before are recomputed, not mixed with new ones. 2: Score-CAM weights are the
  masked-input probabilities (no softmax across channels); VarGrad (kind "vargrad") is
  accumulated from deviations from the first sample's map."""
  return 2 if method == "scorecam" or dict(options).get("kind") == "vargrad" else 1


def definitions(methods, options) -> dict:
  """{method: definition_version} of the manifest."""
  return {m: definition_version(m, options.get(m, {})) for m in methods}


def manifest_for(scfg, methods: tuple, n: int, step: int, roi_mask: str,
                 identity: dict) -> dict:
  """The settings the shards are made with; roi_mask: `roi_mask_kind` of the dataset;
  identity: checkpointing.model_identity of the checkpoint (fingerprint, config hash)."""
  return {"split": scfg.split, "methods": list(methods), "options": {
      m: dict(scfg.options.get(m, {})) for m in methods}, "target": scfg.target,
      "top_k": scfg.top_k, "layer": scfg.layer, "shard_size": scfg.shard_size,
      "num_examples": n, "checkpoint_step": step, "seed": scfg.seed,
      "save_images": bool(scfg.save_images), "noise_keys": NOISE_KEYS, "roi_mask": roi_mask,
      "checkpoint_fingerprint": identity["checkpoint_fingerprint"],
      "config_hash": identity["config_hash"],
      "definitions": definitions(methods, scfg.options)}


def check_manifest(path: str, manifest: dict) -> list:
  """The MODEL_KEYS whose values differ from the existing shards' manifest (shards of another
  model, to recompute); raises when another setting differs, as a rerun must use the settings
  the existing shards were made with (a setting that an older manifest does not record is not
  compared, except those with a LEGACY_MANIFEST value)."""
  with open(path) as f:
    existing = {**LEGACY_MANIFEST, **json.load(f)}
  # Written before definitions were versioned: every method's first definition.
  existing.setdefault("definitions", dict.fromkeys(existing["methods"], 1))
  # An option a manifest does not record had its default value (an option added to the
  # defaults later, e.g. scorecam's score), as an option left at its default is that value.
  defaults = default_config().options.to_dict()
  with_defaults = lambda options: {m: {**defaults.get(m, {}), **dict(o)}
                                   for m, o in options.items()}
  if "options" in existing:
    existing["options"] = with_defaults(existing["options"])
  manifest = {**manifest, "options": with_defaults(manifest["options"])}
  changed = [k for k in MANIFEST_KEYS if k in existing and json.loads(json.dumps(existing[k]))
             != json.loads(json.dumps(manifest.get(k)))]
  if any(k not in MODEL_KEYS for k in changed):
    before = [existing.get(k) for k in changed]
    now = [manifest.get(k) for k in changed]
    raise ValueError(f"{path} was written with different settings ({', '.join(changed)}: "
                     f"{before} now {now})"
                     f"; delete {os.path.dirname(path)} to recompute, or keep it and rerun "
                     f"with the old settings")
  return changed


def shard_file(out_dir: str, shard_id: int) -> str:
  return os.path.join(out_dir, f"shard_{shard_id:05d}.npz")


def write_manifest(out_dir: str, manifest: dict, other_model: list) -> None:
  """Writes the manifest (process 0); `other_model`: the MODEL_KEYS in which the existing
  shards' manifest differs, whose shards are deleted first (maps of another model)."""
  if jax.process_index() != 0:
    return
  if other_model:
    stale = glob.glob(os.path.join(out_dir, "shard_*.npz"))
    for path in stale:
      os.remove(path)
    print(f"saliency: {out_dir} held maps of another model or method definition "
          f"({', '.join(other_model)} changed)"
          f"; deleted its {len(stale)} shards, recomputing", flush=True)
  write_text_atomic(os.path.join(out_dir, "manifest.json"), json.dumps(manifest, indent=2))


def run_saliency(config, workdir: str) -> dict:
  """Computes config.saliency's methods for its split from the workdir's checkpoint."""
  scfg = saliency_config(config)
  for name in scfg.methods or ():
    methods_lib.get_method(name)
  run = loop.setup_trained_run(config, workdir)
  try:
    variables, step = restore_variables(run, scfg.checkpoint)
  finally:
    run.checkpointer.close()
  methods = tuple(scfg.methods or default_methods(run.model.modalities))
  n = run.info.split_sizes[scfg.split] if scfg.split in run.info.split_sizes else None
  if n is None:
    raise ValueError(f"unknown split {scfg.split!r}; valid: {sorted(run.info.split_sizes)}")
  n = min(n, scfg.max_examples) if scfg.max_examples else n
  out_dir = os.path.join(workdir, "analysis", "saliency", scfg.output_name or scfg.split)
  os.makedirs(out_dir, exist_ok=True)
  identity = checkpointing.model_identity(config, workdir, scfg.checkpoint, step)
  manifest = manifest_for(scfg, methods, n, step, roi_mask_kind(run.builder.info.features),
                          identity)
  manifest_path = os.path.join(out_dir, "manifest.json")
  other_model = check_manifest(manifest_path, manifest) if os.path.exists(manifest_path) else []
  if other_model or not os.path.exists(manifest_path):
    write_manifest(out_dir, manifest, other_model)
  distributed.barrier(f"saliency manifest of {out_dir}")
  shards = [(i, np.arange(s, min(s + scfg.shard_size, n)))
            for i, s in enumerate(range(0, n, scfg.shard_size))]
  mine = [(i, idx) for i, idx in shards if i % jax.process_count() == jax.process_index()
          and not os.path.exists(shard_file(out_dir, i))]
  if mine:
    writer = ShardWriter(run, scfg, variables, out_dir, methods)
    with tqdm(total=sum(len(idx) for _, idx in mine), desc=f"saliency {scfg.split}",
              disable=not scfg.progress, leave=False) as bar:
      for shard_id, idx in mine:
        write_npz_atomic(shard_file(out_dir, shard_id), writer.shard(shard_id, idx, bar))
  distributed.barrier(f"saliency shards of {out_dir}")  # every shard written, by whoever
  done = sum(os.path.exists(shard_file(out_dir, i)) for i, _ in shards)
  if jax.process_index() == 0:
    print(f"saliency: {done}/{len(shards)} shards of {n} {scfg.split} examples "
          f"({', '.join(methods)}) in {out_dir}", flush=True)
  encoder = run.preprocessor.meta_encoder
  return {"directory": out_dir, "methods": list(methods), "num_examples": n,
          "num_shards": len(shards), "computed_shards": [i for i, _ in mine],
          "meta_field_names": list(encoder.field_names) if encoder is not None else None}


def load_saliency(directory: str) -> dict[str, np.ndarray]:
  """Every shard of a saliency directory, concatenated in split order; raises if incomplete."""
  with open(os.path.join(directory, "manifest.json")) as f:
    manifest = json.load(f)
  count = -(-manifest["num_examples"] // manifest["shard_size"])
  missing = [i for i in range(count) if not os.path.exists(shard_file(directory, i))]
  if missing:
    raise FileNotFoundError(f"{directory} is missing shards {missing}; rerun --mode=saliency "
                            f"to finish it")
  parts = []
  for i in range(count):
    with np.load(shard_file(directory, i)) as data:
      parts.append({k: data[k] for k in data.files})
    if set(parts[i]) != set(parts[0]):
      raise ValueError(f"{shard_file(directory, i)} holds other arrays than "
                       f"{shard_file(directory, 0)} (only in one of them: "
                       f"{sorted(set(parts[i]) ^ set(parts[0]))}): the shards were made with "
                       f"different settings; delete {directory} and rerun --mode=saliency")
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
