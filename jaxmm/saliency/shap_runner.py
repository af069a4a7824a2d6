"""`--mode=shap`: SHAP of a trained checkpoint's metadata fields and report tokens.

For the first `config.shap.num_examples` examples of `config.shap.split`:
  * a model with a `meta` input: exact field SHAP (age, sex, localization, dx_type as the
    players; shap_explainers.metadata_field_shap) of every class probability, the example's
    image (and text) held fixed, absent fields filled from `background_size` training examples
    drawn with `seed`. Written to `DIR/analysis/shap/fields.npz`: values [N, F, K],
    base_values [N, K], outputs [N, K] (the probabilities: base + sum of values), data [N, F]
    (field codes: age in years, category indices), display_data [N, F] (str), predicted [N]
    (the explained class of the figures), label, index, id, background_index [B],
    field_names [F], class_names [K], output ("probability"), checkpoint_step.
  * a model with a `text` input: token SHAP (Partition explainer, shap.maskers.Text over the
    run's tokenizer; shap_explainers.token_shap) of the top-k sigmoid/softmax probabilities,
    the image (and metadata) held fixed. Written to `DIR/analysis/shap/tokens.json`: settings
    and per example index, id, tokens, labels, label_names, scores, base_values, values [k][T].
Figures are made from these files by jaxmm.report.shap_figures (the report layer reads the
workdir; this layer does not import it): shap_figures(DIR/analysis/shap, DIR/figures/shap).

The checkpoint is restored into an abstract template (loop.restore_checkpoint), so the run
starts in about a second. The model is called through one jitted function that vmaps over the masked
rows with the fixed inputs unbatched, so an example's image goes through the image encoder
once however many rows are evaluated; the row count is padded to a fixed size so it compiles
once. Token SHAP's first call compiles shap's numba kernels (several seconds, once per process).
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxmm.data import pipeline
from jaxmm.data import tokenizer as tokenizer_lib
from jaxmm.data.atomic import write_npz_atomic, write_text_atomic
from jaxmm.models.fusion import class_probabilities
from jaxmm.saliency import model_fns
from jaxmm.saliency import runner as saliency_runner
from jaxmm.saliency import shap_explainers
from jaxmm.train import checkpointing, config_lib, distributed, loop

OUTPUT = "probability"


def default_config() -> ml_collections.ConfigDict:
  """config.shap: what `--mode=shap` explains (any key may be overridden on the command line)."""
  return ml_collections.ConfigDict({
      "split": "test",
      "num_examples": 32,        # the first examples of the split
      "background_size": 32,     # training examples standing in for absent fields
      "background_split": "train",
      "checkpoint": "best",
      "seed": 0,                 # background draw; token SHAP's tie-breaks
      "top_k": 3,                # token SHAP: each report's highest labels (paper 001)
      "max_evals": 300,          # token SHAP: model evaluations per report
      "text_batch_size": 64,     # token SHAP: masked reports per model call
      "mask_token": "",          # "" deletes masked tokens; "[MASK]" replaces them
  })


def shrink_for_smoke(shap_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Few examples, a small background and few evaluations, so a smoke run takes seconds."""
  shap_config.update({"num_examples": 4, "background_size": 8, "max_evals": 64,
                      "text_batch_size": 32})
  return shap_config


def shap_config(config) -> ml_collections.ConfigDict:
  """The defaults updated with `config.shap`, checked: unknown keys (with the closest one),
  counts below 1 and a checkpoint other than "best" / "latest" raise."""
  out = default_config()
  for key, value in config_lib.checked_items(config.get("shap"), out, "config.shap"):
    if key == "mask_token":
      with out.ignore_type():
        out[key] = value
    else:
      out[key] = value
  for key in ("num_examples", "background_size", "top_k", "max_evals", "text_batch_size"):
    if int(out[key]) < 1:
      raise ValueError(f"config.shap.{key} must be >= 1, got {out[key]}")
  checkpointing.check_checkpoint_name(out.checkpoint, "config.shap.checkpoint")
  return out


def example_rows_fn(model, variables: dict, multilabel: bool):
  """f(fixed, rows) -> class probabilities [M, K]: `fixed` is one example's other model inputs
  (no batch axis), `rows` the masked modality's inputs [M, ...]; jitted, fixed inputs unbatched
  under the vmap (computed once per call)."""
  apply = model_fns.linen_apply_fn(model, variables, train=False)

  def one(fixed, row):
    logits, _ = apply({k: v[None] for k, v in {**fixed, **row}.items()})
    return class_probabilities(logits, multilabel)[0]

  return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def fixed_inputs(inputs: dict, i: int, masked: tuple) -> dict:
  """Example i's model inputs other than the masked keys, as device arrays."""
  return {k: jnp.asarray(v[i]) for k, v in inputs.items() if k not in masked}


