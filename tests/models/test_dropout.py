"""jaxmm's dropout: keep rate, unbiased scaling, a gradient through the forward's own mask,
and BERT self-attention = flax attention + this dropout."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models import bert, dropout


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.3])
def test_keep_rate_and_expectation(rate):
  x = jnp.ones((64, 129, 33), jnp.float32)  # odd last axis: the halves of a row's words
  y = dropout.dropout(x, rate, jax.random.key(0))
  kept = np.asarray(y != 0)
  p = dropout.keep_threshold(rate) / 2**16
  assert abs(p - (1 - rate)) < 1e-5
  n = kept.size  # 6 sigma of a binomial proportion
  assert abs(kept.mean() - p) < 6 * np.sqrt(p * (1 - p) / n)
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / p, rtol=1e-6)
  assert abs(float(y.mean()) - 1.0) < 6 * np.sqrt((1 - p) / p / n)
  # Every row, column and channel keeps at that rate (the two halves of a row's words alike).
  for axis in (0, 1, 2):
    means = kept.mean(axis=tuple(a for a in range(3) if a != axis))
    spread = 6 * np.sqrt(p * (1 - p) / (n / kept.shape[axis]))
    assert np.all(np.abs(means - p) < spread), axis


def test_edges_and_determinism():
  x = jnp.arange(12.0).reshape(3, 4)
  key = jax.random.key(3)
  np.testing.assert_array_equal(dropout.dropout(x, 0.0, key), x)
  np.testing.assert_array_equal(dropout.dropout(x, 1.0, key), np.zeros((3, 4)))
  np.testing.assert_array_equal(dropout.dropout(x, 0.5, key), dropout.dropout(x, 0.5, key))
  assert not np.array_equal(dropout.dropout(x, 0.5, key),
                            dropout.dropout(x, 0.5, jax.random.key(4)))
  with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\], got 1.5"):
    dropout.dropout(x, 1.5, key)
  np.testing.assert_array_equal(dropout.Dropout(0.5, deterministic=True).apply({}, x), x)
  y = np.asarray(dropout.Dropout(0.5).apply({}, x + 1, rngs={"dropout": key}))
  assert (y == 0).any() and np.array_equal(y[y != 0], 2 * (np.asarray(x) + 1)[y != 0])


def test_gradient_uses_the_forward_mask():
  x = jax.random.normal(jax.random.key(0), (8, 16, 32))
  key = jax.random.key(1)
  f = lambda x: jnp.sum(dropout.dropout(x, 0.25, key) * 2.0)
  grad = jax.grad(f)(x)
  y = dropout.dropout(x, 0.25, key)
  scale = 2**16 / dropout.keep_threshold(0.25)
  np.testing.assert_allclose(grad, np.where(np.asarray(y) != 0, 2.0 * scale, 0.0), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(x), grad, rtol=1e-6)


def test_bert_self_attention_is_flax_attention_plus_jaxmm_dropout():
  n, length, heads, d = 2, 5, 3, 4
  x = jax.random.normal(jax.random.key(0), (n, length, heads * d))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :]
  module = bert.BertSelfAttention(num_heads=heads, dropout=0.2)
  params = module.init(jax.random.key(1), x, mask, train=False)["params"]
  q, k, v = ((x @ params[name]["kernel"] + params[name]["bias"]).reshape(n, length, heads, d)
             for name in ("query", "key", "value"))
  expected = nn.dot_product_attention(q, k, v, mask=mask, force_fp32_for_softmax=True)
  np.testing.assert_allclose(module.apply({"params": params}, x, mask, train=False),
                             expected.reshape(n, length, heads * d), rtol=1e-5, atol=1e-6)
  train = lambda key: module.apply({"params": params}, x, mask, train=True,
                                   rngs={"dropout": key})
  np.testing.assert_array_equal(train(jax.random.key(2)), train(jax.random.key(2)))
  assert not np.allclose(train(jax.random.key(2)), expected.reshape(n, length, heads * d))
