"""build_model(config.model) -> MultimodalModel, from an ml_collections ConfigDict.

Config fields (read with `.get`, so a plain dict works too; defaults in brackets):
  modalities  tuple of "image" | "text" | "meta"; one modality gives a unimodal model
  fusion      "concat" | "late" | "joint" | "film"                                ["concat"]
  num_classes int (required);  multilabel bool [False];  dtype "float32" | "bfloat16" ["float32"]
  image       encoder (ENCODERS) ["resnet18"], in_channels [None = any], width [64],
              zero_init_last_bn [True], dropout (small_cnn) [0.25]
  text        encoder "bert", size (BERT_SIZES) ["base"], vocab_size [30522], max_len [512],
              type_vocab_size [2], dropout [0.1], use_pooler [False], and num_layers /
              hidden_size / num_heads / intermediate_size, which win over the size preset
  meta        encoder "mlp", hidden [(64, 64)], dropout [0.1]
  head        hidden [(128, 64)], dropout [0.3], joint_hidden [512],
              late_weights [None = plain mean; else one weight per entry of `modalities`]
`dtype` is the compute dtype; parameters are always float32 and logits are float32. Keys that
do not apply to the chosen encoder (e.g. `width` for small_cnn) are ignored, so one config
schema serves every encoder.
"""
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxmm.models.bert import BERT_SIZES, Bert
from jaxmm.models.fusion import MODALITIES, MultimodalModel, check_fusion
from jaxmm.models.resnet import ResNet18, ResNet34, ResNet50, ResNetTiny
from jaxmm.models.small_cnn import SmallCNN
from jaxmm.models.tabular import MetaMLP

Config = Mapping[str, Any]  # ml_collections.ConfigDict or dict: only `.get` is used


class ImageEncoder(NamedTuple):
  """An image encoder module (class or partial) and the config keys it accepts."""
  module: Callable[..., nn.Module]
  options: tuple[str, ...]


RESNET_OPTIONS = ("width", "zero_init_last_bn")
ENCODERS = {
    "resnet18": ImageEncoder(ResNet18, RESNET_OPTIONS),
    "resnet34": ImageEncoder(ResNet34, RESNET_OPTIONS),
    "resnet50": ImageEncoder(ResNet50, RESNET_OPTIONS),
    "resnet_tiny": ImageEncoder(ResNetTiny, RESNET_OPTIONS),
    "small_cnn": ImageEncoder(SmallCNN, ("dropout",)),
}
TEXT_ENCODERS = {"bert": Bert}
META_ENCODERS = {"mlp": MetaMLP}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BERT_OVERRIDES = ("num_layers", "hidden_size", "num_heads", "intermediate_size")
# config `head` key -> MultimodalModel field (unset keys keep the model's defaults)
HEAD_FIELDS = {"hidden": "head_hidden", "dropout": "head_dropout", "joint_hidden": "joint_hidden"}


def lookup(registry: Mapping[str, Any], name: str, kind: str) -> Any:
  """registry[name]; an unknown name raises ValueError listing the valid names."""
  if name not in registry:
    raise ValueError(f"unknown {kind} {name!r}; valid {kind} names: {sorted(registry)}")
  return registry[name]


def set_options(section: Config, keys: Sequence[str]) -> dict[str, Any]:
  """The entries of `keys` set (not None) in the section; unset ones keep module defaults."""
  return {key: section.get(key) for key in keys if section.get(key) is not None}


def build_image_encoder(section: Config, dtype: Any) -> nn.Module:
  """ResNet / SmallCNN without a classification head (features = pre_logits)."""
  spec = lookup(ENCODERS, section.get("encoder", "resnet18"), "image encoder")
  return spec.module(in_channels=section.get("in_channels"), dtype=dtype,
                     **set_options(section, spec.options))


def build_text_encoder(section: Config, dtype: Any) -> nn.Module:
  """Bert of the preset `size`, with explicit dimension overrides winning."""
  module = lookup(TEXT_ENCODERS, section.get("encoder", "bert"), "text encoder")
  dims = {**lookup(BERT_SIZES, section.get("size", "base"), "BERT size"),
          **set_options(section, BERT_OVERRIDES)}
  return module(**dims, dtype=dtype, **set_options(
      section, ("vocab_size", "max_len", "type_vocab_size", "dropout", "use_pooler")))


def build_meta_encoder(section: Config, dtype: Any) -> nn.Module:
  """MetaMLP with `hidden` widths and dropout."""
  module = lookup(META_ENCODERS, section.get("encoder", "mlp"), "meta encoder")
  options = set_options(section, ("hidden", "dropout"))
  if "hidden" in options:
    options["hidden"] = tuple(options["hidden"])
  return module(dtype=dtype, **options)


MODALITY_BUILDERS = {
    "image": build_image_encoder,
    "text": build_text_encoder,
    "meta": build_meta_encoder,
}


def check_modalities(modalities: Sequence[str] | None) -> tuple[str, ...]:
  """Validated modalities in config order; ValueError if a string, empty, repeated or unknown."""
  if isinstance(modalities, str):  # tuple("image") would be its letters
    raise ValueError(f"modalities must be a tuple of names, e.g. ({modalities!r},), got the "
                     f"string {modalities!r}")
  modalities = tuple(modalities or ())
  if not modalities or len(set(modalities)) != len(modalities):
    raise ValueError(f"modalities must be a non-empty tuple of distinct names from "
                     f"{list(MODALITIES)}, got {modalities}")
  for modality in modalities:
    lookup(MODALITY_BUILDERS, modality, "modality")
  return modalities


def canonical_late_weights(weights: Sequence[float] | None,
                           modalities: Sequence[str]) -> tuple[float, ...] | None:
  """Late weights given in config-modality order, reordered to the model's canonical order."""
  if weights is None:
    return None
  if len(weights) != len(modalities) or min(weights) < 0 or sum(weights) <= 0:
    raise ValueError(f"late_weights must be {len(modalities)} non-negative numbers with a "
                     f"positive sum, one per modality {list(modalities)}, got {weights}")
  by_modality = dict(zip(modalities, weights))
  return tuple(float(by_modality[m]) for m in MODALITIES if m in by_modality)


def build_model(model_config: Config) -> MultimodalModel:
  """The MultimodalModel the config describes (see the module docstring for the fields)."""
  modalities = check_modalities(model_config.get("modalities"))
  fusion = model_config.get("fusion", "concat")
  check_fusion(fusion, modalities)
  num_classes = model_config.get("num_classes")
  if num_classes is None or int(num_classes) < 1:
    raise ValueError(f"model config needs num_classes >= 1, got {num_classes}")
  dtype = lookup(DTYPES, model_config.get("dtype", "float32"), "dtype")
  encoders = {m: MODALITY_BUILDERS[m](model_config.get(m) or {}, dtype) for m in modalities}
  head = model_config.get("head") or {}
  head_options = {field: head.get(key) for key, field in HEAD_FIELDS.items()
                  if head.get(key) is not None}
  if "head_hidden" in head_options:
    head_options["head_hidden"] = tuple(head_options["head_hidden"])
  return MultimodalModel(
      num_classes=int(num_classes), fusion=fusion, **encoders,
      **head_options,
      late_weights=canonical_late_weights(head.get("late_weights"), modalities),
      multilabel=bool(model_config.get("multilabel", False)),
      dtype=dtype)
