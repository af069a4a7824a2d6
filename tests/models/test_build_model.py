"""build_model: registries, defaults, BERT presets and overrides, late weights, validation."""
import functools
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmm.models import BERT_SIZES, Bert, MetaMLP, ResNet, SmallCNN, build_model
from jaxmm.models.resnet import BasicBlock, Bottleneck
from jaxmm.train import config_lib

KEY = jax.random.key(0, impl="rbg")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(**fields) -> ml_collections.ConfigDict:
  base = {"modalities": ("image",), "fusion": "concat", "num_classes": 2}
  return ml_collections.ConfigDict({**base, **fields})


@pytest.mark.parametrize("fields,listing", [
    ({"fusion": "fusionn"}, "valid fusions: ['concat', 'film', 'joint', 'late']"),
    ({"image": {"encoder": "resnet19"}},
     "valid image encoder names: ['resnet18', 'resnet34', 'resnet50', 'resnet_tiny', 'small_cnn']"),
    ({"modalities": ("text",), "text": {"size": "huge"}},
     "valid BERT size names: ['base', 'large', 'medium', 'mini', 'small', 'tiny']"),
    ({"modalities": ("text",), "text": {"encoder": "gpt"}}, "valid text encoder names: ['bert']"),
    ({"modalities": ("meta",), "meta": {"encoder": "tree"}}, "valid meta encoder names: ['mlp']"),
    ({"modalities": ("image", "audio")}, "valid modality names: ['image', 'meta', 'text']"),
    ({"dtype": "float16"}, "valid dtype names: ['bfloat16', 'float32']"),
])
def test_unknown_names_list_the_valid_ones(fields, listing):
  with pytest.raises(ValueError, match=re.escape(listing)):
    build_model(config(**fields))


@pytest.mark.parametrize("fields,message", [
    ({"modalities": ()}, "non-empty tuple of distinct names"),
    ({"modalities": ("image", "image")}, "non-empty tuple of distinct names"),
    # a string was split into letters: "unknown modality 'i'"
    ({"modalities": "image"}, "must be a tuple of names, e.g. ('image',), got the string 'image'"),
    ({"modalities": "text"}, "must be a tuple of names, e.g. ('text',), got the string 'text'"),
    ({"num_classes": None}, "needs num_classes >= 1, got None"),
    ({"num_classes": -1}, "needs num_classes >= 1, got -1"),
    ({"fusion": "film"}, "missing ['meta']"),
    ({"modalities": ("image", "meta"), "fusion": "late", "head": {"late_weights": (1.0,)}},
     "late_weights must be 2 non-negative numbers"),
])
def test_invalid_configs_raise(fields, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    build_model(config(**fields))


def test_defaults():
  model = build_model(config())
  assert isinstance(model.image, ResNet)
  assert (model.image.stage_sizes, model.image.block_cls) == ((2, 2, 2, 2), BasicBlock)
  assert (model.image.width, model.image.zero_init_last_bn, model.image.num_classes) == (
      64, True, None)
  assert (model.fusion, model.head_hidden, model.head_dropout, model.joint_hidden) == (
      "concat", (128, 64), 0.3, 512)
  assert (model.late_weights, model.multilabel, model.dtype) == (None, False, jnp.float32)
  text = build_model(config(modalities=("text",))).text
  assert (text.num_layers, text.hidden_size, text.vocab_size, text.max_len, text.dropout,
          text.use_pooler) == (12, 768, 30522, 512, 0.1, False)
  meta = build_model(config(modalities=("meta",))).meta
  assert isinstance(meta, MetaMLP) and (meta.hidden, meta.dropout) == ((64, 64), 0.1)


def test_image_options_reach_the_encoder():
  model = build_model(config(image={"encoder": "resnet50", "in_channels": 1, "width": 32,
                                    "zero_init_last_bn": False, "dropout": 0.5}))
  image = model.image
  assert (image.block_cls, image.in_channels, image.width, image.zero_init_last_bn) == (
      Bottleneck, 1, 32, False)
  cnn = build_model(config(image={"encoder": "small_cnn", "in_channels": 3, "width": 64,
                                  "dropout": 0.4})).image
  assert isinstance(cnn, SmallCNN) and (cnn.dropout, cnn.in_channels) == (0.4, 3)


@pytest.mark.parametrize("size,dims", [
    ("tiny", (2, 128, 2, 512)), ("mini", (4, 256, 4, 1024)), ("small", (4, 512, 8, 2048)),
    ("medium", (8, 512, 8, 2048)), ("base", (12, 768, 12, 3072)), ("large", (24, 1024, 16, 4096)),
])
def test_bert_size_presets(size, dims):
  text = build_model(config(modalities=("text",), text={"size": size})).text
  assert (text.num_layers, text.hidden_size, text.num_heads, text.intermediate_size) == dims
  assert set(BERT_SIZES) == {"tiny", "mini", "small", "medium", "base", "large"}


def test_explicit_bert_dimensions_win_over_the_preset():
  model = build_model(config(modalities=("text",), text={
      "size": "mini", "num_layers": 1, "intermediate_size": 100, "vocab_size": 40,
      "max_len": 16, "use_pooler": True}))
  assert isinstance(model.text, Bert)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), KEY,
                          {"text_ids": jnp.zeros((2, 8), jnp.int32),
                           "text_mask": jnp.ones((2, 8), jnp.int32)})
  text = shapes["params"]["text"]
  assert list(text["encoder"]["layer"]) == ["0"]
  assert text["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"].shape == (256, 100)
  assert text["embeddings"]["word_embeddings"]["embedding"].shape == (40, 256)
  assert text["embeddings"]["position_embeddings"]["embedding"].shape == (16, 256)
  assert model.text.use_pooler