def read_split(run, split: str, indices: np.ndarray) -> tuple[dict, dict]:
  """(model inputs [N, ...], raw records) of the examples at `indices` of `split`."""
  features = run.builder.info.features
  id_field = tuple(f for f in pipeline.ID_FIELDS if f in features)[:1]
  fields = tuple(dict.fromkeys(pipeline.raw_fields(run.config.data, run.preprocessor) +
                               id_field))
  batch, raw = pipeline.read_examples(run.builder.as_data_source(split), run.preprocessor,
                                      indices, fields, len(indices))
  return {k: batch[k] for k in pipeline.MODEL_KEYS if k in batch}, raw


def background_indices(run, scfg) -> np.ndarray:
  """`background_size` positions of the background split, drawn with `seed` (sorted)."""
  size = run.info.split_sizes[scfg.background_split]
  rng = np.random.default_rng(scfg.seed)
  return np.sort(rng.choice(size, min(size, scfg.background_size), replace=False))


def background_records(run, split: str, indices: np.ndarray) -> dict:
  """The metadata fields of the background examples (raw records, no images read)."""
  source = run.builder.as_data_source(split)
  fields = run.preprocessor.meta_encoder.field_names
  return pipeline.stack_examples([{f: source[int(i)][f] for f in fields} for i in indices])


def explain_fields(run, scfg, rows_fn, inputs: dict, raw: dict, common: dict) -> dict:
  """Field SHAP of every class probability; the arrays of fields.npz."""
  encoder = run.preprocessor.meta_encoder
  bg_index = background_indices(run, scfg)
  background = shap_explainers.metadata_field_codes(
      encoder, background_records(run, scfg.background_split, bg_index))
  codes = shap_explainers.metadata_field_codes(encoder, {f: raw[f] for f in encoder.field_names})
  encode = shap_explainers.field_code_encoder(encoder)

  def predict(meta: np.ndarray, i: int) -> np.ndarray:
    return np.asarray(rows_fn(fixed_inputs(inputs, i, ("meta",)), {"meta": jnp.asarray(meta)}))

  explanation = shap_explainers.metadata_field_shap(
      predict, codes, background, encode, encoder.field_names,
      output_names=run.info.class_names,
      display_data=shap_explainers.field_display_values(encoder, codes))
  outputs = explanation.base_values + explanation.values.sum(1)
  return {"values": explanation.values, "base_values": explanation.base_values,
          "outputs": outputs, "data": codes, "display_data": explanation.display_data,
          "predicted": outputs.argmax(1).astype(np.int64),
          "background_index": bg_index.astype(np.int64),
          "field_names": np.array(encoder.field_names, dtype=str), "output": np.array(OUTPUT),
          "checkpoint_step": np.array(common["checkpoint_step"]),
          "split": np.array(scfg.split), "index": common["index"], "id": common["id"],
          "label": common["label"], "class_names": np.array(common["class_names"], dtype=str)}


def model_text(text: str, tokenizer, max_len: int) -> str:
  """The cleaned report cut to the tokens the model reads (max_len with [CLS] / [SEP])."""
  text = tokenizer_lib.clean_report(text)
  encoded = tokenizer(text, truncation=True, max_length=max_len, return_offsets_mapping=True)
  ends = [end for _, end in encoded["offset_mapping"] if end]
  return text[:max(ends)] if ends else text


def explain_tokens(run, scfg, rows_fn, inputs: dict, raw: dict, common: dict) -> dict:
  """Token SHAP of each report's top-k probabilities; the document of tokens.json."""
  tokenizer, data = run.preprocessor.tokenizer, run.config.data
  texts = [model_text(t, tokenizer, data.max_text_len) for t in raw[data.text_key]]

  def predict(batch_texts: list, i: int) -> np.ndarray:
    tokens = tokenizer(batch_texts, padding="max_length", truncation=True,
                       max_length=data.max_text_len, return_tensors="np")
    both = np.stack([tokens["input_ids"], tokens["attention_mask"]], 1).astype(np.int32)
    fixed = fixed_inputs(inputs, i, ("text_ids", "text_mask"))
    return shap_explainers.padded_rows_call(
        lambda rows: rows_fn(fixed, {"text_ids": jnp.asarray(rows[:, 0]),
                                     "text_mask": jnp.asarray(rows[:, 1])}),
        both, scfg.text_batch_size)

  results = shap_explainers.token_shap(predict, texts, tokenizer, top_k=scfg.top_k,
                                       max_evals=scfg.max_evals,
                                       batch_size=scfg.text_batch_size,
                                       mask_token=scfg.mask_token, seed=scfg.seed)
  names = common["class_names"]
  examples = [{"index": i, "id": str(common["id"][i]), "label": common["label"][i].tolist(),
               "text": text, "tokens": r.tokens, "labels": r.labels.tolist(),
               "label_names": [names[k] for k in r.labels], "scores": r.scores.tolist(),
               "base_values": r.base_values.tolist(), "values": r.values.tolist()}
              for i, (r, text) in enumerate(zip(results, texts))]
  return {"split": scfg.split, "checkpoint_step": common["checkpoint_step"], "output": OUTPUT,
          "top_k": scfg.top_k, "max_evals": scfg.max_evals, "mask_token": scfg.mask_token,
          "seed": scfg.seed, "class_names": list(names), "examples": examples}


