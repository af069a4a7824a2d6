"""ResNet converters: parity with PyTorch on identical weights, grayscale stems, safe loading.

References: transformers' ResNetModel / ResNetForImageClassification (random init, saved with
save_pretrained or as pytorch_model.bin), and for torchvision-format state dicts a PyTorch
ResNet written below with torchvision.models.resnet's module structure, so its state_dict()
has torchvision's names (torchvision itself is not installed). BN layers are in eval mode with
random running statistics and affine parameters.
"""
import builtins
import functools
import json
import os
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file
from torch import nn

from jaxmm.third_party import checkpoint_files, grayscale, resnet_hf, resnet_torch

TOL = dict(atol=1e-4, rtol=1e-4)
STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")


class TorchvisionBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = torch.relu(self.bn1(self.conv1(x)))
    return torch.relu(self.bn2(self.conv2(y)) + identity)


class TorchvisionBottleneck(nn.Module):
  """torchvision's Bottleneck: v1.5, the stride sits on conv2 (3x3)."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    return torch.relu(self.bn3(self.conv3(y)) + identity)


class TorchvisionResNet(nn.Module):
  """torchvision.models.ResNet's structure (conv1, bn1, layer1..4 of Sequential blocks with a
  Sequential(conv, BN) `downsample`, fc), with a configurable stem width."""

  def __init__(self, block, layers, width, num_classes=7):
    super().__init__()
    self.inplanes = width
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    for i, blocks in enumerate(layers):
      setattr(self, f"layer{i + 1}", self.make_layer(block, width * 2**i, blocks, min(i, 1) + 1))
    self.fc = nn.Linear(self.inplanes, num_classes)

  def make_layer(self, block, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    """x NCHW -> {"stem", "stage1".."stage4", "pre_logits"} as NumPy, NHWC."""
    out = {"stem": self.maxpool(torch.relu(self.bn1(self.conv1(x))))}
    for i in range(4):
      out[f"stage{i + 1}"] = getattr(self, f"layer{i + 1}")(out[STAGES[i]])
    out["pre_logits"] = out["stage4"].mean(dim=(2, 3))
    return {k: to_nhwc(v) for k, v in out.items()}


def to_nhwc(x: torch.Tensor) -> np.ndarray:
  """NCHW feature maps -> NHWC; [N, C] features unchanged."""
  x = x.detach().numpy()
  return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
  """Non-trivial BN statistics and affine parameters; eval mode."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        n = module.num_features
        module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
        module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
        module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
        module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        module.num_batches_tracked.fill_(7)
  return model.eval()


def torchvision_reference(block: str, layers=(2, 1, 1, 1), width=8):
  torch.manual_seed(0)
  cls = TorchvisionBottleneck if block == "bottleneck" else TorchvisionBasicBlock
  return randomize_batch_norms(TorchvisionResNet(cls, layers, width))


def images(channels=3, seed=0):
  """(NHWC NumPy for jaxmm, NCHW torch for the references), 2 x 64 x 64."""
  x = np.random.RandomState(seed).randn(2, 64, 64, channels).astype(np.float32)
  return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@functools.cache
def jitted_apply(arch: resnet_torch.ResNetArchitecture):
  """(variables, x) -> `out` of the jaxmm ResNet of `arch`, compiled once per architecture."""
  module = arch.module(in_channels=arch.in_channels)
  return jax.jit(lambda variables, x: module.apply(variables, x, train=False)[1])


def jaxmm_outputs(variables, x):
  """The `out` dict of the jaxmm ResNet whose architecture the converted tree has."""
  return jitted_apply(resnet_torch.resnet_architecture(variables["params"]))(variables, x)


def assert_outputs_match(out, expected) -> float:
  """All stage outputs and the pooled features within 1e-4; returns the max abs difference."""
  worst = 0.0
  for key, value in expected.items():
    np.testing.assert_allclose(out[key], value, err_msg=key, **TOL)
    worst = max(worst, float(np.max(np.abs(np.asarray(out[key]) - value))))
  return worst


