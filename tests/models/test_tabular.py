"""MetaMLP: the embedding is the last hidden layer, computed by hand from the parameters."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.tabular import MetaMLP

KEY = jax.random.key(0, impl="rbg")


def init(model, x):
  return jax.jit(functools.partial(model.init, train=False))(KEY, x)


def test_embedding_is_relu_stack_of_the_dense_layers():
  x = jax.random.normal(jax.random.key(1), (4, 7))
  model = MetaMLP(hidden=(16, 8))
  params = init(model, x)["params"]
  features, out = model.apply({"params": params}, x, train=False)
  h = x
  for i in range(2):
    h = jnp.maximum(h @ params[f"dense_{i}"]["kernel"] + params[f"dense_{i}"]["bias"], 0)
  assert features.shape == (4, 8)
  np.testing.assert_allclose(features, h, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out["embedding"], features)


def test_training_dropout_zeroes_or_rescales_each_unit():
  x = jax.random.normal(jax.random.key(1), (64, 7))
  model = MetaMLP(hidden=(32,), dropout=0.5)
  params = init(model, x)["params"]
  eval_features, _ = model.apply({"params": params}, x, train=False)
  train_features, _ = model.apply({"params": params}, x, train=True,
                                  rngs={"dropout": jax.random.key(2)})
  kept = train_features != 0
  np.testing.assert_allclose(train_features[kept], 2 * eval_features[kept], rtol=1e-6)
  assert 0.3 < 1 - kept[eval_features > 0].mean() < 0.7


def test_no_hidden_layers_passes_metadata_through():
  x = jnp.arange(6.0).reshape(2, 3)
  features, _ = MetaMLP(hidden=()).apply({}, x, train=False)
  np.testing.assert_array_equal(features, x)


def test_rejects_non_matrix_input():
  with pytest.raises(ValueError, match=r"\[N, D\].*\(2, 3, 4\)"):
    MetaMLP().init(KEY, jnp.zeros((2, 3, 4)), train=False)
