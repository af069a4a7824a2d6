"""torchvision-format ResNet state dicts -> jaxmm ResNet variables {"params", "batch_stats"}.

jaxmm's ResNet (jaxmm.models.resnet) names its modules as torchvision does (conv1, bn1,
layer<k>/<block>/conv<i>, bn<i>, downsample/0 (conv), downsample/1 (BN)), so the conversion
walks names:
  conv `weight` [O, I, kh, kw]                      -> params `kernel` [kh, kw, I, O] (HWIO)
  BN `weight`, `bias`                               -> params `scale`, `bias`
  BN `running_mean`, `running_var`                  -> batch_stats `mean`, `var`
  BN `num_batches_tracked`                          -> dropped (jaxmm BN uses a fixed momentum)
  the classifier `fc`                               -> dropped
The converted tree is the encoder only, as build_model's image encoders have no classifier:
the task's head (jaxmm's fusion head) stays randomly initialised. A "module." prefix
(DataParallel) is removed, and a training checkpoint's nested "state_dict"/"model" entry is
used (checkpoint_files). Both of torchvision's and timm's ResNets use these names and are v1.5
(a bottleneck strides on its 3x3 conv), like jaxmm's; a state dict carries no trace of where
the stride sits, so a v1 checkpoint (stride on the 1x1) would load but compute other features.
"""
import os
import re
from typing import Mapping, NamedTuple

import numpy as np

from jaxmm.models.build import ENCODERS
from jaxmm.models.resnet import BasicBlock, Bottleneck, ResNet
from jaxmm.third_party import checkpoint_files

Variables = dict[str, dict]
BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
             "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
TORCHVISION_KEY = re.compile(
    r"(conv1|bn1|fc|layer\d+\.\d+\.(conv\d|bn\d|downsample\.[01]))"
    r"\.(weight|bias|running_mean|running_var|num_batches_tracked)")
BATCH_NORM_MODULE = re.compile(r"(^|\.)(bn\d|downsample\.1)$")
SKIPPED_MODULES = ("fc",)  # the classifier head
# Key starts of a Hugging Face ResNet state dict (ResNetModel, task models, backbones).
HF_KEY_STARTS = ("embedder.", "encoder.stages.", "resnet.embedder.")


class ResNetArchitecture(NamedTuple):
  """What a converted ResNet tree is: block kind, blocks per stage, stem width, input channels."""
  block: str  # "basic" | "bottleneck"
  stage_sizes: tuple[int, ...]
  width: int
  in_channels: int

  @property
  def encoder_name(self) -> str | None:
    """The build.ENCODERS preset with this block kind and these stage sizes, if any."""
    for name, spec in ENCODERS.items():
      keywords = getattr(spec.module, "keywords", {})
      if (keywords.get("block_cls") is BLOCKS[self.block]
          and tuple(keywords.get("stage_sizes", ())) == self.stage_sizes):
        return name
    return None

  def describe(self) -> str:
    """e.g. "bottleneck ResNet, stage sizes (3, 4, 6, 3), width 64, 3 input channels
    (model.image.encoder='resnet50', model.image.width=64)"."""
    text = (f"{self.block} ResNet, stage sizes {self.stage_sizes}, width {self.width}, "
            f"{self.in_channels} input channels")
    name = self.encoder_name
    if name is None:
      return f"{text} (no jaxmm encoder preset has these stage sizes)"
    return f"{text} (model.image.encoder={name!r}, model.image.width={self.width})"

  def module(self, **kwargs) -> ResNet:
    """A jaxmm ResNet of this architecture (no classifier); kwargs go to ResNet."""
    return ResNet(stage_sizes=self.stage_sizes, block_cls=BLOCKS[self.block],
                  width=self.width, **kwargs)


def check_stages(params: Mapping, source: str) -> None:
  """ValueError naming `source` and the missing stages unless params has layer1 .. layer<K>
  (K >= 1; a stem-only tree is missing layer1 .. layer4, torchvision's four stages)."""
  numbers = {int(k[5:]) for k in params if re.fullmatch(r"layer\d+", k)}
  missing = [f"layer{k}" for k in range(1, max(numbers, default=4) + 1) if k not in numbers]
  if missing:
    raise ValueError(f"{source} is not a whole ResNet: it has no {', '.join(missing)} keys "
                     f"({missing[0]}.0.conv1.weight, ...); its modules are {sorted(params)}")