def test_late_weights_follow_the_config_modality_order():
  model = build_model(config(modalities=("meta", "image"), fusion="late",
                             head={"late_weights": (3.0, 1.0)}))
  assert model.modalities == ("image", "meta") and model.late_weights == (1.0, 3.0)


def test_plain_dict_config_builds_the_same_model():
  fields = {"modalities": ("image", "meta"), "fusion": "joint", "num_classes": 4,
            "image": {"encoder": "resnet_tiny"}, "head": {"joint_hidden": 7}}
  assert build_model(fields) == build_model(ml_collections.ConfigDict(fields))


def test_wrong_input_channels_name_expected_and_given_shape():
  model = build_model(config(image={"encoder": "resnet_tiny", "in_channels": 1}))
  with pytest.raises(ValueError, match=re.escape("1-channel images, shape [N, H, W, 1], got "
                                                 "shape (2, 32, 32, 3)")):
    jax.eval_shape(functools.partial(model.init, train=False), KEY,
                   {"image": jnp.zeros((2, 32, 32, 3))})
  shapes = jax.eval_shape(functools.partial(model.init, train=False), KEY,
                          {"image": jnp.zeros((2, 32, 32, 1))})
  assert shapes["params"]["image"]["conv1"]["kernel"].shape == (7, 7, 1, 8)
  assert np.prod(shapes["params"]["head"]["logits"]["kernel"].shape) == 64 * 2


@pytest.mark.parametrize("variant,head", [
    ("image", {"logits": (512, 14)}),
    ("text", {"dense_0": (768, 512), "logits": (512, 14)}),
    ("joint", {"dense_0": (512 + 768, 512), "logits": (512, 14)}),
])
def test_mimic_cxr_heads_are_paper_001s(variant, head):
  """Paper 001 sec. 3: the image-only ResNet-18's 512 features go "to 14 outputs using a linear
  layer"; [CLS] to "a multi-layer perceptron classifier"; 512 + 768 to a 2-layer head."""
  path = os.path.join(REPO, "configs", f"mimic_cxr.py:model={variant}")
  config = config_lib.load_config_file(path)
  config.model.num_classes, config.model.text.vocab_size = 14, 100  # set from the data at run time
  model = build_model(config.model)
  batch = {"image": jnp.zeros((1, 32, 32, 1)), "text_ids": jnp.zeros((1, 8), jnp.int32),
           "text_mask": jnp.ones((1, 8), jnp.int32)}  # a model reads its modalities' keys only
  shapes = jax.eval_shape(functools.partial(model.init, train=False), KEY, batch)
  assert {name: layer["kernel"].shape for name, layer in shapes["params"]["head"].items()} == head
