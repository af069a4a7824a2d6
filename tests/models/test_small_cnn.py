"""Paper 002's six-conv CNN: the appendix table's parameter counts and shapes, layer order."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.small_cnn import SmallCNN

KEY = jax.random.key(0, impl="rbg")  # rbg: threefry's kernels dominate CPU compile time

# Sec. 6.2 table of 002_...txt; Keras counts a BN layer's moving mean/var with its parameters.
PAPER_LAYER_PARAMS = {
    "conv2d_1": 896, "batch_normalization_1": 128, "conv2d_2": 9248,
    "batch_normalization_2": 128, "conv2d_3": 18496, "batch_normalization_3": 256,
    "conv2d_4": 36928, "batch_normalization_4": 256, "conv2d_5": 73856,
    "batch_normalization_5": 512, "conv2d_6": 147584, "batch_normalization_6": 512,
    "dense_1": 4098,
}


def shapes_of(model, x):
  return jax.eval_shape(functools.partial(model.init_with_output, train=False), KEY, x)


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_parameter_counts_match_the_paper_table():
  _, variables = shapes_of(SmallCNN(num_classes=2), jnp.zeros((1, 32, 32, 3)))
  params, stats = variables["params"], variables["batch_stats"]
  assert count(params) == 292_002
  assert count(stats) == 896
  per_layer = {name: count(params[name]) + count(stats.get(name, {})) for name in params}
  assert per_layer == PAPER_LAYER_PARAMS


def test_output_shapes_match_the_paper_table():
  (features, out), _ = shapes_of(SmallCNN(), jnp.zeros((4, 32, 32, 3)))
  assert {k: v.shape for k, v in out.items()} == {
      "conv1": (4, 32, 32, 32), "conv2": (4, 32, 32, 32), "stage1": (4, 16, 16, 32),
      "conv3": (4, 16, 16, 64), "conv4": (4, 16, 16, 64), "stage2": (4, 8, 8, 64),
      "conv5": (4, 8, 8, 128), "conv6": (4, 8, 8, 128), "stage3": (4, 4, 4, 128),
      "pre_logits": (4, 2048)}
  assert features.shape == (4, 2048)  # flattened, as the paper's Flatten layer
  (logits, _), _ = shapes_of(SmallCNN(num_classes=2), jnp.zeros((4, 32, 32, 3)))
  assert logits.shape == (4, 2)


@functools.cache
def initialised():
  model = SmallCNN(num_classes=2, dropout=0.5)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  return model, jax.jit(functools.partial(model.init, train=False))(KEY, x), x


def test_conv_then_relu_then_bn_with_keras_epsilon():
  model, variables, x = initialised()
  _, out = model.apply(variables, x, train=False)
  conv = nn.Conv(32, (3, 3), padding="SAME").apply(
      {"params": variables["params"]["conv2d_1"]}, x)
  # Running statistics start at mean 0, var 1; scale 1, bias 0.
  np.testing.assert_allclose(out["conv1"], nn.relu(conv) / np.sqrt(1 + 1e-3), rtol=1e-5,
                             atol=1e-6)


def test_dropout_only_in_training():
  model, variables, x = initialised()
  _, eval_a = model.apply(variables, x, train=False)
  _, eval_b = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_a["pre_logits"], eval_b["pre_logits"])
  (_, train_out), _ = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(2)})
  # With batch statistics BN moves ReLU's zeros off zero, so the zeros left are dropout's.
  assert 0.4 < np.mean(train_out["pre_logits"] == 0) < 0.6


def test_wrong_channel_count_raises():
  with pytest.raises(ValueError, match=r"SmallCNN expects 3-channel.*\(1, 32, 32, 1\)"):
    shapes_of(SmallCNN(in_channels=3), jnp.zeros((1, 32, 32, 1)))
