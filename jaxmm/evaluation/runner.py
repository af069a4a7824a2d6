"""`--mode=evaluate_explanations`: evaluates a checkpoint's explanations on a split.

Steps (each writes under DIR/analysis/ and DIR/figures/evaluation/):
  1. saliency maps of `config.evaluation.saliency_methods` for the split, through the saliency
     runner (resumable shards in analysis/saliency/evaluation_<split>/; finished shards are reused);
  2. ROI agreement (paper 004) per method: analysis/roi_agreement/;
  3. the integrated feature analysis (paper 003) per CAM method: analysis/ifa/<method>/, with
     the scaling statistics and importance matrices saved for later maps;
  4. deletion / insertion curves and the cascading randomisation test: analysis/faithfulness.csv,
     analysis/sanity.csv;
  5. on a dataset with a planted confounder, the confounder finding: analysis/confounder.json.
A summary of the headline numbers goes to analysis/explanation_evaluation.json and stdout.

Resuming: steps 2-4 are made of units, one per method (ROI agreement, IFA, deletion /
insertion, cascading randomisation; deletion / insertion also for the random order). A unit
writes its files atomically, then, last, its record analysis/evaluation_units/<unit>.json: the
settings it was computed with (the saliency manifest, split, the model: checkpoint step,
fingerprint of the checkpoint's files and hash of config.seed/data/model/train/optimizer
(checkpointing.model_identity), number of examples, the data and model sections, and the
config.evaluation keys it reads) and its results (arrays in <unit>.npz). Re-running the same
command reuses every unit whose record matches and whose files are all there, so a run killed
mid-way computes only the unfinished units. A unit whose settings changed is recomputed (the
changed keys are printed), every unit when the model did (a retrain, even one saved at the
same step, changes checkpoint_fingerprint; the saliency runner then recomputes the maps too);
units no longer asked for are removed with their files. The combined tables (summary.csv,
group_tests.csv, agreement.json, faithfulness.csv, sanity.csv, the confounder finding, the
summary) are rebuilt on every run from the units' records, so they are the same whether a run
was interrupted or not.

Several processes: each makes its share of the maps (step 1, the saliency runner's shards);
process 0 alone runs steps 2-5 on its own devices and writes their files, while the others
wait for it.
"""
import contextlib
import functools
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from jaxmm.data import pipeline
from jaxmm.data.atomic import write_npz_atomic, write_text_atomic
from jaxmm.evaluation import (agreement, confounder, faithfulness, ifa, ifa_dataset, roi,
                              sanity, stats)
from jaxmm.saliency import methods as methods_lib
from jaxmm.saliency import model_fns, normalize
from jaxmm.saliency import runner as saliency_runner
from jaxmm.train import checkpointing, config_lib, distributed, loop

PIXEL_METHODS = ("hirescam", "layercam")  # CAMs whose weights are per pixel


def default_config() -> ml_collections.ConfigDict:
  """config.evaluation (any key may be overridden on the command line)."""
  return ml_collections.ConfigDict({
      "split": "test",
      # computed through the saliency runner with config.saliency's options and layer
      "saliency_methods": ("gradcam", "hirescam", "ig_smoothgrad"),
      # per-method option overrides of config.saliency.options for these maps, e.g.
      # {"ig_smoothgrad": {"steps": 16}}; maps go to analysis/saliency/evaluation_<split>/
      "saliency_options": {},
      "maps": "normalized",   # which saliency output is thresholded (runner's normalisation)
      "max_examples": config_dict.placeholder(int),
      "bootstrap_resamples": 2000,
      "alpha": 0.05,
      "gallery_fraction": 0.1,
      "seed": 0,
      "ifa": {"enabled": True, "methods": ("gradcam", "hirescam", "xgradcam", "gradcam_pp"),
              "layer": config_dict.placeholder(str),  # None: config.saliency's CAM layer
              "reference_split": "train", "fractions": (0.05, 0.1, 0.2, 0.25),
              "target": "predicted", "batch_size": 32,
              "max_examples": config_dict.placeholder(int)},
      # deletion goes to the normalised black image; insertion starts from a Gaussian blur of
      # the image, std insertion_blur_sigma pixels (RISE; 0: from black too)
      "faithfulness": {"num_examples": 32, "steps": 20, "chunk_size": 7,
                       "insertion_blur_sigma": faithfulness.RISE_BLUR_SIGMA},
      "sanity": {"num_examples": 8, "methods": ("gradcam", "hirescam", "ig_smoothgrad")},
      "confounder": {"field": "confounder", "affected_class": config_dict.placeholder(int),
                     "feature_fraction": 0.1, "method": "hirescam"},
  })


