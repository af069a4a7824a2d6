"""BERT text encoder whose parameter tree mirrors Hugging Face `BertModel`.

transformers 5 has no Flax models, so jaxmm carries its own: token + position + segment
embeddings, LayerNorm (eps 1e-12), dropout (`jaxmm.models.dropout`), post-LN transformer
layers with exact (erf) GELU, and the tanh pooler on [CLS]. Module names follow the PyTorch
module names, so `encoder.layer.0.attention.self.query.weight` is
`encoder/layer/0/attention/self/query/kernel` (transposed) and a checkpoint converts by
walking names (`jaxmm.third_party.bert_hf.params_from_hf_state_dict`).
"""
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm.models import dropout as dropout_lib

# Google's BERT miniatures (tiny .. medium) and the two original sizes; intermediate = 4 x hidden.
BERT_SIZES = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "medium": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}

LAYER_NORM_EPS = 1e-12
weight_init = nn.initializers.normal(stddev=0.02)  # HF BertConfig.initializer_range


def dense(features: int, dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=weight_init, dtype=dtype, name=name)


def layer_norm(dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name="LayerNorm")


# Vocabularies up to this size are looked up as one-hot matrix products (see Embedding).
ONE_HOT_MAX_ROWS = 64


class Embedding(nn.Module):
  """A float32 table `embedding` [num_embeddings, features] (nn.Embed's parameter, same name,
  shape and initialisation), looked up in a way whose gradient is fast on GPUs.

  nn.Embed casts the table to the compute dtype and gathers from it, so its gradient is a
  scatter-add into a bfloat16 table; GPUs have no bfloat16 atomic add, so XLA emits
  compare-and-swap loops, which serialise when many tokens share a row (all token types are 0,
  padding is one id). One BERT-base step (batch 64 x 128 tokens, bfloat16) spent 55 of its 72
  ms in that scatter on an H200. Here rows are gathered from the float32 table (the gradient
  scatter adds in float32, which GPUs do natively) and cast afterwards; a small vocabulary
  (<= ONE_HOT_MAX_ROWS, e.g. token types) is a one-hot matrix product, with no scatter at all;
  `leading(n)` (positions 0..n-1) is a slice. An id outside the vocabulary (< 0 or >=
  num_embeddings) gives a NaN embedding, which the training loop's non-finite checks report,
  on both paths (a gather would wrap a negative id and a one-hot row would be zero: silent).
  """
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param("embedding", weight_init, (self.num_embeddings, self.features),
                                jnp.float32)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """ids [...] int -> [..., features] in `dtype`; NaN rows for ids outside the vocabulary."""
    if self.num_embeddings <= ONE_HOT_MAX_ROWS:
      one_hot = jax.nn.one_hot(ids, self.num_embeddings, dtype=self.dtype)
      rows = jnp.dot(one_hot, self.embedding.astype(self.dtype))
    else:
      rows = jnp.take(self.embedding, ids, axis=0, mode="clip").astype(self.dtype)
    in_vocabulary = (ids >= 0) & (ids < self.num_embeddings)
    return jnp.where(in_vocabulary[..., None], rows, jnp.nan)

  def leading(self, n: int) -> jax.Array:
    """Rows 0..n-1 [n, features] in `dtype` (positions of a length-n sequence)."""
    return self.embedding[:n].astype(self.dtype)


class BertEmbeddings(nn.Module):
  """Word + position + token-type embeddings -> LayerNorm -> dropout. ids [N, L] -> [N, L, H]."""
  vocab_size: int
  hidden_size: int
  max_len: int
  type_vocab_size: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, type_ids: jax.Array, *, train: bool) -> jax.Array:
    embed = functools.partial(Embedding, features=self.hidden_size, dtype=self.dtype)
    x = (embed(self.vocab_size, name="word_embeddings")(ids)
         + embed(self.max_len, name="position_embeddings").leading(ids.shape[1])[None]
         + embed(self.type_vocab_size, name="token_type_embeddings")(type_ids))
    x = layer_norm(self.dtype)(x)
    return dropout_lib.Dropout(self.dropout, deterministic=not train)(x)


class BertSelfAttention(nn.Module):
  """Multi-head scaled dot-product self-attention. x [N, L, H], mask bool [N, 1, 1, L] (True
  = attend to that key) -> context [N, L, H] before the output projection."""
  num_heads: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    n, length, hidden = x.shape
    heads_shape = (n, length, self.num_heads, hidden // self.num_heads)
    q, k, v = (dense(hidden, self.dtype, name)(x).reshape(heads_shape)
               for name in ("query", "key", "value"))
    # nn.dot_product_attention with jaxmm's dropout on the attention probabilities. The
    # softmax runs in float32 and returns float32 weights: cast back, so that in a bfloat16
    # model the dropout and the probs x V product run in bfloat16 like every other matmul.
    weights = nn.dot_product_attention_weights(q, k, mask=mask, dtype=self.dtype,
                                               force_fp32_for_softmax=True).astype(self.dtype)
    weights = dropout_lib.Dropout(self.dropout, deterministic=not train)(weights)
    context = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return context.reshape(n, length, hidden)


class BertResidualOutput(nn.Module):
  """dense -> dropout -> LayerNorm(. + residual): HF's BertSelfOutput and BertOutput.

  x [N, L, any] -> [N, L, H] where H = residual.shape[-1].
  """
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, residual: jax.Array, *, train: bool) -> jax.Array:
    x = dense(residual.shape[-1], self.dtype, "dense")(x)
    x = dropout_lib.Dropout(self.dropout, deterministic=not train)(x)
    return layer_norm(self.dtype)(x + residual)