def id_values(raw: dict, n: int) -> np.ndarray:
  field = next((f for f in pipeline.ID_FIELDS if f in raw), None)
  return np.asarray(raw[field]).astype(str) if field else np.arange(n).astype(str)


def check_modalities(modalities) -> None:
  """The model has a modality SHAP explains (checked before the run is set up)."""
  if "meta" not in modalities and "text" not in modalities:
    raise ValueError(f"--mode=shap explains metadata fields or report tokens; this model's "
                     f"modalities are {list(modalities)}")


def check_run(run, scfg) -> None:
  """The model has a modality SHAP explains, and the configured splits exist."""
  check_modalities(tuple(run.model.modalities))
  for key in ("split", "background_split"):
    if scfg[key] not in run.info.split_sizes:
      raise ValueError(f"unknown config.shap.{key} {scfg[key]!r}; valid: "
                       f"{sorted(run.info.split_sizes)}")


def write_json(path: str, document: dict) -> None:
  write_text_atomic(path, json.dumps(document, indent=1))


# What run_shap computes for a model with each modality: (explain function, file, writer).
PARTS = {"meta": (explain_fields, "fields.npz", write_npz_atomic),
         "text": (explain_tokens, "tokens.json", write_json)}


def run_shap(config, workdir: str) -> dict:
  """Computes config.shap's explanations from the workdir's checkpoint; returns a summary:
  the directory, each written file under "fields" / "tokens", counts, seconds per part."""
  scfg = shap_config(config)
  check_modalities(tuple(config.model.get("modalities", ("image",))))
  start = time.perf_counter()
  run = loop.setup_trained_run(config, workdir)
  try:
    check_run(run, scfg)
    variables, step = saliency_runner.restore_variables(run, scfg.checkpoint)
  finally:
    run.checkpointer.close()
  n = min(scfg.num_examples, run.info.split_sizes[scfg.split])
  inputs, raw = read_split(run, scfg.split, np.arange(n))
  rows_fn = example_rows_fn(run.model, variables, run.info.multilabel)
  common = {"index": np.arange(n, dtype=np.int64), "id": id_values(raw, n),
            "label": np.asarray(raw[run.config.data.label_key]),
            "class_names": list(run.info.class_names), "checkpoint_step": step}
  out_dir = os.path.join(workdir, "analysis", "shap")
  summary = {"directory": out_dir, "num_examples": n, "checkpoint_step": step,
             "seconds": {"setup": time.perf_counter() - start}}
  for modality, (explain, filename, write) in PARTS.items():
    if modality in run.model.modalities:
      t = time.perf_counter()
      result = explain(run, scfg, rows_fn, inputs, raw, common)
      name = os.path.splitext(filename)[0]
      summary[name] = os.path.join(out_dir, filename)
      if jax.process_index() == 0:
        write(summary[name], result)
      summary["seconds"][name] = time.perf_counter() - t
  # Every process computes (the model spans their devices); process 0 writes, and no process
  # goes on (to draw figures from the files, say) before it has.
  distributed.barrier(f"shap files of {out_dir}")
  summary["seconds"]["total"] = time.perf_counter() - start
  print(f"shap: {n} {scfg.split} examples of checkpoint step {step}: "
        f"{', '.join(k for k in ('fields', 'tokens') if k in summary)} in {out_dir}, "
        f"{summary['seconds']['total']:.1f} s", flush=True)
  return summary


def load_fields(directory: str) -> dict[str, np.ndarray]:
  """fields.npz of a shap directory as a dict of arrays."""
  with np.load(os.path.join(directory, "fields.npz")) as data:
    return {k: data[k] for k in data.files}


def load_tokens(directory: str) -> dict:
  """tokens.json of a shap directory."""
  with open(os.path.join(directory, "tokens.json")) as f:
    return json.load(f)