def shrink_for_smoke(evaluation: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Small samples everywhere, so a smoke run's evaluation takes seconds."""
  evaluation.bootstrap_resamples = 200
  evaluation.saliency_options = {}  # config.saliency's (smoke) options
  evaluation.ifa.methods = ("gradcam", "hirescam")
  evaluation.faithfulness.update({"num_examples": 4, "steps": 5, "chunk_size": 6})
  evaluation.sanity.update({"num_examples": 2, "methods": ("gradcam",)})
  return evaluation


def evaluation_config(config) -> ml_collections.ConfigDict:
  """The defaults updated with `config.evaluation` (unknown keys raise with the closest one)."""
  out = default_config()
  for key, value in config_lib.checked_items(config.get("evaluation"), out, "config.evaluation"):
    if key == "saliency_options":
      for method in dict(value or {}):
        methods_lib.get_method(method)
      out[key] = dict(value or {})
    elif isinstance(out[key], ml_collections.ConfigDict):
      for sub, sub_value in config_lib.checked_items(value, out[key], f"config.evaluation.{key}"):
        out[key][sub] = sub_value
    else:
      out[key] = value
  return out


def saliency_maps(config, workdir: str, ecfg, methods: tuple) -> tuple[dict, dict]:
  """The split's maps from the saliency runner (computed, or reused when already there; None
  on processes other than 0) and the saliency config they were made with."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  with cfg.unlocked():
    cfg.saliency = saliency_runner.saliency_config(cfg)
    cfg.saliency.split = ecfg.split
    cfg.saliency.methods = tuple(methods)
    cfg.saliency.output_name = f"evaluation_{ecfg.split}"
    for method, options in dict(ecfg.saliency_options).items():
      cfg.saliency.options[method] = {**cfg.saliency.options.get(method, {}), **dict(options)}
    cfg.saliency.max_examples = ecfg.max_examples
    cfg.saliency.target = "top_k" if config.data.get("multilabel") else "predicted"
    cfg.saliency.progress = config.train.get("progress", True)
  summary = saliency_runner.run_saliency(cfg, workdir)  # every process: its shards
  # Only process 0 evaluates the maps (run_evaluation); the others need not read them.
  data = saliency_runner.load_saliency(summary["directory"]) if jax.process_index() == 0 else None
  return data, cfg.saliency


def write_rows(path: str, rows: list) -> str | None:
  """rows -> CSV at `path` (atomically), returning `path`; no rows: no file (an older one is
  removed, so that it cannot pass for this run's)."""
  if rows:
    stats.write_table_csv(path, rows)
    return path
  remove_file(path)
  return None


def remove_file(path: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)


# ------------------------------------------------------------------ resumable units

UNITS_DIR = "evaluation_units"
# config.data keys that change how data is read, not what it is
RUNTIME_DATA_KEYS = ("data_dir", "batch_size", "eval_batch_size", "num_threads")
_ABSENT = object()


def plain(value):
  """ConfigDicts, numpy scalars and arrays -> Python values, recursively; unlike
  stats.write_json, NaN is kept, so a record reads back exactly what was computed."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, dict):
    return {str(key): plain(item) for key, item in value.items()}
  if isinstance(value, np.ndarray):
    return plain(value.tolist())
  if isinstance(value, (list, tuple)):
    return [plain(item) for item in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def json_text(obj) -> str:
  return json.dumps(plain(obj), indent=1, default=str)


def flat_items(tree, prefix: str = "") -> dict:
  """{"a.b.c": leaf} of nested dicts (an empty dict is a leaf)."""
  if not isinstance(tree, dict) or not tree:
    return {prefix: tree}
  items = {}
  for key, value in tree.items():
    items.update(flat_items(value, f"{prefix}.{key}" if prefix else key))
  return items


def changed_keys(before: dict, now: dict) -> list:
  """The dotted keys whose values differ between two settings trees."""
  a, b = flat_items(before), flat_items(now)
  return sorted(k for k in a.keys() | b.keys() if a.get(k, _ABSENT) != b.get(k, _ABSENT))


def run_settings(config, ecfg, scfg, workdir: str, step: int, data: dict) -> dict:
  """What every unit depends on: the evaluated maps (the saliency runner's manifest), the
  split, the model (checkpoint step and checkpointing.model_identity: the step alone does not
  tell a retrained model saved at the same step from the old one), number of examples, and
  the data and model sections."""
  manifest = os.path.join(workdir, "analysis", "saliency", scfg.output_name, "manifest.json")
  with open(manifest) as f:
    saliency_manifest = json.load(f)
  data_section = {k: v for k, v in config.data.to_dict().items() if k not in RUNTIME_DATA_KEYS}
  return {"split": ecfg.split, "checkpoint_step": step,
          **checkpointing.model_identity(config, workdir, scfg.checkpoint, step),
          "num_examples": len(data["index"]), "saliency_manifest": saliency_manifest,
          "data": data_section, "model": config.model.to_dict()}


class UnitStore:
  """The units of one evaluation (module docstring, Resuming): records in
  DIR/analysis/evaluation_units/<unit>.json, arrays in <unit>.npz; `common` holds the
  settings every unit depends on (`run_settings`)."""

  def __init__(self, analysis_dir: str, common: dict):
    self.analysis_dir, self.common, self.used = analysis_dir, common, []
    self.directory = os.path.join(analysis_dir, UNITS_DIR)

  def path(self, name: str, ext: str = "json") -> str:
    return os.path.join(self.directory, f"{name}.{ext}")

  def run(self, name: str, settings: dict, compute, label: str) -> dict:
    """The unit's results: read from its record when that matches the settings and its files
    are there, else `compute()` -> (payload, arrays or None, paths written), recorded. Either
    way the results are read back from disk, so later steps see identical values."""
    self.used.append(name)
    settings = json.loads(json_text({**self.common, **settings}))
    record = self.read(name)
    why = self.stale_reason(record, settings) if record is not None else None
    if record is not None and why is None:
      print(f"evaluation: {label}: reused ({os.path.relpath(self.path(name), self.analysis_dir)})",
            flush=True)
      return self.results(record)
    if why:
      print(f"evaluation: {label}: recomputed, {why}", flush=True)
    self.discard(name, record)
    with timed(label):
      payload, arrays, outputs = compute()
    outputs = [os.path.relpath(p, self.analysis_dir) for p in outputs]
    if arrays is not None:
      write_npz_atomic(self.path(name, "npz"), arrays)
      outputs.append(os.path.relpath(self.path(name, "npz"), self.analysis_dir))
    text = json_text({"unit": name, "settings": settings, "outputs": outputs,
                      "arrays": arrays is not None, "payload": payload})
    write_text_atomic(self.path(name), text)  # last: the unit is done
    return self.results(json.loads(text))

  def read(self, name: str) -> dict | None:
    path = self.path(name)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      try:
        return json.load(f)
      except ValueError as e:
        raise ValueError(f"{path} is not a unit record ({e}); delete it to recompute the "
                         f"unit") from e

  def stale_reason(self, record: dict, settings: dict) -> str | None:
    """Why a record cannot be reused (changed settings, missing files), None if it can."""
    changed = changed_keys(record.get("settings", {}), settings)
    if changed:
      return f"settings changed: {', '.join(changed)}"
    missing = [p for p in record["outputs"] if not os.path.exists(
        os.path.join(self.analysis_dir, p))]
    return f"files missing: {', '.join(missing)}" if missing else None

  def results(self, record: dict) -> dict:
    payload = dict(record["payload"])
    if record["arrays"]:
      with np.load(self.path(record["unit"], "npz")) as f:
        payload["arrays"] = {k: f[k] for k in f.files}
    return payload

  def discard(self, name: str, record: dict | None) -> None:
    """Removes a unit's record first (so no record vouches for half-replaced files), then the
    files it lists, and their folders left empty (analysis/ifa/<method>/)."""
    remove_file(self.path(name))
    for relative in (record or {}).get("outputs", []):
      path = os.path.join(self.analysis_dir, relative)
      remove_file(path)
      folder = os.path.dirname(path)
      if folder not in (self.analysis_dir, self.directory):
        with contextlib.suppress(OSError):  # not empty, or gone
          os.rmdir(folder)

  def remove_unused(self) -> list:
    """Removes the units this run did not ask for (a method dropped from the config) with their
    files, so that no table or figure mixes them in; returns their names."""
    files = os.listdir(self.directory) if os.path.isdir(self.directory) else []
    names = sorted({os.path.splitext(f)[0] for f in files if f.endswith((".json", ".npz"))})
    unused = [n for n in names if n not in self.used]
    for name in unused:
      record = self.read(name)
      self.discard(name, record)
      remove_file(self.path(name, "npz"))  # arrays of a unit killed before its record
      print(f"evaluation: removed unit {name} (not part of this run) and its files "
            f"{(record or {}).get('outputs', [])}", flush=True)
    return unused


# ------------------------------------------------------------------ ROI agreement

ROI_TABLES = ("summary.csv", "group_tests.csv", "agreement.json")


def image_map_methods(data: dict, methods, which: str, stage: str) -> tuple:
  """The methods whose `which` image maps [N, H, W] the saliency output holds; each other one
  (multimodal_ig of a model without an image) is left out of `stage`, with a printed line."""
  kept = tuple(m for m in methods if f"{m}.{which}" in data)
  for method in methods:
    if method not in kept:
      print(f"evaluation: {stage}: skipped {method} (no {which} image maps: the model has no "
            f"image input)", flush=True)
  return kept


def roi_agreement(units: UnitStore, data: dict, ecfg, class_names, out_dir: str) -> dict:
  """Paper 004's tables for every method with image maps (a unit each); tests adjusted
  together (Bonferroni). Without an ROI or such a method, no tables (older ones removed)."""
  methods = image_map_methods(data, ecfg.saliency_methods, ecfg.maps, "ROI agreement")
  if "roi_mask" not in data or not agreement.has_roi(data).any() or not methods:
    for name in ROI_TABLES:
      remove_file(os.path.join(out_dir, name))
    return {}
  per_method, summary_rows, tests, galleries = {}, [], [], {}
  for method in methods:
    settings = {"method": method, "evaluation": {k: ecfg[k] for k in (
        "maps", "gallery_fraction", "bootstrap_resamples", "seed")}}
    result = units.run(f"roi_agreement.{method}", settings, functools.partial(
        roi_method, data, method, ecfg, class_names, out_dir), f"ROI agreement, {method}")
    per_method[method] = {"images": result["arrays"]}
    summary_rows += result["summaries"]
    tests += result["tests"]
    galleries[method] = result["galleries"]
  tests = stats.bonferroni(tests, ecfg.alpha)
  write_rows(os.path.join(out_dir, "summary.csv"), summary_rows)
  write_rows(os.path.join(out_dir, "group_tests.csv"), tests)
  stats.write_json(os.path.join(out_dir, "agreement.json"), {
      "maps": ecfg.maps, "thresholds": "0.00..1.00 step 0.01, salient iff map >= t",
      "summaries": summary_rows, "tests": tests, "galleries": galleries})
  return {"per_method": per_method, "summaries": summary_rows, "tests": tests}


def roi_method(data: dict, method: str, ecfg, class_names, out_dir: str) -> tuple:
  """One method's ROI agreement (a unit): writes its per-image and per-case tables; returns
  the summaries, the unadjusted tests and the galleries (split positions) as the payload and
  the per-image table's columns as arrays."""
  result = agreement.evaluate_method(
      data, method, class_names, which=ecfg.maps, fraction=ecfg.gallery_fraction,
      num_resamples=ecfg.bootstrap_resamples, seed=ecfg.seed)
  images = result["images"]
  written = [write_rows(os.path.join(out_dir, f"{method}_per_image.csv"), table_rows(images)),
             write_rows(os.path.join(out_dir, f"{method}_per_case.csv"),
                        table_rows(result["cases"]))]
  galleries = {k: {side: images["index"][idx] for side, idx in g.items()}
               for k, g in result["galleries"].items()}
  arrays = {k: v.astype(str) if v.dtype == object else v for k, v in images.items()}
  payload = {"summaries": result["summaries"], "tests": result["tests"], "galleries": galleries}
  return payload, arrays, [p for p in written if p]


def table_rows(table: dict) -> list:
  columns = list(table)
  return [{c: table[c][i] for c in columns} for i in range(len(table[columns[0]]))]


# ------------------------------------------------------------------ integrated feature analysis

def split_batches(run, split: str, fields: tuple, batch_size: int, limit: int | None):
  """(batch, raw) pairs over a split with "valid" marking real rows (the last is padded)."""
  source = run.builder.as_data_source(split)
  n = len(source) if limit is None else min(limit, len(source))
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    batch, raw = pipeline.read_examples(source, run.preprocessor, idx, fields, batch_size)
    batch = {k: v for k, v in batch.items() if k in pipeline.MODEL_KEYS + ("label",)}
    batch["valid"] = np.arange(batch_size) < len(idx)
    for key in ("confounder", "confounder_mask"):
      if key in raw:
        batch[key] = pipeline.pad_batch({key: np.asarray(raw[key]),
                                         "weight": np.ones(len(idx))}, batch_size)[key]
    yield batch


def analysis_fields(run, names=("confounder", "confounder_mask")) -> tuple:
  features = run.builder.info.features
  return tuple(dict.fromkeys(pipeline.raw_fields(run.config.data, run.preprocessor) +
                             tuple(f for f in names if f in features)))


def ifa_layer(run, scfg, ecfg) -> str:
  return ecfg.ifa.layer or scfg.layer or f"image/{run.model.image.feature_map_name}"


def consistency_rows(method: str, per: dict, selection, alpha: float) -> list:
  """Paper 003's tables I and III: correlation of CAM sums with the selected class's logit,
  for the individually scaled CAM, the S-CAM and the FS-S-CAMs; an example whose class has
  no principal features (absent from the reference split: NaN FS-CAM) is left out of the
  FS-S-CAM rows and counted in `num_skipped`."""
  logit = per["logits"][np.arange(len(per["target"])), per["target"]]
  rows = []
  for name, sums in cam_sums(per, selection).items():
    keep = np.isfinite(sums)  # NaN: an FS-CAM of a class without principal features
    test = ifa.consistency(sums[keep], logit[keep], alpha)
    test["correlation"] = test.pop("method")
    rows.append({"method": method, "variant": name, **test,
                 "num_skipped": int((~keep).sum())})
  return rows


def cam_sums(per: dict, selection) -> dict:
  """Total class activation per example of the CAM (individually scaled: ReLU, / max), the
  S-CAM and the FS-S-CAMs (common tanh scale of the selected class), at layer resolution."""
  a, b = selection.alpha[per["target"]], selection.beta[per["target"]]
  scaled = lambda raw: np.tanh(a[:, None, None] * raw + b[:, None, None])
  sums = {"cam": np.asarray(ifa.cam_sum(normalize.positive_unit(jnp.asarray(per["raw"])))),
          "s_cam": scaled(per["raw"]).sum((1, 2))}
  for p, fs in zip(selection.fractions, per["fs_raw"]):
    sums[f"fs_s_cam_top{round(100 * p)}"] = scaled(fs).sum((1, 2))
  return sums


def masking_rows(method: str, per: dict, selection) -> list:
  """Paper 003's table II: accuracy with all, principal and non-principal features."""
  label = per["label"]
  accuracy = lambda logits: float(np.mean(logits.argmax(-1) == label))
  rows = [{"method": method, "features": "all", "fraction": 1.0,
           "accuracy": accuracy(per["logits"])}]
  count = len(selection.fractions)
  for i, p in enumerate(selection.fractions):
    rows.append({"method": method, "features": "principal", "fraction": p,
                 "accuracy": accuracy(per["masked_logits"][i])})
    rows.append({"method": method, "features": "non_principal", "fraction": 1 - p,
                 "accuracy": accuracy(per["masked_logits"][count + i])})
  return rows


def drop_rows(method: str, per: dict, selection) -> list:
  """Average drop / increase (percent) for the CAM and the FS-CAMs (paper 003's table IV), over
  the examples whose masked probability is defined (`num_skipped` counts the others)."""
  if "masked_probability" not in per:
    return []
  probs = jax.nn.softmax(jnp.asarray(per["logits"]), -1)
  y = np.asarray(probs)[np.arange(len(per["target"])), per["target"]]
  names = ["cam"] + [f"fs_cam_top{round(100 * p)}" for p in selection.fractions]
  rows = []
  for name, o in zip(names, per["masked_probability"]):
    keep = np.isfinite(o)  # NaN: an FS-CAM of a class without principal features
    drop = np.maximum(0, y[keep] - o[keep]) / np.maximum(y[keep], 1e-12)
    rows.append({"method": method, "variant": name,
                 "average_drop": 100 * float(drop.mean()) if keep.any() else float("nan"),
                 "average_increase": (100 * float(np.mean(o[keep] > y[keep])) if keep.any()
                                      else float("nan")),
                 "num_skipped": int((~keep).sum())})
  return rows


CONFOUNDER_ARRAYS = ("feature_confounder_share", "group_cam", "group_fs_cam")


def ifa_results(units: UnitStore, run, variables, scfg, ecfg, affected, out_dir: str) -> dict:
  """The integrated feature analysis of each of config.evaluation.ifa.methods (a unit each);
  none, with a printed line, for a model without an image or a multilabel task (paper 003's
  analysis selects one class per example)."""
  if not ecfg.ifa.enabled:
    return {}
  if "image" not in run.model.modalities or run.info.multilabel:
    why = "a multilabel task" if run.info.multilabel else "the model has no image input"
    print(f"evaluation: integrated feature analysis: skipped ({why})", flush=True)
    return {}
  layer = ifa_layer(run, scfg, ecfg)
  results = {}
  for method in ecfg.ifa.methods:
    options = {k: v for k, v in ecfg.ifa.items() if k != "methods"}  # not the other methods
    settings = {"method": method, "layer": layer, "affected_class": affected, "evaluation": {
        "ifa": options, "alpha": ecfg.alpha,
        "confounder": {"feature_fraction": ecfg.confounder.feature_fraction}}}
    results[method] = units.run(f"ifa.{method}", settings, functools.partial(
        ifa_unit, run, variables, method, layer, ecfg, affected, os.path.join(out_dir, method)),
        f"integrated feature analysis, {method} at {layer}")
  return results


def ifa_unit(run, variables, method: str, layer: str, ecfg, affected, out_dir: str) -> tuple:
  """`ifa_method` as a unit: its files written (`write_ifa`); the tables the summary reads as
  the payload; the importance matrix and per-example arrays the confounder finding reads."""
  result = ifa_method(run, variables, method, layer, ecfg, affected)
  written = write_ifa(result, method, out_dir)
  per = result["per_example"]
  arrays = {"label": per["label"],
            "reference_eq4": result["importance"]["reference"]["all"]["eq4"],
            **{k: per[k] for k in CONFOUNDER_ARRAYS if k in per}}
  if result["selection"].group_features is not None:
    arrays["group_features"] = result["selection"].group_features
  payload = {k: result[k] for k in ("layer", "consistency", "masking", "drop", "overfitting")}
  return payload, arrays, written


def ifa_method(run, variables, method: str, layer: str, ecfg, affected) -> dict:
  """Reference pass on the reference split, evaluation pass on the evaluated split."""
  cfg = ecfg.ifa
  builder = lambda v: model_fns.linen_apply_fn(run.model, v, train=False)
  fields = analysis_fields(run)
  batches = functools.partial(split_batches, run, fields=fields, batch_size=cfg.batch_size,
                              limit=cfg.max_examples)
  num_classes = run.info.num_classes
  reference = ifa_dataset.reference_pass(
      ifa_dataset.reference_step(builder, layer, method), variables,
      batches(cfg.reference_split), num_classes)
  features = None
  if affected is not None and "confounder_region" in reference["importance"]:
    features = confounder.confounder_features(
        reference["importance"]["confounder_region"]["eq4"], affected,
        ecfg.confounder.feature_fraction)
  selection, scaling = ifa_dataset.make_selection(reference, cfg.fractions,
                                                  group_features=features,
                                                  group_class=affected or 0)
  black = saliency_runner.image_baseline(run.config.data)
  evaluation = ifa_dataset.evaluation_pass(
      ifa_dataset.evaluation_step(builder, layer, method, black, cfg.target), variables,
      batches(ecfg.split), num_classes, selection)
  per = evaluation["per_example"]
  return {
      "layer": layer, "reference_split": cfg.reference_split,
      "statistics": reference["statistics"], "scaling": scaling,
      "importance": {"reference": reference["importance"], "evaluated": evaluation["importance"]},
      "overfitting": ifa.importance_distance(reference["importance"]["all"]["eq4"],
                                             evaluation["importance"]["eq4"]),
      "consistency": consistency_rows(method, per, selection, ecfg.alpha),
      "masking": masking_rows(method, per, selection),
      "drop": drop_rows(method, per, selection),
      "selection": selection, "per_example": per}


def write_ifa(result: dict, method: str, out_dir: str) -> list:
  """Scaling statistics and importance matrices next to the tables (reused for later maps);
  returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  path = lambda name: os.path.join(out_dir, name)
  stats.write_json(path("distribution.json"), {
      "layer": result["layer"], "split": result["reference_split"],
      "per_class": result["statistics"]})
  scaling = result["scaling"]
  scaling = ifa.ScalingStats(per_class=scaling.per_class, low=scaling.low, high=scaling.high,
                             method=method, layer=result["layer"])
  write_text_atomic(path("scaling.json"), scaling.to_json())
  matrices = {"reference_eq3": result["importance"]["reference"]["all"]["eq3"],
              "reference_eq4": result["importance"]["reference"]["all"]["eq4"],
              "evaluated_eq3": result["importance"]["evaluated"]["eq3"],
              "evaluated_eq4": result["importance"]["evaluated"]["eq4"]}
  write_npz_atomic(path("importance.npz"), matrices)
  per = result["per_example"]
  write_npz_atomic(path("per_example.npz"), {
      "label": per["label"], "target": per["target"],
      "target_logit": per["logits"][np.arange(len(per["target"])), per["target"]],
      **{f"sum.{k}": v for k, v in cam_sums(per, result["selection"]).items()}})
  stats.write_json(path("overfitting.json"), result["overfitting"])
  tables = [write_rows(path("consistency.csv"), result["consistency"]),
            write_rows(path("feature_masking.csv"), result["masking"]),
            write_rows(path("average_drop_increase.csv"), result["drop"])]
  return [path(name) for name in ("distribution.json", "scaling.json", "importance.npz",
                                  "per_example.npz", "overfitting.json")] + \
      [p for p in tables if p]


# ------------------------------------------------------------------ faithfulness and sanity

def first_examples(run, split: str, indices: np.ndarray) -> dict:
  """The model inputs of the examples at split positions `indices`."""
  source = run.builder.as_data_source(split)
  fields = pipeline.raw_fields(run.config.data, run.preprocessor)
  batch, _ = pipeline.read_examples(source, run.preprocessor, indices, fields, len(indices))
  return {k: jnp.asarray(v) for k, v in batch.items() if k in pipeline.MODEL_KEYS}


def faithfulness_rows(units: UnitStore, run, variables, data: dict, ecfg, split: str) -> list:
  """Deletion / insertion AUCs of each method's raw maps and of a random pixel order (a unit
  each)."""
  count = min(ecfg.faithfulness.num_examples, len(data["index"]))
  if count == 0 or "image" not in run.model.modalities:
    return []
  inputs = functools.cache(functools.partial(faithfulness_inputs, run, variables, data, ecfg,
                                             count, split))
  methods = image_map_methods(data, ecfg.saliency_methods, "raw", "deletion / insertion")
  rows = []
  for method in methods + ("random",):
    seed = {"seed": ecfg.seed} if method == "random" else {}  # random pixel orders only
    settings = {"method": method, "evaluation": {"faithfulness": ecfg.faithfulness, **seed}}
    compute = lambda method=method: (
        {"row": faithfulness_row(method, data, ecfg, count, *inputs())}, None, [])
    rows.append(units.run(f"faithfulness.{method}", settings, compute,
                          f"deletion / insertion, {method}")["row"])
  return rows


def faithfulness_inputs(run, variables, data: dict, ecfg, count: int, split: str) -> tuple:
  """(model function of images, images, targets, curve options) of the first `count` examples,
  shared by every method's curves. Deletion goes to the normalised black image, insertion
  starts from the images blurred with config.evaluation.faithfulness.insertion_blur_sigma."""
  batch = first_examples(run, split, np.asarray(data["index"][:count]))
  apply = model_fns.linen_apply_fn(run.model, variables, train=False)
  targets = jnp.asarray(agreement.first_target(np.asarray(data["targets"][:count]), 1))
  options = {"baseline": saliency_runner.image_baseline(run.config.data),
             "insertion_baseline": faithfulness.blurred_baseline(
                 batch["image"], ecfg.faithfulness.insertion_blur_sigma),
             "steps": ecfg.faithfulness.steps,
             "chunk_size": ecfg.faithfulness.chunk_size,
             "multilabel": bool(run.info.multilabel)}
  return methods_lib.image_function(apply, batch), batch["image"], targets, options


def faithfulness_row(method: str, data: dict, ecfg, count: int, f, images, targets,
                     options: dict) -> dict:
  """Mean deletion / insertion AUCs and curves of one method ("random": random pixel orders)
  over the n of the first `count` examples whose map is finite and not constant (the others'
  curves are NaN: they are named in a RuntimeWarning and left out); the insertion baseline's
  blur sigma."""
  if method == "random":
    c = faithfulness.random_order_auc(f, images, targets, jax.random.key(ecfg.seed), **options)
  else:
    maps = np.asarray(agreement.selected_maps(data, method, "raw")[:count])
    c = faithfulness.deletion_insertion(f, images, jnp.asarray(maps), targets, **options)
    broken = roi.nonfinite_maps(maps)
    constant = roi.constant_maps(maps) & ~broken
    names = example_names(data, count)
    if broken.any():
      roi.warn_nonfinite(broken, names, f"raw {method} maps of the deletion / insertion "
                         f"examples hold", "their curves are NaN and left out of the means")
    if constant.any():
      flat = names[constant]
      warnings.warn(f"{len(flat)} of {len(constant)} raw {method} maps of the deletion / "
                    f"insertion examples are constant (examples "
                    f"{', '.join(map(str, flat[:5]))}{', ...' if len(flat) > 5 else ''}): no "
                    f"pixel order; their curves are NaN and left out of the means",
                    RuntimeWarning, stacklevel=2)
  kept = ~np.isnan(np.asarray(c["deletion_auc"])) & ~np.isnan(np.asarray(c["insertion_auc"]))
  mean = {k: kept_mean(c[k], kept) for k in ("deletion_auc", "insertion_auc", "deletion",
                                              "insertion")}
  return {"method": method, "n": int(kept.sum()), "steps": ecfg.faithfulness.steps,
          "insertion_blur_sigma": ecfg.faithfulness.insertion_blur_sigma,
          "deletion_auc": float(mean["deletion_auc"]),
          "insertion_auc": float(mean["insertion_auc"]),
          "deletion_curve": mean["deletion"].round(4).tolist(),
          "insertion_curve": mean["insertion"].round(4).tolist()}


def kept_mean(values, kept: np.ndarray) -> np.ndarray:
  """Mean over the kept rows of values [N, ...] -> [...]; NaN where none is kept."""
  values = np.asarray(values)
  return values[kept].mean(0) if kept.any() else np.full(values.shape[1:], np.nan)


def example_names(data: dict, count: int) -> np.ndarray:
  """The first `count` examples' ids where the split has them, else their indices."""
  return np.asarray(data["id"] if "id" in data else data["index"])[:count]


def randomizable(model):
  """The model whose fresh weights replace trained ones in the randomisation test. With
  zero-initialised last BatchNorm scales a fresh residual block is the identity, and a
  zero-initialised FiLM Dense a fresh FiLM the identity modulation, so randomising them would
  ablate, not randomise: the fresh weights come without those tricks."""
  image = getattr(model, "image", None)
  if image is not None and getattr(image, "zero_init_last_bn", False):
    model = model.clone(image=image.clone(zero_init_last_bn=False))
  if getattr(model, "fusion", None) == "film" and getattr(model, "film_zero_init", False):
    model = model.clone(film_zero_init=False)
  return model


def fresh_init(model) -> dict:
  """How `randomizable` draws the fresh weights (a setting of the sanity units): the
  zero-initialisations it keeps (None: no such module)."""
  fresh = randomizable(model)
  image = getattr(fresh, "image", None)
  film = getattr(fresh, "fusion", None) == "film"
  return {"zero_init_last_bn": getattr(image, "zero_init_last_bn", None),
          "film_zero_init": fresh.film_zero_init if film else None}


def sanity_rows(units: UnitStore, run, variables, data: dict, ecfg, scfg, split: str) -> list:
  """The cascading parameter randomisation test of each sanity method (a unit each)."""
  count = min(ecfg.sanity.num_examples, len(data["index"]))
  if count == 0 or not ecfg.sanity.methods:
    return []
  if "image" not in run.model.modalities:  # every method's maps are image maps
    print(f"evaluation: cascading randomisation: skipped {', '.join(ecfg.sanity.methods)} "
          f"(no image maps: the model has no image input)", flush=True)
    return []
  context = saliency_runner.context_for(run, scfg)
  inputs = functools.cache(functools.partial(sanity_inputs, run, variables, data, count, split))
  rows = []
  for method in ecfg.sanity.methods:
    if any(m not in run.model.modalities for m in methods_lib.REQUIRES[method]):
      continue
    settings = {"method": method, "layer": context.layer,
                "options": scfg.options.get(method, {}), "fresh_init": fresh_init(run.model),
                "evaluation": {"sanity": {"num_examples": ecfg.sanity.num_examples},
                               "seed": ecfg.seed}}
    compute = lambda method=method: ({"rows": sanity_method_rows(
        run, method, scfg, context, ecfg.seed, count, *inputs())}, None, [])
    rows += units.run(f"sanity.{method}", settings, compute,
                      f"cascading randomisation, {method}")["rows"]
  return rows


def sanity_inputs(run, variables, data: dict, count: int, split: str) -> tuple:
  """(host variables, model inputs, targets, example names) of the first `count` examples.
  Host copies: the randomised trees mix restored (mesh-sharded) and fresh leaves, and uniform
  inputs let every cascading step reuse one compiled method."""
  batch = first_examples(run, split, np.asarray(data["index"][:count]))
  targets = jnp.asarray(agreement.first_target(np.asarray(data["targets"][:count]), 1))
  return jax.device_get(variables), batch, targets, example_names(data, count)


def sanity_method_rows(run, method: str, scfg, context, seed: int, count: int, variables,
                       batch: dict, targets, names=None) -> list:
  """One method's cascading randomisation rows (top layer down); "n" / "n_abs": how many of
  the `count` examples' similarities each mean averages (a non-finite map's is NaN, left out
  with a warning naming the example)."""
  builder = lambda v: model_fns.linen_apply_fn(run.model, v, train=False)
  key = jax.random.key(seed)
  fn = methods_lib.compiled(method, builder, scfg.options.get(method, {}), context)
  method_fn = lambda v, b, t: fn(v, b, t, key)["raw"]
  rows = []
  for row in sanity.cascading_randomization_test(randomizable(run.model), variables, batch,
                                                 targets, method_fn, key, names=names):
    row.pop("per_example")
    rows.append({"method": method, "n": row.pop("n"), "n_abs": row.pop("n_abs"), **row})
  return rows


# ------------------------------------------------------------------ the confounder finding

CONFOUNDER_FILES = ("confounder.json", "confounder_examples.npz")
# How mass-on-artefact controls are drawn when every class has enough images without the
# confounder (confounder.describe_controls); the summary names any other draw.
CONTROLS_AS_PLANNED = confounder.describe_controls({"pooled_classes": [],
                                                    "replaced_classes": []})


def affected_class_of(data: dict, ecfg, num_classes: int) -> int | None:
  """The confounder's affected class (configured, else where it is most frequent)."""
  field = ecfg.confounder.field
  if field not in data or np.asarray(data["label"]).ndim != 1:
    return None
  if ecfg.confounder.affected_class is not None:
    return int(ecfg.confounder.affected_class)
  return confounder.affected_class(data["label"], data[field], num_classes)


def confounder_finding(data: dict, ecfg, affected: int, class_names, roi_result: dict,
                       ifa_results: dict) -> dict:
  """ROI agreement with vs without the confounder (affected class), mass on the artefact
  against same-class controls (paired t-test; "mass_test" and "mass_controls" say which test
  and how the controls were drawn), and the FS-CAM of the importance matrix's confounder
  features (module confounder)."""
  flags = np.asarray(data[ecfg.confounder.field]).astype(bool)
  masks = np.asarray(data.get("confounder_mask"))
  rates = confounder.confounder_rates(data["label"], flags, len(class_names))
  rows = []
  for method in ecfg.saliency_methods:
    row = {"method": method}
    images = roi_result.get("per_method", {}).get(method, {}).get("images")
    if images is not None:
      labels = np.asarray(data["label"])[agreement.has_roi(data)]
      for metric in ("dice", "spearman"):
        test = confounder.agreement_difference(images[metric], labels,
                                               images["confounder"], affected)
        row.update({f"{metric}_with": test["mean_with"], f"{metric}_without": test["mean_without"],
                    f"{metric}_t": test["statistic"], f"{metric}_p": test["p"],
                    "n_with": test["n_with"], "n_without": test["n_without"]})
    if masks.ndim == 3 and f"{method}.{ecfg.maps}" in data:
      mass = confounder.mass_on_artefact(agreement.selected_maps(data, method, ecfg.maps),
                                         masks, flags, np.asarray(data["label"]), ecfg.seed)
      row.update({"mass_on_artefact": mass.get("mass"), "control_mass": mass.get("control_mass"),
                  "artefact_area": mass.get("area"), "mass_test": mass["test"],
                  "mass_t": mass["statistic"], "mass_p": mass["p"], "mass_n": mass["n"]})
      if "mass" in mass:  # controls were drawn
        row["mass_controls"] = confounder.describe_controls(mass, class_names)
      if "note" in mass:  # no controls, or too few pairs for the test
        row["mass_note"] = mass["note"]
    rows.append(row)
  # The share of all other classes' images with the artefact (pooled: the mean of the
  # per-class rates would weigh a class of 7 images as one of 700).
  others = np.asarray(data["label"]) != affected
  other_rate = float(flags[others].mean()) if others.any() else float("nan")
  finding = {"affected_class": class_names[affected], "rates": dict(zip(class_names, rates)),
             "other_rate": other_rate, "alpha": ecfg.alpha, "methods": rows}
  method = ecfg.confounder.method
  if masks.ndim == 3 and "group_features" in ifa_results.get(method, {}).get("arrays", {}):
    finding["features"] = feature_evidence(ifa_results[method], flags, masks, affected, method)
  return finding


def write_confounder_examples(data: dict, ecfg, affected: int, ifa_results: dict, path: str,
                              count: int = 8) -> None:
  """Images of the affected class with the confounder, their masks and maps (for figures):
  each saliency method's map, and the confounder method's CAM and FS-CAM of the class."""
  flags = np.asarray(data[ecfg.confounder.field]).astype(bool)
  labels = np.asarray(data["label"])
  order = np.concatenate([np.flatnonzero(flags & (labels == affected)),
                          np.flatnonzero(flags & (labels != affected))])[:count]
  arrays = {"index": np.asarray(data["index"])[order], "label": labels[order],
            "affected_class": np.asarray(affected)}
  for key in ("image", "roi_mask", "confounder_mask"):
    if key in data:
      arrays[key] = np.asarray(data[key])[order]
  for method in image_map_methods(data, ecfg.saliency_methods, ecfg.maps,
                                  "confounder examples"):
    arrays[f"{method}.normalized"] = agreement.selected_maps(data, method, ecfg.maps)[order]
  result = ifa_results.get(ecfg.confounder.method)
  if result is not None and "group_cam" in result["arrays"]:
    per = result["arrays"]
    keep = order[order < len(per["group_cam"])]
    arrays["ifa_index"] = keep
    arrays["class_cam"] = per["group_cam"][keep]
    arrays["class_fs_cam"] = per["group_fs_cam"][keep]
  write_npz_atomic(path, arrays)


def feature_evidence(result: dict, flags: np.ndarray, masks: np.ndarray, affected: int,
                     method: str) -> dict:
  """Where the importance matrix's confounder features look, on images with the confounder
  (`result`: the method's IFA unit, its arrays as `ifa_unit` records them)."""
  per = result["arrays"]
  n = min(len(per["label"]), len(flags))
  features = per["group_features"].astype(bool)
  column = per["reference_eq4"][:, affected]
  share = per["feature_confounder_share"][:n][flags[:n]]
  test = confounder.fs_cam_on_artefact(per["group_cam"][:n], per["group_fs_cam"][:n],
                                       masks[:n], flags[:n])
  return {"method": method, "layer": result["layer"],
          "features": np.flatnonzero(features).tolist(), "num_features": len(features),
          "concentration": confounder.concentration(column, features),
          "feature_share_on_artefact": float(share[:, features].mean()) if len(share) else None,
          "other_share_on_artefact": float(share[:, ~features].mean()) if len(share) else None,
          **{f"fs_{k}": v for k, v in test.items()}}


# ------------------------------------------------------------------ the mode

@contextlib.contextmanager
def timed(label: str):
  start = time.perf_counter()
  yield
  print(f"evaluation: {label} ({time.perf_counter() - start:.1f} s)", flush=True)


def usable(methods, modalities) -> tuple:
  """The methods whose required modalities the model has."""
  return tuple(m for m in methods
               if all(x in modalities for x in methods_lib.REQUIRES[m]))


def restored_run(config, workdir: str):
  """The run's setup, the checkpoint's variables and its step."""
  run = loop.setup_trained_run(config, workdir)
  try:
    variables, step = saliency_runner.restore_variables(
        run, saliency_runner.saliency_config(config).checkpoint)
  finally:
    run.checkpointer.close()
  return run, variables, step


def run_evaluation(config, workdir: str) -> dict:
  """Evaluates the explanations of the workdir's checkpoint (module docstring). With several
  processes every one makes its share of the saliency maps; process 0 alone then evaluates
  them (on its own devices) and writes, the others wait for it and return {}."""
  ecfg = evaluation_config(config)
  for name in tuple(ecfg.saliency_methods) + tuple(ecfg.sanity.methods):
    methods_lib.get_method(name)
  for name in ecfg.ifa.methods:
    ifa.check_method(name)
  run, variables, step = restored_run(config, workdir)
  modalities = tuple(run.model.modalities)
  ecfg.saliency_methods = usable(ecfg.saliency_methods, modalities)
  ecfg.sanity.methods = usable(ecfg.sanity.methods, modalities)
  if not ecfg.saliency_methods:
    print(f"evaluation: no saliency method of config.evaluation applies to a model of "
          f"{list(modalities)}; nothing to evaluate", flush=True)
    return {}
  with timed(f"saliency maps of {ecfg.split}"):
    data, scfg = saliency_maps(config, workdir, ecfg, ecfg.saliency_methods)
  evaluate = functools.partial(evaluate_maps, config, workdir, ecfg, scfg, run, variables,
                               step, data)
  return distributed.on_process_zero(evaluate, f"explanation evaluation of {workdir}") or {}


def evaluate_maps(config, workdir: str, ecfg, scfg, run, variables, step: int,
                  data: dict) -> dict:
  """Steps 2-5 of the module docstring on the saliency output `data`: their files under
  DIR/analysis/ and the summary, which it returns. Runs on one process, on its own devices."""
  variables = distributed.local_replica(variables)
  out_dir = os.path.join(workdir, "analysis")
  units = UnitStore(out_dir, run_settings(config, ecfg, scfg, workdir, step, data))
  class_names = list(run.info.class_names)
  result = {"split": ecfg.split, "checkpoint_step": step, "num_examples": len(data["index"]),
            "methods": list(ecfg.saliency_methods)}
  result["roi"] = roi_agreement(units, data, ecfg, class_names,
                                os.path.join(out_dir, "roi_agreement"))
  affected = affected_class_of(data, ecfg, len(class_names))
  result["ifa"] = ifa_results(units, run, variables, scfg, ecfg, affected,
                              os.path.join(out_dir, "ifa"))
  result["faithfulness"] = faithfulness_rows(units, run, variables, data, ecfg, ecfg.split)
  write_rows(os.path.join(out_dir, "faithfulness.csv"), result["faithfulness"])
  result["sanity"] = sanity_rows(units, run, variables, data, ecfg, scfg, ecfg.split)
  write_rows(os.path.join(out_dir, "sanity.csv"), result["sanity"])
  units.remove_unused()
  confounder_paths = [os.path.join(out_dir, name) for name in CONFOUNDER_FILES]
  if affected is not None:
    result["confounder"] = confounder_finding(data, ecfg, affected, class_names,
                                              result["roi"], result["ifa"])
    stats.write_json(confounder_paths[0], result["confounder"])
    write_confounder_examples(data, ecfg, affected, result["ifa"], confounder_paths[1])
  else:  # no finding this run: an older one must not pass for it
    for path in confounder_paths:
      remove_file(path)
  summary = headline(result, ecfg)
  summary["saliency_directory"] = os.path.join("analysis", "saliency", scfg.output_name)
  stats.write_json(os.path.join(out_dir, "explanation_evaluation.json"), summary)
  print(format_summary(summary), flush=True)
  return summary


def overall(rows: list, method: str, metric: str) -> dict:
  return next((r for r in rows if r["method"] == method and r["stratification"] == "all"
               and r["metric"] == metric), {})


def headline(result: dict, ecfg) -> dict:
  """The numbers the main job prints and the report shows."""
  roi_rows = result["roi"].get("summaries", [])
  methods = []
  for method in ecfg.saliency_methods:
    row = {"method": method}
    for metric in ("dice", "spearman", "pointing_game", "relevance_mass"):
      s = overall(roi_rows, method, metric)
      row.update({metric: s.get("mean"), f"{metric}_ci": [s.get("ci_low"), s.get("ci_high")]})
      if metric == "dice":  # defined for every case with an ROI (Spearman and relevance mass
        row["cases"] = s.get("n")  # are not for a constant or all-zero map)
    faith = next((r for r in result["faithfulness"] if r["method"] == method), {})
    row.update({k: faith.get(k) for k in ("deletion_auc", "insertion_auc")})
    last = [r for r in result["sanity"] if r["method"] == method]
    row["randomized_spearman"] = last[-1]["spearman"] if last else None
    methods.append(row)
  ifa_rows = {m: {"s_cam_r": next(r["r"] for r in res["consistency"] if r["variant"] == "s_cam"),
                  "cam_r": next(r["r"] for r in res["consistency"] if r["variant"] == "cam"),
                  "accuracy_all": res["masking"][0]["accuracy"],
                  "accuracy_principal": {r["fraction"]: r["accuracy"] for r in res["masking"]
                                         if r["features"] == "principal"},
                  "overfitting_relative_l2": res["overfitting"]["relative_l2"]}
              for m, res in result["ifa"].items()}
  random_row = next((r for r in result["faithfulness"] if r["method"] == "random"), {})
  baselines = faithfulness_baselines(ecfg) if result["faithfulness"] else None
  return {"split": result["split"], "checkpoint_step": result["checkpoint_step"],
          "num_examples": result["num_examples"], "methods": methods, "ifa": ifa_rows,
          "random_order": {k: random_row.get(k) for k in ("deletion_auc", "insertion_auc")},
          "faithfulness_baselines": baselines,
          "confounder": result.get("confounder")}


def faithfulness_baselines(ecfg) -> dict:
  """What the deletion / insertion curves perturb towards (`faithfulness_inputs`)."""
  sigma = ecfg.faithfulness.insertion_blur_sigma
  insertion = f"blurred (sigma {sigma} px)" if sigma > 0 else "black"
  return {"deletion": "black", "insertion": insertion, "insertion_blur_sigma": sigma}


def fmt(value, spec: str = ".3f") -> str:
  return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else \
      format(value, spec)


def format_summary(summary: dict) -> str:
  lines = [f"Explanation evaluation ({summary['split']}, {summary['num_examples']} examples):",
           "method        dice   spearman  pointing  rel_mass  deletion  insertion  randomized"]
  for r in summary["methods"]:
    lines.append(f"{r['method']:<13} {fmt(r['dice'])}  {fmt(r['spearman']):<8}  "
                 f"{fmt(r['pointing_game']):<8}  {fmt(r['relevance_mass']):<8}  "
                 f"{fmt(r['deletion_auc']):<8}  {fmt(r['insertion_auc']):<9}  "
                 f"{fmt(r['randomized_spearman'])}")
  finding = summary.get("confounder")
  if finding:
    lines.append(confounder_lines(finding))
  return "\n".join(lines)


def confounder_lines(finding: dict) -> str:
  cls = finding["affected_class"]
  rates = finding["rates"]
  lines = [f"Confounder finding: affected class {cls} (confounder in {rates[cls]:.0%} of its "
           f"images, {finding['other_rate']:.0%} of the other classes'); "
           f"alpha {finding['alpha']}",
           "method        dice with/without (p)     mass on artefact / same-class control "
           "(paired p)"]
  for r in finding["methods"]:
    lines.append(f"{r['method']:<13} {fmt(r.get('dice_with'))}/{fmt(r.get('dice_without'))} "
                 f"({fmt(r.get('dice_p'), '.2g')})".ljust(41) +
                 f"{fmt(r.get('mass_on_artefact'))} / {fmt(r.get('control_mass'))} "
                 f"({fmt(r.get('mass_p'), '.2g')})")
  unusual = {r["mass_controls"] for r in finding["methods"]
             if r.get("mass_controls") not in (None, CONTROLS_AS_PLANNED)}
  lines += [f"mass on artefact controls: {text}" for text in sorted(unusual)]
  features = finding.get("features")
  if features:
    lines.append(f"{features['method']} importance matrix on the artefact: "
                 f"{len(features['features'])} of {features['num_features']} features carry "
                 f"most of its {cls} activation and hold {features['concentration']:.0%} of "
                 f"{cls}'s importance; their FS-CAM puts "
                 f"{fmt(features['fs_fs_cam_mass'])} of its mass on the artefact vs "
                 f"{fmt(features['fs_cam_mass'])} for the full CAM "
                 f"(paired t {fmt(features['fs_statistic'], '.1f')}, "
                 f"p {fmt(features['fs_p'], '.2g')})")
  return "\n".join(lines)
