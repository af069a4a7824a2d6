"""Pretrained encoders at fresh initialisation: `model.image.init_from`, `model.text.init_from`.

  model.image.init_from  local path: a torchvision-format ResNet state dict file (.pth/.pt/.bin,
                         read with torch.load(weights_only=True), or .safetensors) or a Hugging
                         Face ResNet directory (jaxmm.third_party.resnet_torch / resnet_hf)
  model.text.init_from   local path: a Hugging Face BERT-family directory (config.json, weights,
                         tokenizer; jaxmm.third_party.bert_hf)
None (the default) keeps the seed's random initialisation. A key of a modality the model does
not use is ignored.

`create_state` initialises every parameter from the seed, then `load_pretrained` replaces the
`image/...` or `text/...` subtree (params, and batch_stats for the ResNet's BN statistics) with
the converted checkpoint. The fusion head and the other encoders keep their initialisation: the
checkpoint's classifier (torchvision `fc`, HF `classifier`) is never converted. Every converted
leaf must exist in the model with the same shape, and every leaf of the model's encoder must
come from the checkpoint, except the BERT pooler, which masked-LM checkpoints (CXR-BERT) lack
and which then stays initialised (use_pooler=True is refused for them); the error names the
first offending parameter, both shapes and what the checkpoint is. An RGB ResNet checkpoint
loaded into a 1-channel model (image in_channels=1) has its stem conv summed over the RGB
channels (jaxmm.third_party.grayscale). A resumed run restores its own checkpoint and does not
read these paths.

With `model.text.init_from`, model.text's architecture fields (sizes, vocab_size, max_len,
type_vocab_size) come from the directory's config.json (`text_config_from_checkpoint`, called
by loop.model_config_for, so the size preset and dimension keys of the config are overridden)
and the tokenizer comes from the same directory (pipeline.fit_preprocessor's tokenizer_dir).
"""
import os
from typing import Any, Callable, Mapping

import jax.numpy as jnp
from absl import logging
from flax import traverse_util

from jaxmm.third_party import bert_hf, checkpoint_files, grayscale, resnet_hf, resnet_torch

Variables = Mapping[str, Any]  # {"params": ..., "batch_stats": ...}
# The collections converted checkpoints fill (model.init also returns "perturbations").
COLLECTIONS = ("params", "batch_stats")
# Leaves of an encoder that a checkpoint may lack (they keep their initialisation).
OPTIONAL_LEAVES = {"text": ("params/text/pooler/",)}


def init_from(model_config: Mapping, modality: str) -> str | None:
  """`model.<modality>.init_from` when the model uses that modality and it is set, else None."""
  if modality not in tuple(model_config.get("modalities") or ()):
    return None
  return (model_config.get(modality) or {}).get("init_from") or None


def text_config_from_checkpoint(model_config: Any, tokenizer_vocab_size: int) -> Any:
  """model_config (a ConfigDict, updated in place) with model.text's architecture fields read
  from `model.text.init_from`'s config.json; unchanged without it. ValueError when the
  tokenizer has more ids than the checkpoint's vocabulary."""
  path = init_from(model_config, "text")
  if path is None:
    return model_config
  source = os.path.join(os.fspath(path), checkpoint_files.HF_CONFIG_FILE)
  fields = bert_hf.bert_config_from_hf(checkpoint_files.read_hf_config(path), source)
  if tokenizer_vocab_size > fields["vocab_size"]:
    raise ValueError(f"the tokenizer has {tokenizer_vocab_size} ids but {source} has "
                     f"vocab_size {fields['vocab_size']}; the tokenizer must come from the same "
                     f"directory as model.text.init_from")
  model_config.text.update(fields)
  return model_config


def flat_leaves(variables: Variables, modality: str) -> dict[str, Any]:
  """{"<collection>/<modality>/<path>": leaf} of one encoder's subtree in COLLECTIONS."""
  out = {}
  for collection in COLLECTIONS:
    tree = variables.get(collection, {})
    if modality in tree:
      for key, leaf in traverse_util.flatten_dict(tree[modality], sep="/").items():
        out[f"{collection}/{modality}/{key}"] = leaf
  return out


