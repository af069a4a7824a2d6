"""ResNet v1.5: torchvision parameter counts and names, shapes, zero-init, BN momentum, inputs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import traverse_util

from jaxmm.models import batch_norm as fast_batch_norm
from jaxmm.models.resnet import (BasicBlock, Bottleneck, ResNet18, ResNet34, ResNet50,
                                 ResNetTiny, batch_norm)

# rbg keys: compiling threefry's random-normal kernels dominates CPU test time.
KEY = jax.random.key(0, impl="rbg")


def shapes_of(model, x, **kwargs):
  """(features, out), variables as ShapeDtypeStructs; nothing is computed."""
  return jax.eval_shape(functools.partial(model.init_with_output, train=False, **kwargs), KEY, x)


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant,expected", [
    (ResNet18, 11_689_512), (ResNet34, 21_797_672), (ResNet50, 25_557_032)])
def test_parameter_counts_equal_torchvision(variant, expected):
  _, variables = shapes_of(variant(num_classes=1000), jnp.zeros((1, 224, 224, 3)))
  assert count(variables["params"]) == expected


def torchvision_resnet18_names() -> set[str]:
  """torchvision resnet18 state-dict keys (parameters and BN running statistics)."""
  bn = lambda p: {f"{p}.weight", f"{p}.bias", f"{p}.running_mean", f"{p}.running_var"}
  names = {"conv1.weight", "fc.weight", "fc.bias"} | bn("bn1")
  for layer in range(1, 5):
    for block in range(2):
      prefix = f"layer{layer}.{block}"
      names |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
      names |= bn(f"{prefix}.bn1") | bn(f"{prefix}.bn2")
      if layer > 1 and block == 0:
        names |= {f"{prefix}.downsample.0.weight"} | bn(f"{prefix}.downsample.1")
  return names


def test_resnet18_tree_mirrors_torchvision_names():
  _, variables = shapes_of(ResNet18(num_classes=1000), jnp.zeros((1, 64, 64, 3)))
  leaf_names = {"kernel": "weight", "scale": "weight", "bias": "bias",
                "mean": "running_mean", "var": "running_var"}
  names = set()
  for collection in ("params", "batch_stats"):
    for path in traverse_util.flatten_dict(variables[collection]):
      names.add(".".join(path[:-1] + (leaf_names[path[-1]],)))
  assert names == torchvision_resnet18_names()


@pytest.mark.parametrize("variant,channels", [(ResNet18, 512), (ResNet50, 2048)])
def test_stage_shapes_for_grayscale_input(variant, channels):
  (features, out), variables = shapes_of(variant(in_channels=1), jnp.zeros((2, 64, 64, 1)))
  expansion = channels // 512
  assert {k: v.shape for k, v in out.items()} == {
      "stem": (2, 16, 16, 64), "stage1": (2, 16, 16, 64 * expansion),
      "stage2": (2, 8, 8, 128 * expansion), "stage3": (2, 4, 4, 256 * expansion),
      "stage4": (2, 2, 2, channels), "pre_logits": (2, channels)}
  assert features.shape == (2, channels)
  assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 1, 64)
  assert "fc" not in variables["params"]


def test_bottleneck_strides_on_its_3x3_conv():
  """v1.5: in layer2's first block conv1 (1x1) keeps 16x16 and conv2 (3x3) halves it."""
  _, variables = shapes_of(ResNet50(), jnp.zeros((1, 64, 64, 3)), capture_intermediates=True)
  block = variables["intermediates"]["layer2"]["0"]
  assert block["conv1"]["__call__"][0].shape == (1, 16, 16, 128)
  assert block["conv2"]["__call__"][0].shape == (1, 8, 8, 128)


def test_wrong_channel_count_names_expected_and_given_shape():
  with pytest.raises(ValueError, match=r"3-channel images.*got shape \(2, 32, 32, 1\)"):
    shapes_of(ResNetTiny(in_channels=3), jnp.zeros((2, 32, 32, 1)))
  with pytest.raises(ValueError, match=r"NHWC.*got shape \(32, 32, 3\)"):
    shapes_of(ResNetTiny(), jnp.zeros((32, 32, 3)))


