"""BERT-family directories: parity with transformers on identical weights, config mapping,
rejected configs, and the tokenizer loaded from the same directory.

Each case saves a randomly initialised transformers model (BertModel, or BertForMaskedLM for
the CXR-BERT-like one) to a temporary Hugging Face directory, converts it, and compares the
jaxmm Bert's last_hidden_state / cls / pooled with the PyTorch model on padded inputs.
"""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from jaxmm.data import tokenizer as tokenizer_lib
from jaxmm.models.bert import Bert
from jaxmm.third_party import bert_hf

TOL = dict(atol=1e-4, rtol=1e-4)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "acute", "cardio", "##pulmonary",
         "process", "lungs", "are", "clear", "Clear", "."]
SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=40)
MINILM = dict(vocab_size=1000, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=128)


def save_hf_bert(directory, dims, *, masked_lm=False, weights="safetensors"):
  """A random transformers BERT saved as a HF directory (+ vocab.txt); returns its BertModel.

  masked_lm saves a BertForMaskedLM (prefix "bert.", MLM head, no pooler). weights "bin"
  writes pytorch_model.bin with torch.save (transformers 5 save_pretrained writes safetensors
  only).
  """
  torch.manual_seed(0)
  config = transformers.BertConfig(**dims, hidden_act="gelu", layer_norm_eps=1e-12)
  model = (transformers.BertForMaskedLM if masked_lm else transformers.BertModel)(config).eval()
  model.save_pretrained(directory)
  if weights == "bin":
    os.remove(os.path.join(directory, "model.safetensors"))
    torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
  with open(os.path.join(directory, "vocab.txt"), "w") as f:
    f.write("\n".join(VOCAB) + "\n")
  return model.bert if masked_lm else model


def make_cxr_bert_like(directory):
  """A BiomedVLP-CXR-BERT-shaped directory: model_type "cxr-bert", a BertForMaskedLM's
  weights plus a `cls_projection_head` (projection_size 16)."""
  bert = save_hf_bert(directory, SMALL, masked_lm=True)
  path = os.path.join(directory, "model.safetensors")
  tensors = load_file(path)
  rng = np.random.RandomState(0)
  tensors["cls_projection_head.dense_to_hidden.weight"] = rng.randn(32, 32).astype(np.float32)
  tensors["cls_projection_head.dense_to_output.weight"] = rng.randn(16, 32).astype(np.float32)
  save_file(tensors, path)
  with open(os.path.join(directory, "config.json")) as f:
    config = json.load(f)
  config.update(model_type="cxr-bert", architectures=["CXRBertModel"], projection_size=16)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  return bert


def padded_inputs(vocab_size, length=12):
  rng = np.random.RandomState(1)
  ids = rng.randint(1, vocab_size, (3, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  mask[2, 3:] = 0
  type_ids = np.zeros_like(ids)
  type_ids[:, 5:] = 1
  return ids, mask, type_ids


def compare(hf_bert, params, fields) -> float:
  """jaxmm Bert of `fields` vs the PyTorch BertModel; returns the max abs difference."""
  ids, mask, type_ids = padded_inputs(fields["vocab_size"])
  with torch.no_grad():
    expected = hf_bert(input_ids=torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long),
                       token_type_ids=torch.tensor(type_ids, dtype=torch.long))
  model = Bert(**fields, dropout=0.0)
  apply = jax.jit(lambda p, i, m, t: model.apply({"params": p}, i, attention_mask=m,
                                                 token_type_ids=t, train=False)[1])
  if "pooler" not in params:  # a masked-LM checkpoint: jaxmm's pooler stays initialised
    params = {**params, "pooler": {"dense": {
        "kernel": np.zeros((fields["hidden_size"],) * 2, np.float32),
        "bias": np.zeros(fields["hidden_size"], np.float32)}}}
  out = apply(params, ids, mask, type_ids)
  pairs = [("last_hidden_state", expected.last_hidden_state), ("cls",
                                                               expected.last_hidden_state[:, 0])]
  if expected.pooler_output is not None:
    pairs.append(("pooled", expected.pooler_output))
  for key, value in pairs:
    np.testing.assert_allclose(out[key], value.numpy(), err_msg=key, **TOL)
  return max(float(np.max(np.abs(np.asarray(out[k]) - v.numpy()))) for k, v in pairs)


@pytest.mark.parametrize("dims,weights", [(SMALL, "safetensors"), (SMALL, "bin"),
                                          (MINILM, "safetensors")], ids=["small-safetensors",
                                                                          "small-bin", "minilm"])
def test_hf_bert_directory_matches_transformers(tmp_path, dims, weights):
  hf_bert = save_hf_bert(tmp_path, dims, weights=weights)
  params, fields = bert_hf.load_hf_bert(tmp_path)
  assert fields == {"vocab_size": dims["vocab_size"], "hidden_size": dims["hidden_size"],
                    "num_layers": dims["num_hidden_layers"],
                    "num_heads": dims["num_attention_heads"],
                    "intermediate_size": dims["intermediate_size"],
                    "max_len": dims["max_position_embeddings"], "type_vocab_size": 2}
  assert set(params) == {"embeddings", "encoder", "pooler"}
  compare(hf_bert, params, fields)


def test_cxr_bert_like_directory_drops_prefix_and_heads(tmp_path):
  hf_bert = make_cxr_bert_like(tmp_path)
  params, fields = bert_hf.load_hf_bert(tmp_path)
  assert set(params) == {"embeddings", "encoder"}  # no pooler, no MLM / projection heads
  compare(hf_bert, params, fields)


def test_legacy_layer_norm_names_gamma_and_beta_load_as_weight_and_bias(tmp_path):
  # The original Google BERT uploads name LayerNorm parameters gamma / beta; transformers
  # renames them on load, and so must jaxmm.
  hf_bert = save_hf_bert(tmp_path, SMALL, masked_lm=True)
  path = os.path.join(tmp_path, "model.safetensors")
  tensors = load_file(path)
  legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
             .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in tensors.items()}
  assert any(k.endswith("LayerNorm.gamma") for k in legacy)
  save_file(legacy, path)
  params, fields = bert_hf.load_hf_bert(tmp_path)
  compare(hf_bert, params, fields)
  with pytest.raises(ValueError, match=r"unexpected LayerNorm parameter "
                                       r"bert.embeddings.LayerNorm.alpha"):
    bert_hf.params_from_hf_state_dict({**legacy, "bert.embeddings.LayerNorm.alpha": np.ones(32)},
                                      str(tmp_path))