class BertAttention(nn.Module):
  """`self` attention then `output` projection + residual LayerNorm. [N, L, H] -> [N, L, H]."""
  num_heads: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    context = BertSelfAttention(self.num_heads, self.dropout, self.dtype, name="self")(
        x, mask, train=train)
    return BertResidualOutput(self.dropout, self.dtype, name="output")(context, x, train=train)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU as HF's BERT writes it, x * (1 + erf(x / sqrt 2)) / 2. jax.nn.gelu's exact
  form goes through erfc(-x / sqrt 2), which XLA evaluates with an exponential: on CPU
  the erf form's forward is about twice as fast (1024 x 3072: 0.8 vs 1.8 ms); the two agree
  to 1e-6 absolute (the erfc form is more precise only for x far below zero, where both
  are within 1e-7 of 0)."""
  return x * 0.5 * (1.0 + jax.lax.erf(x * (1 / math.sqrt(2.0))))


class BertIntermediate(nn.Module):
  """dense -> exact GELU. [N, L, H] -> [N, L, intermediate_size]."""
  intermediate_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return gelu(dense(self.intermediate_size, self.dtype, "dense")(x))


class BertLayer(nn.Module):
  """One post-LN transformer layer: attention, intermediate, output. [N, L, H] -> [N, L, H]."""
  num_heads: int
  intermediate_size: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    x = BertAttention(self.num_heads, self.dropout, self.dtype, name="attention")(
        x, mask, train=train)
    y = BertIntermediate(self.intermediate_size, self.dtype, name="intermediate")(x)
    return BertResidualOutput(self.dropout, self.dtype, name="output")(y, x, train=train)


class BertLayerStack(nn.Module):
  """`num_layers` BertLayers named '0', '1', ... (HF's `encoder.layer` ModuleList)."""
  num_layers: int
  num_heads: int
  intermediate_size: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.num_layers):
      x = BertLayer(self.num_heads, self.intermediate_size, self.dropout, self.dtype,
                    name=str(i))(x, mask, train=train)
    return x


class BertEncoder(nn.Module):
  """HF's `encoder`: holds the layer stack under the name `layer`. [N, L, H] -> [N, L, H]."""
  num_layers: int
  num_heads: int
  intermediate_size: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    return BertLayerStack(self.num_layers, self.num_heads, self.intermediate_size,
                          self.dropout, self.dtype, name="layer")(x, mask, train=train)


class BertPooler(nn.Module):
  """dense -> tanh on the [CLS] hidden state. [N, H] -> [N, H]."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cls: jax.Array) -> jax.Array:
    return jnp.tanh(dense(cls.shape[-1], self.dtype, "dense")(cls))


class Bert(nn.Module):
  """BERT encoder; defaults are BERT-base (uncased vocabulary).

  __call__(input_ids [N, L] int, train, attention_mask [N, L] (1 = token, 0 = padding; None =
  all tokens), token_type_ids [N, L] (None = zeros)) -> (features, out). features: "cls"
  [N, H], or "pooled" when use_pooler. out (each marked with `perturb`): "embedding_output"
  [N, L, H] (word + position + type embeddings after LayerNorm and dropout: token-level
  attribution replaces it on the path from a reference sequence), "last_hidden_state"
  [N, L, H], "cls" [N, H] (its token 0), "pooled" [N, H] (tanh pooler on cls). The pooler
  always exists, as in HF BertModel, so checkpoints load either way.
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_len: int = 512
  type_vocab_size: int = 2
  dropout: float = 0.1
  use_pooler: bool = False
  dtype: Any = jnp.float32

  def check_inputs(self, input_ids: jax.Array) -> None:
    """Raises ValueError on a head count that does not divide H or a too-long sequence."""
    if self.hidden_size % self.num_heads:
      raise ValueError(f"Bert hidden_size {self.hidden_size} is not divisible by "
                       f"num_heads {self.num_heads}")
    if input_ids.ndim != 2 or input_ids.shape[1] > self.max_len:
      raise ValueError(f"Bert expects token ids [N, L] with L <= max_len {self.max_len}, "
                       f"got shape {tuple(input_ids.shape)}")

  @nn.compact
  def __call__(self, input_ids: jax.Array, *, train: bool,
               attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    self.check_inputs(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    # Mask keys only, as HF's extended attention mask does: padded queries still attend.
    mask = (attention_mask > 0)[:, None, None, :]
    x = BertEmbeddings(self.vocab_size, self.hidden_size, self.max_len, self.type_vocab_size,
                       self.dropout, self.dtype, name="embeddings")(
                           input_ids, token_type_ids, train=train)
    out = {}
    x = out["embedding_output"] = self.perturb("embedding_output", x)
    x = BertEncoder(self.num_layers, self.num_heads, self.intermediate_size, self.dropout,
                    self.dtype, name="encoder")(x, mask, train=train)
    x = out["last_hidden_state"] = self.perturb("last_hidden_state", x)
    cls = out["cls"] = self.perturb("cls", x[:, 0])
    out["pooled"] = self.perturb("pooled", BertPooler(self.dtype, name="pooler")(cls))
    return out["pooled" if self.use_pooler else "cls"], out
