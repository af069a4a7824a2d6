"""Hugging Face ResNet directories -> jaxmm ResNet variables, through torchvision names.

A directory holds config.json and model.safetensors or pytorch_model.bin, as save_pretrained
writes them for transformers' ResNetModel, ResNetForImageClassification (prefix "resnet.",
head `classifier.*`, dropped) and ResNetBackbone. Their module names map onto torchvision's:
  embedder.embedder.{convolution,normalization}             -> conv1, bn1
  encoder.stages.<s>.layers.<b>.layer.<i>.convolution        -> layer<s+1>.<b>.conv<i+1>
  encoder.stages.<s>.layers.<b>.layer.<i>.normalization      -> layer<s+1>.<b>.bn<i+1>
  encoder.stages.<s>.layers.<b>.shortcut.{convolution,normalization}
                                                             -> layer<s+1>.<b>.downsample.{0,1}
and resnet_torch converts the result. The stem's max pool (3x3, stride 2, padding 1), the
projection rule (channels or stride change), BN eps 1e-5 and the final global average pool are
the same in both models. config.json is checked first; what jaxmm's ResNet cannot represent is
rejected naming the key: hidden_act other than relu, downsample_in_first_stage (jaxmm's first
stage never strides), downsample_in_bottleneck with bottleneck layers (stride on the 1x1 conv,
ResNet v1; jaxmm is v1.5), and stage widths other than embedding_size * 2**s (* 4 for
bottleneck layers: jaxmm widths double per stage from the stem's).
"""
import os
import re
from typing import Mapping

import numpy as np

from jaxmm.third_party import checkpoint_files, resnet_torch

HF_TO_TORCHVISION = (
    (re.compile(r"embedder\.embedder\.convolution\.(\w+)"), lambda m: f"conv1.{m[1]}"),
    (re.compile(r"embedder\.embedder\.normalization\.(\w+)"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.(\w+)"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.{m[4]}"),
    (re.compile(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(\w+)"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
    (re.compile(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.(\w+)"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.{m[3]}"),
    (re.compile(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(\w+)"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
)
HEAD_PREFIX = "classifier."  # ResNetForImageClassification's head
TASK_PREFIX = "resnet."
LAYER_TYPES = ("basic", "bottleneck")


def torchvision_name(key: str, source: str) -> str | None:
  """The torchvision name of one HF ResNet key; None for the classifier head."""
  key = key.removeprefix(TASK_PREFIX)
  if key.startswith(HEAD_PREFIX):
    return None
  for pattern, rename in HF_TO_TORCHVISION:
    match = pattern.fullmatch(key)
    if match:
      return rename(match)
  raise ValueError(f"{source}: unexpected key {key!r} for a Hugging Face ResNet (expected "
                   f"embedder.embedder.*, encoder.stages.<s>.layers.<b>.layer|shortcut.*, "
                   f"classifier.*)")


def torchvision_state_dict(state_dict: Mapping[str, np.ndarray],
                           source: str = "state dict") -> dict[str, np.ndarray]:
  """HF ResNet state dict -> the same tensors under torchvision names (head dropped)."""
  out = {}
  for key, value in state_dict.items():
    name = torchvision_name(key, source)
    if name is not None:
      out[name] = value
  return out


def stage_widths(config: Mapping) -> list[int]:
  """The output channels jaxmm's ResNet has per stage for this config's stem width and depth."""
  expansion = 4 if config.get("layer_type", "bottleneck") == "bottleneck" else 1
  width = int(config.get("embedding_size", 64))
  return [width * expansion * 2**s for s in range(len(config.get("depths", (3, 4, 6, 3))))]


def check_hf_resnet_config(config: Mapping, source: str) -> resnet_torch.ResNetArchitecture:
  """The architecture a HF ResNetConfig (config.json, transformers' defaults for absent keys)
  describes; ValueError naming the key jaxmm's ResNet cannot represent (module docstring)."""
  def reject(key: str, why: str) -> ValueError:
    return ValueError(f"{source}: {key}={config.get(key)!r} is not supported: {why}")

  if config.get("model_type") != "resnet":
    raise reject("model_type", "expected a Hugging Face ResNet ('resnet')")
  layer_type = config.get("layer_type", "bottleneck")
  if layer_type not in LAYER_TYPES:
    raise reject("layer_type", f"expected one of {LAYER_TYPES}")
  if config.get("hidden_act", "relu") != "relu":
    raise reject("hidden_act", "jaxmm's ResNet uses relu")
  if config.get("downsample_in_first_stage", False):
    raise reject("downsample_in_first_stage", "jaxmm's first stage does not stride")
  if layer_type == "bottleneck" and config.get("downsample_in_bottleneck", False):
    raise reject("downsample_in_bottleneck", "it strides on the bottleneck's 1x1 conv "
                 "(ResNet v1); jaxmm's ResNet is v1.5 (stride on the 3x3)")
  if list(config.get("hidden_sizes", (256, 512, 1024, 2048))) != stage_widths(config):
    raise reject("hidden_sizes", f"jaxmm's stage widths double from the stem's "
                 f"(embedding_size={config.get('embedding_size', 64)}): expected "
                 f"{stage_widths(config)}")
  return resnet_torch.ResNetArchitecture(
      layer_type, tuple(int(d) for d in config.get("depths", (3, 4, 6, 3))),
      int(config.get("embedding_size", 64)), int(config.get("num_channels", 3)))


def load_hf_resnet(model_dir: str | os.PathLike) -> resnet_torch.Variables:
  """jaxmm ResNet variables {"params", "batch_stats"} from a local HF ResNet directory.

  config.json is validated first (check_hf_resnet_config); the converted tree must have the
  architecture it describes.
  """
  config = checkpoint_files.read_hf_config(model_dir)
  source = os.fspath(model_dir)
  expected = check_hf_resnet_config(config, source)
  state_dict = checkpoint_files.load_hf_state_dict(model_dir)
  variables = resnet_torch.variables_from_torchvision(
      torchvision_state_dict(state_dict, source), source)
  found = resnet_torch.resnet_architecture(variables["params"])
  if found != expected:
    raise ValueError(f"{source}: the weights are a {found.describe()}, but config.json "
                     f"describes a {expected.describe()}")
  return variables