def test_converted_tree_has_the_init_structure(tmp_path):
  save_hf_bert(tmp_path, SMALL)
  params, fields = bert_hf.load_hf_bert(tmp_path)
  shapes = jax.eval_shape(lambda: Bert(**fields).init(jax.random.key(0), np.zeros((1, 4), int),
                                                      train=False))
  assert jax.tree.map(lambda a: a.shape, shapes["params"]) == jax.tree.map(np.shape, params)


@pytest.mark.parametrize("overrides,message", [
    (dict(hidden_act="gelu_new"), "hidden_act='gelu_new' is not supported: jaxmm's Bert uses "
                                  r"exact \(erf\) 'gelu'"),
    (dict(layer_norm_eps=1e-5), "layer_norm_eps=1e-05 is not supported"),
    (dict(model_type="roberta"), r"model_type='roberta' is not supported: expected one of "
                                 r"\('bert', 'cxr-bert'\)"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type='relative_key'"),
    (dict(is_decoder=True), "is_decoder=True"),
    (dict(num_attention_heads=5), "num_attention_heads=5 .*does not divide hidden_size 32"),
])
def test_configs_jaxmm_cannot_represent_are_rejected(overrides, message):
  config = {"model_type": "bert", **SMALL, "type_vocab_size": 2, **overrides}
  with pytest.raises(ValueError, match=message):
    bert_hf.bert_config_from_hf(config)


def test_missing_paths_and_foreign_state_dicts(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'bert-base-uncased' does not exist"):
    bert_hf.load_hf_bert("bert-base-uncased")
  with pytest.raises(ValueError, match="lacks"):
    bert_hf.bert_config_from_hf({"model_type": "bert", "hidden_size": 32})
  with pytest.raises(ValueError, match="expected one BERT word embedding .* found none"):
    bert_hf.params_from_hf_state_dict({"conv1.weight": np.zeros(3)})


def tokens(tok, text):
  return tok.convert_ids_to_tokens(tok(text)["input_ids"])


def test_tokenizer_loads_from_the_model_directory(tmp_path):
  save_hf_bert(tmp_path / "vocab_only", SMALL)
  tok = tokenizer_lib.load_pretrained_tokenizer(str(tmp_path / "vocab_only"))
  assert tok("No acute cardiopulmonary process.")["input_ids"] == [2, 5, 6, 7, 8, 9, 14, 3]
  assert tok.vocab_size == len(VOCAB)
  # tokenizer.json only, with a cased tokenizer_config.json: its settings are honoured.
  transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)},
                                 do_lower_case=False).save_pretrained(tmp_path / "cased")
  (tmp_path / "cased" / "vocab.txt").unlink(missing_ok=True)
  cased = tokenizer_lib.load_pretrained_tokenizer(str(tmp_path / "cased"))
  assert tokens(cased, "lungs are Clear") == ["[CLS]", "lungs", "are", "Clear", "[SEP]"]
  assert tokens(tok, "lungs are Clear") == ["[CLS]", "lungs", "are", "clear", "[SEP]"]


def test_tokenizer_errors_name_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="'/no/such/bert' does not exist"):
    tokenizer_lib.load_pretrained_tokenizer("/no/such/bert")
  with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*: expected one of "
                                              r"\['tokenizer.json', 'vocab.txt'\]"):
    tokenizer_lib.load_pretrained_tokenizer(str(tmp_path))