def save_torchvision(model: nn.Module, path: str) -> str:
  state = model.state_dict()
  if path.endswith(".safetensors"):
    save_file({k: v.contiguous() for k, v in state.items()}, path)
  else:
    torch.save(state, path)
  return path


@pytest.mark.parametrize("block,suffix", [("basic", ".pth"), ("basic", ".safetensors"),
                                          ("bottleneck", ".pth"), ("bottleneck", ".safetensors")])
def test_torchvision_state_dict_matches_pytorch(tmp_path, block, suffix):
  reference = torchvision_reference(block)
  variables = resnet_torch.load_torchvision_resnet(
      save_torchvision(reference, str(tmp_path / f"resnet{suffix}")))
  assert "fc" not in variables["params"]
  assert resnet_torch.resnet_architecture(variables["params"]) == (block, (2, 1, 1, 1), 8, 3)
  x, x_nchw = images()
  with torch.no_grad():
    expected = reference(x_nchw)
  assert_outputs_match(jaxmm_outputs(variables, x), expected)


def test_torchvision_tree_equals_jaxmm_init_tree():
  reference = torchvision_reference("bottleneck")
  variables = resnet_torch.variables_from_torchvision(reference.state_dict())
  module = resnet_torch.resnet_architecture(variables["params"]).module()
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), images()[0], train=False))
  for collection in ("params", "batch_stats"):
    assert (jax.tree.map(lambda a: a.shape, shapes[collection])
            == jax.tree.map(lambda a: a.shape, variables[collection]))
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                reference.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["layer1"]["0"]["downsample"]["1"]["var"],
                                reference.layer1[0].downsample[1].running_var.numpy())


def test_training_checkpoint_layouts_load_the_same(tmp_path):
  """A DataParallel "module." prefix and a nested {"state_dict": ..., "epoch": ...} load."""
  state = torchvision_reference("basic").state_dict()
  torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
             tmp_path / "ckpt.pth")
  loaded = resnet_torch.load_torchvision_resnet(tmp_path / "ckpt.pth")
  jax.tree.map(np.testing.assert_array_equal, loaded,
               resnet_torch.variables_from_torchvision(state))


def save_hf_resnet(directory, layer_type, depths, *, task_model, weights, width=8):
  """A random transformers ResNet (random BN statistics) with stem width `width` saved in
  `directory`; weights is "safetensors" (save_pretrained) or "bin" (config.json + a
  torch.save'd pytorch_model.bin: transformers 5's save_pretrained writes safetensors only).
  Returns the ResNetModel (the task model's `resnet`)."""
  torch.manual_seed(1)
  expansion = 4 if layer_type == "bottleneck" else 1
  config = transformers.ResNetConfig(
      embedding_size=width, hidden_sizes=[width * expansion * 2**i for i in range(4)],
      depths=depths, layer_type=layer_type, num_labels=5)
  cls = transformers.ResNetForImageClassification if task_model else transformers.ResNetModel
  model = randomize_batch_norms(cls(config), seed=2)
  model.save_pretrained(directory)
  if weights == "bin":
    os.remove(os.path.join(directory, "model.safetensors"))
    torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
  return model.resnet if task_model else model


@pytest.mark.parametrize("layer_type,task_model,weights", [
    ("basic", True, "safetensors"), ("bottleneck", False, "bin")])
def test_hugging_face_resnet_matches_transformers(tmp_path, layer_type, task_model, weights):
  hf_model = save_hf_resnet(tmp_path, layer_type, [2, 1, 1, 1], task_model=task_model,
                            weights=weights)
  variables = resnet_hf.load_hf_resnet(tmp_path)
  x, x_nchw = images()
  with torch.no_grad():
    hf_out = hf_model(x_nchw, output_hidden_states=True)
  expected = {name: to_nhwc(h) for name, h in zip(STAGES, hf_out.hidden_states)}
  expected["pre_logits"] = hf_out.pooler_output.flatten(1).numpy()
  assert_outputs_match(jaxmm_outputs(variables, x), expected)


