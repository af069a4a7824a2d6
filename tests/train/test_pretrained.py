"""Training from pretrained encoders (model.image.init_from / model.text.init_from): the fresh
state holds the converted weights, mismatches name the parameter, resumed runs skip the paths."""
import os
import types

import jax
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from jaxmm.data import tokenizer as tokenizer_lib
from jaxmm.models import build as model_build
from jaxmm.third_party import bert_hf, grayscale, resnet_hf
from jaxmm.train import loop, pretrained

REPORT_WORDS = "no acute cardiopulmonary process pleural effusion"


def save_tiny_resnet(directory, depths=(1, 1, 1, 1)) -> str:
  """A resnet_tiny-shaped (basic, width 8) RGB transformers ResNet with random BN statistics."""
  torch.manual_seed(0)
  config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64],
                                     depths=list(depths), layer_type="basic")
  model = transformers.ResNetModel(config)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_()
        module.running_var.uniform_(0.5, 1.5)
  model.save_pretrained(directory)
  return str(directory)


def save_tiny_bert(directory, vocab, masked_lm=False) -> str:
  """A 1-layer, 32-wide transformers BERT with `vocab` (vocab.txt) in `directory`."""
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=48,
                                   max_position_embeddings=64)
  (transformers.BertForMaskedLM if masked_lm else transformers.BertModel)(config).save_pretrained(
      directory)
  tokenizer_lib.write_vocab(os.path.join(directory, "vocab.txt"), vocab)
  return str(directory)


def image_model_config(path, **image):
  return ml_collections.ConfigDict({
      "modalities": ("image",), "fusion": "concat", "num_classes": 3,
      "image": {"encoder": "resnet_tiny", "in_channels": 3, "init_from": path, **image}})


def abstract_variables(model_config):
  """Shapes of the model's variables for a 32 x 32 RGB batch (nothing computed)."""
  model = model_build.build_model(model_config)
  batch = {"image": np.zeros((1, 32, 32, 3), np.float32)}
  return jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))


def test_shape_mismatch_names_the_parameter_both_shapes_and_the_checkpoint(tmp_path):
  path = save_tiny_resnet(tmp_path)
  config = image_model_config(path, width=16)
  with pytest.raises(ValueError) as error:
    pretrained.load_pretrained(config, abstract_variables(config))
  assert str(error.value) == (
      f"shape mismatch at params/image/bn1/bias: checkpoint (8,), model (16,); checkpoint "
      f"model.image.init_from={path!r} (a basic ResNet, stage sizes (1, 1, 1, 1), width 8, 3 "
      f"input channels (model.image.encoder='resnet_tiny', model.image.width=8); the model has "
      f"model.image.encoder='resnet_tiny' of width 16)")


def test_missing_and_unexpected_parameters_are_named(tmp_path):
  config = image_model_config(save_tiny_resnet(tmp_path), encoder="resnet18", width=8)
  with pytest.raises(ValueError, match=r"^params/image/layer1/1/bn1/bias \(8,\) of the model "
                                       r"is not in model.image.init_from=.*encoder='resnet18' "
                                       r"of width 8\)$"):
    pretrained.load_pretrained(config, abstract_variables(config))
  leaf = np.zeros((2, 2))
  with pytest.raises(ValueError, match=r"^params/text/extra/kernel \(2, 2\) \(and 0 more\) of "
                                       r"model.text.init_from='dir' \(BERT\) is not in the model"):
    pretrained.check_compatible({"params/text/a": leaf},
                                {"params/text/a": leaf, "params/text/extra/kernel": leaf},
                                "text", "dir", "BERT")


@pytest.mark.parametrize("in_channels", [3, None])
def test_stem_channel_mismatch_names_the_checkpoint_and_in_channels(tmp_path, in_channels):
  # A 1-channel checkpoint cannot feed an RGB model; the error said neither which checkpoint
  # nor which setting.
  model = transformers.ResNetModel.from_pretrained(save_tiny_resnet(tmp_path / "hf"))
  state = resnet_hf.torchvision_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
  state["conv1.weight"] = state["conv1.weight"][:, :1]
  path = str(tmp_path / "gray.safetensors")
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
  config = image_model_config(path, in_channels=in_channels)
  setting = ("model.image.in_channels=3" if in_channels
             else "model.image.in_channels=None: the batch's channel count")
  with pytest.raises(ValueError) as error:
    pretrained.load_pretrained(config, abstract_variables(config))
  assert str(error.value) == (
      f"model.image.init_from={path!r}: cannot adapt a pretrained stem conv with 1 input "
      f"channels to 3; only RGB (3) -> grayscale (1) is supported; the model's conv1 takes 3 "
      f"channels ({setting})")


