"""Hugging Face BERT-family directories -> jaxmm Bert params and the config fields to build it.

A directory holds config.json, model.safetensors or pytorch_model.bin, and the tokenizer
(vocab.txt and/or tokenizer.json; jaxmm.data.tokenizer.load_pretrained_tokenizer reads it).
BERT-base, BiomedVLP-CXR-BERT-style models (model_type "cxr-bert": a BertForMaskedLM with an
extra projection head) and MiniLM-style sizes all map onto jaxmm.models.bert.Bert, whose
parameter tree mirrors HF BertModel; the sizes come from config.json (`bert_config_from_hf`).

Weights: the BertModel part is taken, under whatever prefix the task model put it ("bert."
for BertForMaskedLM / CXR-BERT / classifiers, none for BertModel); task heads (cls.*,
classifier.*, cls_projection_head.*) and buffers (position_ids) are skipped. A checkpoint
saved without the pooler (BertForMaskedLM, CXR-BERT) gives params without "pooler": the
training loader keeps jaxmm's initial pooler then, and refuses use_pooler=True.
"""
import os
from typing import Any, Mapping

import numpy as np

from jaxmm.models.bert import LAYER_NORM_EPS
from jaxmm.third_party import checkpoint_files

SUPPORTED_MODEL_TYPES = ("bert", "cxr-bert")
# config.json key -> jaxmm text config key (jaxmm.models.build.build_text_encoder)
CONFIG_FIELDS = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size", "max_position_embeddings": "max_len",
    "type_vocab_size": "type_vocab_size",
}
ENCODER_PARTS = ("embeddings.", "encoder.", "pooler.")
ANCHOR = "embeddings.word_embeddings.weight"  # locates the BertModel prefix


def bert_config_from_hf(config: Mapping[str, Any], source: str = "config.json") -> dict:
  """jaxmm text config fields {vocab_size, hidden_size, num_layers, num_heads,
  intermediate_size, max_len, type_vocab_size} from a HF BertConfig dict; ValueError naming
  the key for what jaxmm's Bert cannot represent (other activations, LayerNorm eps, position
  embedding types, decoders)."""
  def reject(key: str, why: str) -> ValueError:
    return ValueError(f"{source}: {key}={config.get(key)!r} is not supported: {why}")

  if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
    raise reject("model_type", f"expected one of {SUPPORTED_MODEL_TYPES}")
  if config.get("hidden_act", "gelu") != "gelu":
    raise reject("hidden_act", "jaxmm's Bert uses exact (erf) 'gelu'")
  if float(config.get("layer_norm_eps", LAYER_NORM_EPS)) != LAYER_NORM_EPS:
    raise reject("layer_norm_eps", f"jaxmm's Bert uses {LAYER_NORM_EPS}")
  if config.get("position_embedding_type", "absolute") != "absolute":
    raise reject("position_embedding_type", "jaxmm's Bert has absolute position embeddings")
  for key in ("is_decoder", "add_cross_attention"):
    if config.get(key, False):
      raise reject(key, "jaxmm's Bert is an encoder without cross-attention")
  missing = [key for key in CONFIG_FIELDS if key not in config]
  if missing:
    raise ValueError(f"{source} lacks {missing}")
  fields = {ours: int(config[theirs]) for theirs, ours in CONFIG_FIELDS.items()}
  if fields["hidden_size"] % fields["num_heads"]:
    raise reject("num_attention_heads", f"it does not divide hidden_size "
                 f"{fields['hidden_size']}")
  return fields


def bert_prefix(state_dict: Mapping[str, Any], source: str = "state dict") -> str:
  """The prefix of the BertModel weights ("" or e.g. "bert."), found from the one key ending
  in embeddings.word_embeddings.weight."""
  found = [key[:-len(ANCHOR)] for key in state_dict if key.endswith(ANCHOR)]
  if len(found) != 1 or (found[0] and not found[0].endswith(".")):
    raise ValueError(f"{source}: expected one BERT word embedding ('[prefix.]{ANCHOR}'), "
                     f"found {found or 'none'}")
  return found[0]


# LayerNorm parameter names -> flax's; older checkpoints (the original TF-converted BERT
# uploads) say gamma / beta, which transformers itself still renames on load.
LAYER_NORM_LEAVES = {"weight": "scale", "bias": "bias", "gamma": "scale", "beta": "bias"}


def params_from_hf_state_dict(state_dict: Mapping[str, Any],
                              source: str = "state dict") -> dict:
  """HF BertModel (or task model) state dict -> jaxmm `Bert` params tree, by walking names.

  `a.b.LayerNorm.weight` (or `.gamma`) -> a/b/LayerNorm/scale (`.bias` or `.beta` -> bias);
  `a.x_embeddings.weight` -> a/x_embeddings/embedding; any other `weight` [out, in] -> kernel
  [in, out]; `bias` -> bias. The BertModel
  prefix (bert_prefix) is dropped; keys outside embeddings/encoder/pooler (task heads) and
  buffers (position_ids) are skipped. Values become float32 NumPy arrays (torch CPU tensors
  convert through NumPy, so this module needs no torch).
  """
  prefix = bert_prefix(state_dict, source)
  params: dict = {}
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      continue
    key = key[len(prefix):]
    if not key.startswith(ENCODER_PARTS) or key.endswith("_ids"):
      continue
    *path, leaf = key.split(".")
    value = np.asarray(value, dtype=np.float32)
    if path[-1] == "LayerNorm":
      if leaf not in LAYER_NORM_LEAVES:
        raise ValueError(f"{source}: unexpected LayerNorm parameter {prefix}{key}; known: "
                         f"{sorted(LAYER_NORM_LEAVES)}")
      leaf = LAYER_NORM_LEAVES[leaf]
    elif path[-1].endswith("_embeddings"):
      leaf = "embedding"
    elif leaf == "weight":
      leaf, value = "kernel", value.T
    node = params
    for name in path:
      node = node.setdefault(name, {})
    node[leaf] = value
  return params


def load_hf_bert(model_dir: str | os.PathLike) -> tuple[dict, dict]:
  """(params, text config fields) of a local HF BERT-family directory.

  params is the jaxmm Bert tree (without "pooler" when the checkpoint has none); the fields
  are bert_config_from_hf's. config.json is checked before any weight is read.
  """
  source = os.fspath(model_dir)
  fields = bert_config_from_hf(checkpoint_files.read_hf_config(model_dir),
                               os.path.join(source, checkpoint_files.HF_CONFIG_FILE))
  params = params_from_hf_state_dict(checkpoint_files.load_hf_state_dict(model_dir), source)
  return params, fields
