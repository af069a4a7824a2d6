"""The six-conv CNN of paper 002 (ISIC melanoma), Sec. 6.2 table of 002_...txt.

Three blocks of [conv3x3 same -> ReLU -> BN] x 2 with 32, 64, 128 filters, each followed by
2x2 max-pool and dropout; flatten; Dense(num_classes). At 32x32x3 input and 2 classes it has
292,002 trainable parameters and 896 batch-statistic entries, as the paper's Keras model.
Layer names follow the Keras table (`conv2d_1`, `batch_normalization_1`, ..., `dense_1`).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm.models import fast_backward
from jaxmm.models.resnet import validate_image


class SmallCNN(nn.Module):
  """Paper 002's CNN as an encoder.

  __call__(x [N, H, W, C], train) -> (features, out). features: the flattened last block
  [N, H/8 * W/8 * filters[-1]] (2048 at 32x32) when num_classes is None, else logits
  [N, num_classes] from `dense_1`. out (each marked with `perturb`): "conv1".."conv6" (each
  conv's output after ReLU and BN, the tensor the next layer reads), "stage1".."stage3" (each
  block after max-pool and dropout), "pre_logits" (the flattened last stage).
  BN uses the Keras defaults the paper trained with (momentum 0.99, epsilon 1e-3).
  """
  num_classes: int | None = None
  filters: Sequence[int] = (32, 64, 128)
  dropout: float = 0.25
  in_channels: int | None = None
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @property
  def feature_map_name(self) -> str:
    """Key in `out` of the last feature map before flattening (what CAM and FiLM use)."""
    return f"stage{len(self.filters)}"

  def conv_bn(self, x: jax.Array, features: int, index: int, train: bool) -> jax.Array:
    """conv3x3 same -> ReLU -> BN, Keras layer number `index` (call from __call__)."""
    x = nn.Conv(features, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv2d_{index}")(x)
    return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                        epsilon=self.bn_epsilon, dtype=self.dtype,
                        name=f"batch_normalization_{index}")(nn.relu(x))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    validate_image(x, self.in_channels, type(self).__name__)
    out = {}
    for block, features in enumerate(self.filters):
      for j in (1, 2):
        index = 2 * block + j
        x = self.conv_bn(x, features, index, train)
        x = out[f"conv{index}"] = self.perturb(f"conv{index}", x)
      x = fast_backward.max_pool(x, 2, 2, (0, 0))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = out[f"stage{block + 1}"] = self.perturb(f"stage{block + 1}", x)
    x = x.reshape(x.shape[0], -1)
    x = out["pre_logits"] = self.perturb("pre_logits", x)
    if self.num_classes is None:
      return x, out
    return nn.Dense(self.num_classes, dtype=self.dtype, name="dense_1")(x), out