@functools.cache
def tiny_init():
  model = ResNetTiny()
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  return model, jax.jit(functools.partial(model.init, train=False))(KEY, x), x


@pytest.mark.parametrize("zero_init,scale", [(True, 0.0), (False, 1.0)])
def test_zero_init_last_bn_sets_the_last_bn_scale(zero_init, scale):
  for block in (BasicBlock(8, zero_init_last_bn=zero_init),
                Bottleneck(2, zero_init_last_bn=zero_init)):
    variables = jax.jit(functools.partial(block.init, train=False))(KEY, jnp.ones((1, 4, 4, 8)))
    last_bn = "bn2" if isinstance(block, BasicBlock) else "bn3"
    np.testing.assert_array_equal(variables["params"][last_bn]["scale"], scale)
    np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], 1.0)


def test_zero_init_last_bn_makes_identity_blocks_start_as_identity():
  model, variables, x = tiny_init()
  _, out = model.apply(variables, x, train=False)
  # layer1/0 has no projection and its input is post-ReLU, so relu(0 + x) = x.
  np.testing.assert_array_equal(out["stage1"], out["stem"])
  params = traverse_util.flatten_dict(variables["params"])
  params[("layer1", "0", "bn2", "scale")] = jnp.ones(8)
  _, out = model.apply({**variables, "params": traverse_util.unflatten_dict(params)}, x,
                       train=False)
  assert not np.allclose(out["stage1"], out["stem"])


def test_training_updates_running_statistics_with_momentum_0_9():
  model, variables, x = tiny_init()
  (_, _), state = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                              capture_intermediates=True)
  conv1_out = state["intermediates"]["conv1"]["__call__"][0]
  expected_mean = 0.9 * 0.0 + 0.1 * conv1_out.mean(axis=(0, 1, 2))
  expected_var = 0.9 * 1.0 + 0.1 * conv1_out.var(axis=(0, 1, 2))
  np.testing.assert_allclose(state["batch_stats"]["bn1"]["mean"], expected_mean, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(state["batch_stats"]["bn1"]["var"], expected_var, rtol=1e-5)


class OneBatchNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    return batch_norm(x, train=True, dtype=jnp.float32, name="bn")


@pytest.mark.parametrize("fast", [True, False])
def test_running_variance_is_the_biased_one_unlike_torch(monkeypatch, fast):
  """As batch_norm's docstring says: both BatchNorms (jaxmm's fast one and flax's) move the
  running variance towards the biased batch variance; torch's BatchNorm2d towards the unbiased
  one, n / (n - 1) times larger (n = 2 x 3 x 3 = 18 values per channel here)."""
  monkeypatch.setattr(fast_batch_norm, "ENABLED", fast)
  x = np.random.RandomState(0).normal(1.0, 3.0, size=(2, 3, 3, 4)).astype(np.float32)
  if fast and not fast_batch_norm.usable(jnp.asarray(x)):
    pytest.skip(f"jaxmm's BatchNorm is not usable here: {fast_batch_norm.describe()}")
  module = OneBatchNorm()
  _, state = module.apply(module.init(KEY, x), x, mutable=["batch_stats"])
  torch_bn = torch.nn.BatchNorm2d(4, eps=1e-5, momentum=0.1).train()
  torch_bn(torch.from_numpy(x).permute(0, 3, 1, 2))
  n = x.size // x.shape[-1]
  ours = np.asarray(state["batch_stats"]["bn"]["var"], np.float64) - 0.9
  theirs = torch_bn.running_var.numpy().astype(np.float64) - 0.9
  np.testing.assert_allclose(ours, 0.1 * x.var(axis=(0, 1, 2), dtype=np.float64), rtol=1e-5)
  np.testing.assert_allclose(theirs, ours * n / (n - 1), rtol=1e-5)