def test_hugging_face_and_torchvision_names_agree(tmp_path):
  save_hf_resnet(tmp_path, "bottleneck", [2, 1, 1, 1], task_model=True, weights="safetensors")
  hf_state = checkpoint_files.load_hf_state_dict(tmp_path)
  assert "classifier.1.weight" in hf_state and "resnet.embedder.embedder.convolution.weight" in (
      hf_state)
  renamed = resnet_hf.torchvision_state_dict(hf_state)
  assert set(renamed) == set(torchvision_reference("bottleneck").state_dict()) - {
      "fc.weight", "fc.bias"}


def write_hf_config(directory, **overrides) -> str:
  config = dict(model_type="resnet", layer_type="bottleneck", embedding_size=8,
                hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], hidden_act="relu",
                num_channels=3, downsample_in_first_stage=False, downsample_in_bottleneck=False)
  config.update(overrides)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  return str(directory)


@pytest.mark.parametrize("overrides,message", [
    (dict(downsample_in_first_stage=True), "downsample_in_first_stage=True is not supported"),
    (dict(downsample_in_bottleneck=True), r"downsample_in_bottleneck=True .*ResNet v1\b"),
    (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported: jaxmm's ResNet uses relu"),
    (dict(hidden_sizes=[32, 48, 128, 256]), r"hidden_sizes=\[32, 48, 128, 256\].*"
                                            r"expected \[32, 64, 128, 256\]"),
    (dict(layer_type="preact"), "layer_type='preact'"),
    (dict(model_type="convnext"), "model_type='convnext'"),
])
def test_hugging_face_configs_jaxmm_cannot_represent_are_rejected(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    resnet_hf.load_hf_resnet(write_hf_config(tmp_path, **overrides))


def test_basic_layers_ignore_downsample_in_bottleneck():
  arch = resnet_hf.check_hf_resnet_config(
      dict(model_type="resnet", layer_type="basic", embedding_size=64,
           hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], downsample_in_bottleneck=True),
      "config.json")
  assert arch == ("basic", (2, 2, 2, 2), 64, 3) and arch.encoder_name == "resnet18"


def test_weights_that_disagree_with_config_are_rejected(tmp_path):
  save_hf_resnet(tmp_path, "basic", [2, 1, 1, 1], task_model=False, weights="safetensors")
  write_hf_config(tmp_path, layer_type="basic", hidden_sizes=[8, 16, 32, 64])
  with pytest.raises(ValueError, match=r"weights are a basic ResNet, stage sizes \(2, 1, 1, 1\)"
                                       r".*config.json describes a basic ResNet, stage sizes "
                                       r"\(1, 1, 1, 1\)"):
    resnet_hf.load_hf_resnet(tmp_path)


def test_grayscale_stem_equals_rgb_network_on_replicated_gray_image():
  reference = torchvision_reference("basic")
  variables = grayscale.adapt_input_channels(
      resnet_torch.variables_from_torchvision(reference.state_dict()), 1)
  gray, gray_nchw = images(channels=1, seed=3)
  with torch.no_grad():
    expected = reference(gray_nchw.repeat(1, 3, 1, 1))
  assert resnet_torch.resnet_architecture(variables["params"]).in_channels == 1
  assert_outputs_match(jaxmm_outputs(variables, gray), expected)
  np.testing.assert_allclose(variables["params"]["conv1"]["kernel"][:, :, 0],
                             reference.conv1.weight.detach().numpy().sum(1).transpose(1, 2, 0),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="3 input channels to 2; only RGB"):
    grayscale.adapt_input_channels({"params": {"conv1": {"kernel": np.zeros((7, 7, 3, 8))}}}, 2)


def test_pickles_load_only_with_weights_only(tmp_path):
  marker = tmp_path / "executed"

  class Payload:
    def __reduce__(self):
      return builtins.open, (str(marker), "w")

  state = torchvision_reference("basic").state_dict()
  torch.save({**state, "payload": Payload()}, tmp_path / "evil.pth")
  with pytest.raises(ValueError, match=r"refusing to load .*evil.pth.*weights_only=True"):
    resnet_torch.load_torchvision_resnet(tmp_path / "evil.pth")
  assert not marker.exists()


def test_missing_torch_names_the_remedies_and_safetensors_need_no_torch(tmp_path, monkeypatch):
  reference = torchvision_reference("basic")
  pth = save_torchvision(reference, str(tmp_path / "r.pth"))
  safetensors = save_torchvision(reference, str(tmp_path / "r.safetensors"))
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ImportError, match=r"needs torch \(pip install torch\); or convert it "
                                        r"once to \.safetensors"):
    resnet_torch.load_torchvision_resnet(pth)
  loaded = resnet_torch.load_torchvision_resnet(safetensors)
  monkeypatch.undo()
  jax.tree.map(np.testing.assert_array_equal, loaded,
               resnet_torch.variables_from_torchvision(reference.state_dict()))