def test_masked_lm_checkpoint_without_pooler_refuses_use_pooler(tmp_path):
  path = save_tiny_bert(tmp_path, tokenizer_lib.build_vocab([REPORT_WORDS]), masked_lm=True)
  config = ml_collections.ConfigDict({"modalities": ("text",),
                                      "text": {"init_from": path, "use_pooler": True}})
  with pytest.raises(ValueError, match="has no pooler weights .*use_pooler=False"):
    pretrained.load_pretrained(config, {"params": {"text": {}}})


def test_unused_modalities_and_unset_paths_change_nothing():
  variables = {"params": {"image": {"conv1": {"kernel": np.ones((7, 7, 3, 8))}}}}
  config = image_model_config(None)
  assert pretrained.load_pretrained(config, variables) is variables
  config = image_model_config("/no/such/weights.pth")
  config.modalities = ("meta",)
  assert pretrained.load_pretrained(config, variables) is variables
  config.modalities = ("image",)
  with pytest.raises(FileNotFoundError, match="model.image.init_from '/no/such/weights.pth' "
                                              "does not exist"):
    pretrained.load_pretrained(config, variables)


def test_fresh_state_starts_from_pretrained_encoders(smoke_config, tmp_path):
  vocab = tokenizer_lib.build_vocab([REPORT_WORDS])
  image_dir = save_tiny_resnet(tmp_path / "resnet")
  text_dir = save_tiny_bert(tmp_path / "bert", vocab)
  config = smoke_config("synthetic_cxr", "model=joint")  # grayscale images: in_channels=1
  config.model.image.init_from = image_dir
  config.model.image.width = 8  # resnet_tiny's, as the checkpoint's (the config says 64)
  config.model.text.init_from = text_dir
  run = loop.setup_run(config, str(tmp_path / "work"))
  # rbg keys: compiling threefry's random-normal kernels for init dominates CPU time here.
  try:
    with jax.default_prng_impl("rbg"):
      state = jax.device_get(loop.restore_or_init(run)[0])
  finally:
    run.checkpointer.close()
  assert int(state.step) == 0
  image = grayscale.adapt_input_channels(resnet_hf.load_hf_resnet(image_dir), 1)
  assert state.params["image"]["conv1"]["kernel"].shape == (7, 7, 1, 8)
  jax.tree.map(np.testing.assert_array_equal, state.params["image"], image["params"])
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats["image"], image["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, state.params["text"], bert_hf.load_hf_bert(
      text_dir)[0])
  # Sizes, vocabulary and tokenizer come from the text checkpoint, not the "tiny" preset.
  assert (run.model.text.hidden_size, run.model.text.num_layers) == (32, 1)
  assert run.model.text.vocab_size == run.info.vocab_size == len(vocab)
  ids = run.preprocessor.tokenizer(["no acute process"])["input_ids"][0]
  assert ids == [vocab.index(t) for t in ("[CLS]", "no", "acute", "process", "[SEP]")]


class FakeCheckpointer:
  """Just what restore_or_init asks of a checkpointer: the latest step and a restore."""

  def __init__(self, step):
    self.step = step

  def latest_step(self):
    return self.step

  def restore(self, abstract_state):
    if self.step is None:
      return None
    return types.SimpleNamespace(step=self.step), {"stopped": False}

  def set_aside_best_after(self, step):
    return []


@pytest.mark.parametrize("latest_step,loads", [(None, True), (4, False)])
def test_only_a_fresh_run_loads_pretrained_weights(monkeypatch, latest_step, loads):
  calls = []

  def create_state(run, load_pretrained=True):
    calls.append(load_pretrained)
    return np.zeros(2)

  monkeypatch.setattr(loop, "create_state", create_state)
  run = types.SimpleNamespace(checkpointer=FakeCheckpointer(latest_step),
                              writer=types.SimpleNamespace(truncate_after=lambda step: None))
  state, _ = loop.restore_or_init(run)
  assert calls == [loads]
  assert (latest_step is None) == isinstance(state, np.ndarray)
