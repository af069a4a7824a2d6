"""BERT: parity with transformers' PyTorch BertModel on identical weights, HF parameter count."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxmm.models.bert import ONE_HOT_MAX_ROWS, Bert, Embedding, gelu
from jaxmm.third_party.bert_hf import params_from_hf_state_dict

KEY = jax.random.key(0, impl="rbg")
TINY = dict(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
            max_len=64, type_vocab_size=2)


@functools.cache
def hf_tiny():
  """A randomly initialised HF BertModel (no download) and its converted jaxmm params."""
  torch.manual_seed(0)
  config = transformers.BertConfig(
      vocab_size=TINY["vocab_size"], hidden_size=TINY["hidden_size"],
      num_hidden_layers=TINY["num_layers"], num_attention_heads=TINY["num_heads"],
      intermediate_size=TINY["intermediate_size"], max_position_embeddings=TINY["max_len"],
      type_vocab_size=TINY["type_vocab_size"], hidden_act="gelu", layer_norm_eps=1e-12)
  model = transformers.BertModel(config).eval()
  return model, params_from_hf_state_dict(model.state_dict())


def padded_inputs():
  rng = np.random.RandomState(0)
  ids = rng.randint(1, TINY["vocab_size"], (3, 10)).astype(np.int32)
  mask = np.ones((3, 10), np.int32)
  mask[1, 6:] = 0
  mask[2, 3:] = 0
  type_ids = np.zeros((3, 10), np.int32)
  type_ids[:, 4:] = 1
  return ids, mask, type_ids


def test_converted_tree_has_exactly_the_init_structure():
  _, params = hf_tiny()
  ids, _, _ = padded_inputs()
  init_shapes = jax.eval_shape(functools.partial(Bert(**TINY).init, train=False), KEY, ids)
  assert (jax.tree.map(lambda a: a.shape, init_shapes["params"])
          == jax.tree.map(lambda a: a.shape, params))


def test_matches_transformers_bert_with_padding():
  hf_model, params = hf_tiny()
  ids, mask, type_ids = padded_inputs()
  with torch.no_grad():
    expected = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                        attention_mask=torch.tensor(mask, dtype=torch.long),
                        token_type_ids=torch.tensor(type_ids, dtype=torch.long))
  features, out = Bert(**TINY).apply({"params": params}, ids, attention_mask=mask,
                                     token_type_ids=type_ids, train=False)
  np.testing.assert_allclose(out["last_hidden_state"], expected.last_hidden_state.numpy(),
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out["pooled"], expected.pooler_output.numpy(), atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(out["cls"], out["last_hidden_state"][:, 0])
  np.testing.assert_array_equal(features, out["cls"])
  pooled_features, _ = Bert(**TINY, use_pooler=True).apply(
      {"params": params}, ids, attention_mask=mask, token_type_ids=type_ids, train=False)
  np.testing.assert_array_equal(pooled_features, out["pooled"])


def test_padding_tokens_do_not_change_real_tokens():
  _, params = hf_tiny()
  ids, mask, type_ids = padded_inputs()
  _, out = Bert(**TINY).apply({"params": params}, ids, attention_mask=mask,
                              token_type_ids=type_ids, train=False)
  _, trimmed = Bert(**TINY).apply({"params": params}, ids[2:, :3], attention_mask=mask[2:, :3],
                                  token_type_ids=type_ids[2:, :3], train=False)
  np.testing.assert_allclose(out["last_hidden_state"][2, :3], trimmed["last_hidden_state"][0],
                             atol=1e-5)


def test_converter_drops_task_model_prefix_and_heads():
  hf_model, params = hf_tiny()
  state = {f"bert.{k}": v for k, v in hf_model.state_dict().items()}
  state["classifier.weight"] = torch.zeros(2, TINY["hidden_size"])
  converted = params_from_hf_state_dict(state)
  assert jax.tree.all(jax.tree.map(np.array_equal, converted, params))


def test_bert_base_parameter_count_equals_transformers():
  shapes = jax.eval_shape(functools.partial(Bert().init, train=False), KEY,
                          jnp.zeros((1, 8), jnp.int32))
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))
  with torch.device("meta"):  # shapes only, nothing allocated
    hf_model = transformers.BertModel(transformers.BertConfig())
  hf_count = sum(p.numel() for p in hf_model.parameters())
  assert count == hf_count == 109_482_240


def test_rejects_too_long_sequences_and_bad_head_count():
  with pytest.raises(ValueError, match="L <= max_len 64"):
    jax.eval_shape(functools.partial(Bert(**TINY).init, train=False), KEY,
                   jnp.zeros((1, 65), jnp.int32))
  with pytest.raises(ValueError, match="not divisible by num_heads 5"):
    jax.eval_shape(functools.partial(Bert(**{**TINY, "num_heads": 5}).init, train=False), KEY,
                   jnp.zeros((1, 8), jnp.int32))


def test_dropout_only_in_training():
  _, params = hf_tiny()
  ids, mask, _ = padded_inputs()
  model = Bert(**TINY, dropout=0.1)
  eval_a, _ = model.apply({"params": params}, ids, attention_mask=mask, train=False)
  eval_b, _ = model.apply({"params": params}, ids, attention_mask=mask, train=False)
  train_a, _ = model.apply({"params": params}, ids, attention_mask=mask, train=True,
                           rngs={"dropout": jax.random.key(1)})
  train_b, _ = model.apply({"params": params}, ids, attention_mask=mask, train=True,
                           rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(train_a, train_b)


@pytest.mark.parametrize("rows", [2, ONE_HOT_MAX_ROWS + 1])
def test_embedding_lookups_and_gradients_equal_a_plain_gather(rows):
  """One-hot (small vocabularies) and float32-gather lookups give a gather's values, and the
  table's gradient is the per-row sum of the output gradients (ids repeat, as padding does)."""
  rng = np.random.default_rng(rows)
  ids = jnp.asarray(np.where(np.arange(7) >= 4, 0, rng.integers(0, rows, (3, 7))))  # 0: padding
  module = Embedding(rows, 5, dtype=jnp.float32)
  params = module.init(KEY, ids)["params"]
  table = params["embedding"]
  assert table.dtype == jnp.float32 and table.shape == (rows, 5)
  np.testing.assert_allclose(module.apply({"params": params}, ids), table[ids], rtol=1e-6)
  np.testing.assert_allclose(module.apply({"params": params}, 3, method="leading"), table[:3])
  g = jnp.asarray(rng.normal(size=(3, 7, 5)), jnp.float32)
  grad = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, ids) * g))(params)
  expected = np.zeros((rows, 5), np.float32)
  np.add.at(expected, np.asarray(ids), np.asarray(g))
  np.testing.assert_allclose(grad["embedding"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rows", [2, ONE_HOT_MAX_ROWS + 1])
def test_ids_outside_the_vocabulary_give_nan_embeddings(rows, dtype):
  """Both lookups: a one-hot row of an id >= rows was zero and a gather wrapped -1 to the
  last row, silently; NaN is what the training loop's non-finite checks report."""
  ids = jnp.array([[0, rows - 1, rows, -1, rows + 5, -rows]])
  module = Embedding(rows, 5, dtype=dtype)
  params = module.init(KEY, ids)["params"]
  out = np.asarray(module.apply({"params": params}, ids).astype(jnp.float32))
  np.testing.assert_array_equal(np.isnan(out).all(-1), [[False, False, True, True, True, True]])
  assert np.isfinite(out[0, :2]).all()
  table = np.asarray(params["embedding"].astype(dtype).astype(jnp.float32))
  np.testing.assert_allclose(out[0, :2], table[[0, rows - 1]], rtol=1e-2)


def test_out_of_range_token_type_ids_make_bert_features_nan():
  _, params = hf_tiny()
  ids, mask, type_ids = padded_inputs()
  type_ids[1, 2] = TINY["type_vocab_size"]
  features, _ = Bert(**TINY).apply({"params": params}, ids, attention_mask=mask, train=False,
                                   token_type_ids=type_ids)
  np.testing.assert_array_equal(np.isnan(features).any(-1), [False, True, False])


def test_bfloat16_embedding_gradients_scatter_only_into_float32():
  """GPUs have no bfloat16 atomic add: a bfloat16 scatter-add into an embedding table became
  compare-and-swap loops that took 55 of 72 ms of a BERT-base step on an H200. The gradient
  graph of a bfloat16 BERT holds only float32 scatters (the word table) and none for the
  token-type and position tables."""
  model = Bert(**TINY, dtype=jnp.bfloat16)
  ids, mask, type_ids = (jnp.asarray(a) for a in padded_inputs())
  params = model.init(KEY, ids, train=False)["params"]

  def loss(p):
    features, _ = model.apply({"params": p}, ids, train=False, attention_mask=mask,
                              token_type_ids=type_ids)
    return jnp.sum(features.astype(jnp.float32))

  hlo = jax.jit(jax.grad(loss)).lower(params).compiler_ir("hlo").as_hlo_text()
  scatters = [line.split("=", 1)[1].split(" scatter(")[0].strip()
              for line in hlo.splitlines() if " scatter(" in line]
  vocab, hidden = TINY["vocab_size"], TINY["hidden_size"]
  assert scatters == [f"f32[{vocab},{hidden}]{{1,0}}"], scatters


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("train", [False, True])
def test_every_matmul_runs_in_the_compute_dtype(dtype, train):
  """The attention softmax runs in float32 but its probabilities are cast back: a bfloat16
  BERT's probs x V product (and the dropout before it) ran in float32."""
  model = Bert(**TINY, dtype=dtype)
  ids, mask, _ = (jnp.asarray(a) for a in padded_inputs())
  params = jax.eval_shape(functools.partial(model.init, train=False), KEY, ids)["params"]
  forward = lambda p: model.apply({"params": p}, ids, train=train, attention_mask=mask,
                                  rngs={"dropout": KEY})[0]
  lines = str(jax.make_jaxpr(forward)(params)).splitlines()
  outputs = [line.split("=")[0].split(":")[-1].strip() for line in lines
             if "= dot_general[" in line]
  # per layer q, k, v, scores, probs x V, attention output, intermediate, output; then the
  # token-type lookup (a one-hot product) and the pooler
  assert len(outputs) == TINY["num_layers"] * 8 + 2, outputs
  prefix = "bf16[" if dtype == jnp.bfloat16 else "f32["
  assert all(out.startswith(prefix) for out in outputs), outputs


def test_gelu_is_jax_exact_gelu():
  x = jnp.linspace(-12.0, 12.0, 4001)
  np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
  grad = jax.vmap(jax.grad(gelu))(x)
  np.testing.assert_allclose(grad, jax.vmap(jax.grad(
      lambda v: jax.nn.gelu(v, approximate=False)))(x), atol=2e-6)
