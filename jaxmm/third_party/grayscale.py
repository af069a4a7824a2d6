"""Grayscale adaptation of a pretrained RGB ResNet's first convolution.

For 1-channel input (the chest X-rays of paper 001) the stem kernel [kh, kw, 3, O] is summed
over its input channels to [kh, kw, 1, O]. Convolution is linear in its input, so for a gray
image g
    conv(sum_c W[..., c, :], g) = sum_c conv(W[..., c, :], g) = conv(W, [g, g, g]):
the adapted network computes exactly what the RGB network computes on the gray image
replicated into three channels, and keeps the pretrained activation scale (a mean over the
channels would divide the stem's output by 3, which BN's running statistics do not expect).
timm's `adapt_input_conv` does the same for in_chans=1. "The same input" means the same
normalised values: the 1-channel image is normalised with the data config's single
mean/std, then stands in for all three normalised RGB channels.
"""
from typing import Mapping

import numpy as np

RGB = 3


def sum_rgb_kernel(kernel: np.ndarray) -> np.ndarray:
  """[kh, kw, 3, O] -> [kh, kw, 1, O], the sum over the RGB input channels."""
  kernel = np.asarray(kernel)
  if kernel.ndim != 4 or kernel.shape[2] != RGB:
    raise ValueError(f"grayscale adaptation needs an RGB conv kernel [kh, kw, 3, O], got shape "
                     f"{kernel.shape}")
  return kernel.sum(axis=2, keepdims=True)


def adapt_input_channels(variables: Mapping[str, dict], in_channels: int) -> dict[str, dict]:
  """ResNet variables whose stem conv (params/conv1/kernel) takes `in_channels` channels.

  Unchanged if it already does; 3 -> 1 sums the RGB kernel (module docstring); any other
  change raises ValueError naming both channel counts.
  """
  kernel = variables["params"]["conv1"]["kernel"]
  have = kernel.shape[2]
  if have == in_channels:
    return dict(variables)
  if (have, in_channels) != (RGB, 1):
    raise ValueError(f"cannot adapt a pretrained stem conv with {have} input channels to "
                     f"{in_channels}; only RGB (3) -> grayscale (1) is supported")
  params = dict(variables["params"])
  params["conv1"] = {**params["conv1"], "kernel": sum_rgb_kernel(kernel)}
  return {**variables, "params": params}
