"""ResNet v1.5 image encoders (ResNet-18/34/50 and a tiny test variant), NHWC.

v1.5: a bottleneck block strides on its 3x3 conv, not on its first 1x1 conv. Parameter names
mirror torchvision (`conv1`, `bn1`, `layer1/0/conv1`, `layer2/0/downsample/0`, `fc`) and
padding is explicit and symmetric as in torchvision, so a torchvision state dict maps onto the
tree by name. The stem's conv1 takes any number of input channels (1 for the grayscale chest
X-rays of paper 001, 3 for dermoscopy).
"""
from functools import partial
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm.models import batch_norm as fast_batch_norm
from jaxmm.models import fast_backward

ModuleDef = Any

# He init (fan_out, normal) as torchvision initialises ResNet convs.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def validate_image(x: jax.Array, in_channels: int | None, owner: str) -> None:
  """Raises ValueError unless x is NHWC with `in_channels` channels (None: any count)."""
  if x.ndim != 4:
    raise ValueError(f"{owner} expects NHWC images [N, H, W, C], got shape {tuple(x.shape)}")
  if in_channels is not None and x.shape[-1] != in_channels:
    raise ValueError(f"{owner} expects {in_channels}-channel images, shape [N, H, W, "
                     f"{in_channels}], got shape {tuple(x.shape)}")


def batch_norm(x: jax.Array, *, train: bool, dtype: Any, name: str, zero_scale: bool = False,
               relu: bool = False) -> jax.Array:
  """BatchNorm with torchvision's settings (momentum 0.1 there = 0.9 here, eps 1e-5), then a
  ReLU when relu, applied to x by a submodule `name` of the calling compact scope: batch
  statistics when training, running averages otherwise. zero_scale starts the scale at 0.
  Training in float32 on one CPU device takes jaxmm's fewer-pass BatchNorm
  (batch_norm.TrainBatchNorm, the same variables and updates), anything else flax's
  nn.BatchNorm. The running variance is updated as flax's nn.BatchNorm does, with the biased
  batch variance; torch uses the unbiased one (times n / (n - 1)), a relative difference of
  1 / (n - 1) with n = batch x height x width per channel, negligible at training sizes."""
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  float32 = dtype is None or jnp.dtype(dtype) == jnp.float32
  if train and float32 and fast_batch_norm.usable(x):
    return fast_batch_norm.TrainBatchNorm(momentum=0.9, epsilon=1e-5, relu=relu,
                                          scale_init=scale_init, name=name)(x)
  y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                   scale_init=scale_init, name=name)(x)
  return nn.relu(y) if relu else y


def conv(features: int, kernel: int, strides: int, dtype: Any, name: str) -> nn.Conv:
  """Bias-free square conv with torchvision's symmetric padding (kernel // 2); strided ones
  take their input gradient the fast way (fast_backward)."""
  return nn.Conv(features, (kernel, kernel), strides, padding=kernel // 2, use_bias=False,
                 kernel_init=conv_init, dtype=dtype, name=name,
                 conv_general_dilated=fast_backward.conv_general_dilated)


class Downsample(nn.Module):
  """Shortcut projection: strided 1x1 conv + BN, named '0'/'1' like torchvision's Sequential.

  x: [N, H, W, C_in] -> [N, H / strides, W / strides, features].
  """
  features: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = conv(self.features, 1, self.strides, self.dtype, name="0")(x)
    return batch_norm(x, train=train, dtype=self.dtype, name="1")


def shortcut(x: jax.Array, features: int, strides: int, dtype: Any, train: bool) -> jax.Array:
  """Identity when shapes agree, else a `Downsample` projection (must run in a compact scope)."""
  if x.shape[-1] == features and strides == 1:
    return x
  return Downsample(features, strides, dtype, name="downsample")(x, train=train)


class BasicBlock(nn.Module):
  """Two 3x3 convs + shortcut (ResNet-18/34). [N, H, W, C] -> [N, H/s, W/s, filters]."""
  filters: int
  strides: int = 1
  zero_init_last_bn: bool = True
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = partial(batch_norm, train=train, dtype=self.dtype)
    y = conv(self.filters, 3, self.strides, self.dtype, name="conv1")(x)
    y = norm(y, name="bn1", relu=True)
    y = conv(self.filters, 3, 1, self.dtype, name="conv2")(y)
    y = norm(y, name="bn2", zero_scale=self.zero_init_last_bn)
    return nn.relu(y + shortcut(x, self.filters, self.strides, self.dtype, train))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 x4 + shortcut (ResNet-50).

  [N, H, W, C] -> [N, H/s, W/s, 4 * filters].
  """
  filters: int
  strides: int = 1
  zero_init_last_bn: bool = True
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = partial(batch_norm, train=train, dtype=self.dtype)
    out_features = self.filters * self.expansion
    y = conv(self.filters, 1, 1, self.dtype, name="conv1")(x)
    y = norm(y, name="bn1", relu=True)
    y = conv(self.filters, 3, self.strides, self.dtype, name="conv2")(y)
    y = norm(y, name="bn2", relu=True)
    y = conv(out_features, 1, 1, self.dtype, name="conv3")(y)
    y = norm(y, name="bn3", zero_scale=self.zero_init_last_bn)
    return nn.relu(y + shortcut(x, out_features, self.strides, self.dtype, train))


class ResNetStage(nn.Module):
  """`num_blocks` blocks named '0', '1', ...; the first one strides. torchvision's `layerK`."""
  block_cls: ModuleDef
  num_blocks: int
  filters: int
  strides: int
  zero_init_last_bn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      block = self.block_cls(filters=self.filters, strides=self.strides if i == 0 else 1,
                             zero_init_last_bn=self.zero_init_last_bn, dtype=self.dtype,
                             name=str(i))
      x = block(x, train=train)
    return x


class ResNet(nn.Module):
  """ResNet v1.5 encoder.

  __call__(x [N, H, W, C], train) -> (features, out). features: pooled pre-logits
  [N, width * 8 * expansion] when num_classes is None, else logits [N, num_classes] from an
  `fc` Dense. out (each marked with `perturb`): "stem" [N, H/4, W/4, width], "stage1".."stage4"
  (strides 4, 8, 16, 32), "pre_logits" (global average pool of the last stage).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  num_classes: int | None = None
  in_channels: int | None = None
  zero_init_last_bn: bool = True
  dtype: Any = jnp.float32

  @property
  def feature_map_name(self) -> str:
    """Key in `out` of the last feature map before pooling (what CAM and FiLM use)."""
    return f"stage{len(self.stage_sizes)}"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    validate_image(x, self.in_channels, type(self).__name__)
    x = conv(self.width, 7, 2, self.dtype, name="conv1")(x)
    x = batch_norm(x, train=train, dtype=self.dtype, name="bn1", relu=True)
    x = fast_backward.max_pool(x, 3, 2, (1, 1))
    out = {}
    x = out["stem"] = self.perturb("stem", x)
    for i, num_blocks in enumerate(self.stage_sizes):
      x = ResNetStage(self.block_cls, num_blocks, self.width * 2**i, 1 if i == 0 else 2,
                      self.zero_init_last_bn, self.dtype, name=f"layer{i + 1}")(x, train=train)
      x = out[f"stage{i + 1}"] = self.perturb(f"stage{i + 1}", x)
    x = out["pre_logits"] = self.perturb("pre_logits", jnp.mean(x, axis=(1, 2)))
    if self.num_classes is None:
      return x, out
    return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x), out


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNetTiny = partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, width=8)