def test_bfloat16_safetensors_load_as_float32(tmp_path):
  state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
           for k, v in torchvision_reference("basic").state_dict().items()}
  save_file(state, tmp_path / "bf16.safetensors")
  variables = resnet_torch.load_torchvision_resnet(tmp_path / "bf16.safetensors")
  kernel = variables["params"]["conv1"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, state["conv1.weight"].float().numpy().transpose(2, 3, 1, 0))


def test_paths_that_do_not_exist_or_are_not_checkpoints(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'/no/such/resnet.pth' does not exist; .*local "
                                              r"paths only \(hub ids are not downloaded\)"):
    resnet_torch.load_torchvision_resnet("/no/such/resnet.pth")
  with pytest.raises(FileNotFoundError, match=r"'microsoft/resnet-50' does not exist"):
    resnet_hf.load_hf_resnet("microsoft/resnet-50")
  with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory: no "
                                              "config.json"):
    resnet_hf.load_hf_resnet(tmp_path)
  with pytest.raises(FileNotFoundError, match="no weights in"):
    resnet_hf.load_hf_resnet(write_hf_config(tmp_path / "config_only"))
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(ValueError, match="unknown checkpoint format"):
    checkpoint_files.load_state_dict_file(tmp_path / "weights.npz")


def test_state_dicts_with_other_names_are_rejected(tmp_path):
  save_hf_resnet(tmp_path, "basic", [1, 1, 1, 1], task_model=True, weights="safetensors")
  with pytest.raises(ValueError, match="Hugging Face ResNet names .*pass the model directory"):
    resnet_torch.load_torchvision_resnet(tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match="unexpected key 'features.0.weight'"):
    resnet_torch.variables_from_torchvision({"features.0.weight": np.zeros((8, 3, 3, 3))})


@pytest.mark.parametrize("stages,missing", [((), "layer1, layer2, layer3, layer4"),
                                            ((1, 3), "layer2")])
def test_state_dicts_missing_stages_name_the_file_and_the_stages(tmp_path, stages, missing):
  # A stem-only file passed the key check and failed with a bare IndexError.
  state = {k: v for k, v in torchvision_reference("basic", layers=(1, 1, 1, 1))
           .state_dict().items() if not k.startswith("layer") or int(k[5]) in stages}
  path = str(tmp_path / "stem.safetensors")
  save_file(state, path)
  with pytest.raises(ValueError, match=f"^{path} is not a whole ResNet: it has no {missing} "
                                       r"keys \(layer.\.0\.conv1\.weight, \.\.\.\)"):
    resnet_torch.load_torchvision_resnet(path)
  with pytest.raises(ValueError, match="^the ResNet params tree is not a whole ResNet"):
    resnet_torch.resnet_architecture({"conv1": {}, "bn1": {}})