def resnet_architecture(params: Mapping, source: str = "the ResNet params tree"
                        ) -> ResNetArchitecture:
  """The architecture of a jaxmm ResNet params tree (converted or initialised); ValueError
  naming `source` when a stage is missing (check_stages)."""
  check_stages(params, source)
  stages = sorted((k for k in params if re.fullmatch(r"layer\d+", k)), key=lambda k: int(k[5:]))
  block = "bottleneck" if "conv3" in params[stages[0]]["0"] else "basic"
  kernel_shape = np.shape(params["conv1"]["kernel"])
  return ResNetArchitecture(block, tuple(len(params[s]) for s in stages), int(kernel_shape[3]),
                            int(kernel_shape[2]))


def set_leaf(tree: dict, path: list[str], value: np.ndarray) -> None:
  """tree[path[0]][path[1]]... = value, creating the intermediate dicts."""
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def check_torchvision_keys(state_dict: Mapping[str, np.ndarray], source: str) -> None:
  """ValueError naming the first key that is not a torchvision ResNet key (with a pointer to
  the Hugging Face loader when the keys are Hugging Face ResNet names)."""
  hf_key = next((key for key in state_dict if key.startswith(HF_KEY_STARTS)), None)
  if hf_key is not None:
    raise ValueError(f"{source} holds Hugging Face ResNet names ({hf_key!r}); pass the model "
                     f"directory (with its config.json) instead: it loads with "
                     f"jaxmm.third_party.resnet_hf.load_hf_resnet")
  for key in state_dict:
    if TORCHVISION_KEY.fullmatch(key):
      continue
    raise ValueError(f"{source} is not a torchvision-format ResNet state dict: unexpected key "
                     f"{key!r} (expected conv1, bn1, layer<k>.<block>.conv<i>/bn<i>/"
                     f"downsample.<0|1>, fc)")
  if "conv1.weight" not in state_dict:
    raise ValueError(f"{source} has no 'conv1.weight'; not a torchvision-format ResNet")


def batch_norm_leaves(module: str, leaves: Mapping[str, np.ndarray], variables: Variables,
                      source: str) -> None:
  """Writes one BN module's scale/bias (params) and mean/var (batch_stats) into `variables`."""
  missing = [name for name in BN_LEAVES if name not in leaves]
  if missing:
    raise ValueError(f"{source}: batch norm {module!r} lacks {missing}")
  for name, (collection, leaf) in BN_LEAVES.items():
    set_leaf(variables[collection], module.split(".") + [leaf], leaves[name])


def conv_leaves(module: str, leaves: Mapping[str, np.ndarray], variables: Variables,
                source: str) -> None:
  """Writes one bias-free conv's kernel, OIHW -> HWIO, into `variables`."""
  weight = leaves.get("weight")
  if weight is None or weight.ndim != 4 or set(leaves) != {"weight"}:
    raise ValueError(f"{source}: conv {module!r} should hold exactly a 4-D weight, got "
                     f"{ {k: v.shape for k, v in leaves.items()} }")
  set_leaf(variables["params"], module.split(".") + ["kernel"], weight.transpose(2, 3, 1, 0))


def variables_from_torchvision(state_dict: Mapping[str, np.ndarray],
                               source: str = "state dict") -> Variables:
  """torchvision-named ResNet state dict -> jaxmm ResNet {"params", "batch_stats"} (float32
  NumPy arrays; `fc` and `num_batches_tracked` dropped). `source` names it in errors."""
  state_dict = {k.removeprefix("module."): np.asarray(v) for k, v in state_dict.items()}
  check_torchvision_keys(state_dict, source)
  modules: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state_dict.items():
    module, leaf = key.rsplit(".", 1)
    if leaf != "num_batches_tracked" and module not in SKIPPED_MODULES:
      modules.setdefault(module, {})[leaf] = value.astype(np.float32)
  variables: Variables = {"params": {}, "batch_stats": {}}
  for module, leaves in modules.items():
    write = batch_norm_leaves if BATCH_NORM_MODULE.search(module) else conv_leaves
    write(module, leaves, variables, source)
  check_stages(variables["params"], source)
  return variables


def load_torchvision_resnet(path: str | os.PathLike) -> Variables:
  """jaxmm ResNet variables from a torchvision-format `.pth`/`.pt` (torch.load with
  weights_only=True) or `.safetensors` (no torch needed) state dict file."""
  path = checkpoint_files.require_path(path, "ResNet checkpoint")
  return variables_from_torchvision(checkpoint_files.load_state_dict_file(path), path)
