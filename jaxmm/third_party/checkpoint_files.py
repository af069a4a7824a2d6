"""Reading checkpoint files from local paths into {name: NumPy array} state dicts.

Formats: `.safetensors` (the safetensors package's NumPy API; no torch needed), PyTorch pickles
`.pth` / `.pt` / `.bin` (`torch.load(weights_only=True)`, torch imported only then), and Hugging
Face model directories (config.json + model.safetensors or pytorch_model.bin, sharded
`*.index.json` included). Nothing here downloads: a path that does not exist is an error, never a
hub id. A PyTorch pickle is never loaded with arbitrary objects allowed: `weights_only=True`
lets tensors and plain containers through and refuses anything else.
"""
import json
import os
import pickle
from typing import Any, Mapping

import numpy as np

StateDict = dict[str, np.ndarray]
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
HF_CONFIG_FILE = "config.json"
# In the order transformers prefers them.
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
# Checkpoints saved by training scripts often nest the state dict under one of these keys.
NESTED_STATE_DICT_KEYS = ("state_dict", "model")


def require_path(path: str | os.PathLike, what: str) -> str:
  """`path` (with ~ expanded) if it exists; FileNotFoundError naming `what` otherwise."""
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} {path!r} does not exist; pretrained weights load from "
                            f"local paths only (hub ids are not downloaded)")
  return path


def import_torch(path: str) -> Any:
  """The torch module; ImportError saying how to do without it when torch is missing."""
  try:
    import torch  # heavy and optional: only PyTorch pickles need it
  except ImportError as e:
    raise ImportError(f"reading the PyTorch file {path} needs torch (pip install torch); "
                      f"or convert it once to .safetensors (safetensors.torch.save_file) and "
                      f"load that, which needs no torch") from e
  return torch


def bfloat16_tensor(path: str, key: str) -> np.ndarray:
  """One bfloat16 tensor of a safetensors file as float32 (NumPy has no bfloat16)."""
  import jax  # the flax reader returns jax arrays; keep them on the host
  from safetensors import safe_open
  with jax.default_device(jax.devices("cpu")[0]), safe_open(path, framework="flax") as f:
    return np.asarray(f.get_tensor(key), np.float32)


def load_safetensors(path: str) -> StateDict:
  """Every tensor of a .safetensors file, as NumPy arrays (bfloat16 ones as float32)."""
  from safetensors import safe_open
  out = {}
  with safe_open(path, framework="numpy") as f:
    for key in f.keys():
      if f.get_slice(key).get_dtype() == "BF16":
        out[key] = bfloat16_tensor(path, key)
      else:
        out[key] = f.get_tensor(key)
  return out


def unwrap_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
  """The state dict inside a loaded pickle: the object itself, or its "state_dict"/"model"
  entry when a training checkpoint nests it there."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping from "
                     f"parameter names to tensors)")
  for key in NESTED_STATE_DICT_KEYS:
    if isinstance(obj.get(key), Mapping):
      return obj[key]
  return obj


def tensors_to_numpy(state_dict: Mapping[str, Any], path: str) -> StateDict:
  """torch tensors -> NumPy arrays (bfloat16 -> float32); a non-tensor value is an error."""
  out = {}
  for key, value in state_dict.items():
    if not hasattr(value, "detach"):
      raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                       f"expected a state dict of tensors")
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    out[key] = value.numpy()
  return out


def load_torch_file(path: str) -> StateDict:
  """A PyTorch state dict file, unpickled with `weights_only=True` (tensors and containers
  only; anything else is refused with a ValueError and never executed)."""
  torch = import_torch(path)
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(f"refusing to load {path}: it holds objects other than tensors and plain "
                     f"containers, and it is only ever unpickled with weights_only=True. "
                     f"torch said: {str(e).splitlines()[0]}") from e
  return tensors_to_numpy(unwrap_state_dict(obj, path), path)


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
  """A .safetensors or .pth/.pt/.bin file as {name: NumPy array}."""
  path = require_path(path, "checkpoint file")
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a directory; expected a state dict file ending in one "
                            f"of {SAFETENSORS_SUFFIXES + TORCH_SUFFIXES}")
  if path.endswith(SAFETENSORS_SUFFIXES):
    return load_safetensors(path)
  if path.endswith(TORCH_SUFFIXES):
    return load_torch_file(path)
  raise ValueError(f"unknown checkpoint format of {path}; expected a file ending in one of "
                   f"{SAFETENSORS_SUFFIXES + TORCH_SUFFIXES}")


def read_hf_config(model_dir: str | os.PathLike) -> dict:
  """The parsed config.json of a local Hugging Face model directory."""
  model_dir = require_path(model_dir, "Hugging Face model directory")
  path = os.path.join(model_dir, HF_CONFIG_FILE)
  if not os.path.isdir(model_dir) or not os.path.exists(path):
    raise FileNotFoundError(f"{model_dir} is not a Hugging Face model directory: no "
                            f"{HF_CONFIG_FILE} in it")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_hf_state_dict(model_dir: str | os.PathLike) -> StateDict:
  """The weights of a local Hugging Face model directory: model.safetensors if present, else
  pytorch_model.bin (or their sharded `.index.json` forms)."""
  model_dir = require_path(model_dir, "Hugging Face model directory")
  for name in HF_WEIGHT_FILES:
    path = os.path.join(model_dir, name)
    if not os.path.exists(path):
      continue
    if not name.endswith(".index.json"):
      return load_state_dict_file(path)
    with open(path, encoding="utf-8") as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for shard in shards:
      out.update(load_state_dict_file(os.path.join(model_dir, shard)))
    return out
  raise FileNotFoundError(f"no weights in {model_dir}: expected one of {list(HF_WEIGHT_FILES)}")