def check_compatible(model: Mapping[str, Any], checkpoint: Mapping[str, Any], modality: str,
                     source: str, description: str) -> None:
  """ValueError naming the first model leaf missing from the checkpoint or of another shape
  (params before batch_stats, paths in the model tree's order, which is sorted once jitted),
  else the first checkpoint leaf the model lacks. OPTIONAL_LEAVES of the modality may be
  missing. Leaves are keyed "<collection>/<modality>/<path>"."""
  where = f"model.{modality}.init_from={source!r} ({description})"
  for key, leaf in model.items():
    if key not in checkpoint:
      if not key.startswith(OPTIONAL_LEAVES.get(modality, ())):
        raise ValueError(f"{key} {tuple(leaf.shape)} of the model is not in {where}")
    elif tuple(checkpoint[key].shape) != tuple(leaf.shape):
      raise ValueError(f"shape mismatch at {key}: checkpoint {tuple(checkpoint[key].shape)}, "
                       f"model {tuple(leaf.shape)}; checkpoint {where}")
  extra = [key for key in checkpoint if key not in model]
  if extra:
    raise ValueError(f"{extra[0]} {tuple(checkpoint[extra[0]].shape)} (and {len(extra) - 1} "
                     f"more) of {where} is not in the model")


def replace_encoder(variables: Variables, modality: str, pretrained: Variables, source: str,
                    description: str) -> dict:
  """`variables` with the `modality` subtree of each collection replaced by the converted
  `pretrained` collections (cast to the model's dtypes), after check_compatible."""
  model = flat_leaves(variables, modality)
  checkpoint = flat_leaves({c: {modality: tree} for c, tree in pretrained.items()}, modality)
  check_compatible(model, checkpoint, modality, source, description)
  out = {collection: dict(tree) for collection, tree in variables.items()}
  for collection in {key.split("/")[0] for key in model}:
    prefix = f"{collection}/{modality}/"
    subtree = {key[len(prefix):]: jnp.asarray(checkpoint.get(key, leaf), leaf.dtype)
               for key, leaf in model.items() if key.startswith(prefix)}
    out[collection][modality] = traverse_util.unflatten_dict(subtree, sep="/")
  return out


def load_image(model_config: Mapping, variables: Variables, path: str) -> dict:
  """Replaces `image/...` by the ResNet at `path` (a file: torchvision format; a directory:
  Hugging Face), its stem adapted to the model's input channels."""
  path = checkpoint_files.require_path(path, "model.image.init_from")
  pretrained = (resnet_hf.load_hf_resnet(path) if os.path.isdir(path)
                else resnet_torch.load_torchvision_resnet(path))
  architecture = resnet_torch.resnet_architecture(pretrained["params"], path)
  description = (f"a {architecture.describe()}; the model has model.image.encoder="
                 f"{model_config['image'].get('encoder')!r}")
  model_kernel = variables["params"]["image"].get("conv1", {}).get("kernel")
  if model_kernel is not None:
    description += f" of width {model_kernel.shape[3]}"
    try:
      pretrained = grayscale.adapt_input_channels(pretrained, model_kernel.shape[2])
    except ValueError as error:
      in_channels = model_config["image"].get("in_channels")
      setting = f"model.image.in_channels={in_channels!r}" + (
          ": the batch's channel count" if in_channels is None else "")
      raise ValueError(f"model.image.init_from={path!r}: {error}; the model's conv1 takes "
                       f"{model_kernel.shape[2]} channels ({setting})") from error
  return replace_encoder(variables, "image", pretrained, path, description)


def load_text(model_config: Mapping, variables: Variables, path: str) -> dict:
  """Replaces `text/...` by the BERT at the Hugging Face directory `path`."""
  path = checkpoint_files.require_path(path, "model.text.init_from")
  params, fields = bert_hf.load_hf_bert(path)
  if model_config["text"].get("use_pooler") and "pooler" not in params:
    raise ValueError(f"model.text.init_from={path!r} has no pooler weights (a masked-LM "
                     f"checkpoint); set model.text.use_pooler=False to use the [CLS] state")
  return replace_encoder(variables, "text", {"params": params}, path, f"BERT {fields}")


LOADERS: dict[str, Callable[[Mapping, Variables, str], dict]] = {
    "image": load_image,
    "text": load_text,
}


def load_pretrained(model_config: Mapping, variables: Variables) -> Variables:
  """model.init's `variables` with every encoder that has an `init_from` replaced by its
  converted checkpoint (module docstring); unchanged when no init_from is set."""
  for modality, load in LOADERS.items():
    path = init_from(model_config, modality)
    if path is not None:
      variables = load(model_config, variables, path)
      logging.info("%s encoder initialised from %s", modality, path)
  return variables
