"""Helpers for config files: the `:arg` string, variants, and key validation.

Config files call `parse_arg("model=film,smoke", model="concat", smoke=False)` (big_vision
style) and `select_variant(config, name)`; `check_keys` reports a misspelt key together with
the closest valid one; `differences` compares two configs read back as JSON (config.json).
"""
import difflib
from typing import Any

import ml_collections
from ml_collections import config_dict


def closest(name: str, valid) -> str:
  """' Did you mean X?' for the closest valid name, or '' if nothing is close."""
  match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
  return f" Did you mean {match[0]!r}?" if match else ""


def checked_items(given, valid, where: str) -> list[tuple[str, Any]]:
  """The (key, value) pairs of a config section (ConfigDict or dict, None = empty), each key
  checked against `valid`: an unknown one raises with the valid keys and the closest match."""
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given or {})
  for key in given:
    if key not in valid:
      raise ValueError(f"unknown {where} key {key!r}; valid keys: {sorted(valid)}."
                       f"{closest(key, valid)}")
  return list(given.items())


def _convert(value: str, default: Any) -> Any:
  if isinstance(default, bool):
    if value.lower() in ("1", "true", "yes", ""):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"expected a boolean, got {value!r}")
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "k1=v1,flag,k2=v2" into a ConfigDict over `defaults` (a bare token sets True).

  Unknown keys raise ValueError naming the valid ones (and the closest match).
  """
  out = dict(defaults)
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    key, _, value = token.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; valid arguments: "
                       f"{sorted(defaults)}.{closest(key, defaults)}")
    out[key] = _convert(value, defaults[key]) if "=" in token else True
  return ml_collections.ConfigDict(out)


def select_variant(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets `config.model` modalities/fusion (and the data the modalities need) from
  `config.variants[name]`, and `config.optimizer.freeze` when the variant has a `freeze`
  entry; unknown names raise listing the valid variants."""
  if name not in config.variants:
    raise ValueError(f"unknown model variant {name!r}; valid variants: "
                     f"{sorted(config.variants)}.{closest(name, config.variants)}")
  variant = config.variants[name]
  if isinstance(variant.modalities, str):  # tuple("image") would be its letters
    raise ValueError(f"config.variants.{name}.modalities must be a tuple of names, e.g. "
                     f"('{variant.modalities}',), got the string {variant.modalities!r}")
  with config.unlocked() if hasattr(config, "unlocked") else _null():
    config.variant = name
    config.model.modalities = tuple(variant.modalities)
    config.model.fusion = variant.fusion
    config.data.use_meta = "meta" in variant.modalities
    config.data.use_text = "text" in variant.modalities
    if "freeze" in variant:
      config.optimizer.freeze = tuple(variant.freeze)
  return config


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
               prefix: str = "config") -> None:
  """Raises KeyError for the first key of `config` that `reference` lacks, with suggestions.

  Used on `--config.x=y` overrides and on configs read back from a workdir.
  """
  for key, value in config.items():
    if key not in reference:
      raise KeyError(f"{prefix}.{key} is not a valid key; valid keys under {prefix}: "
                     f"{sorted(reference.keys())}.{closest(key, reference.keys())}")
    if isinstance(value, ml_collections.ConfigDict) and isinstance(
        reference[key], ml_collections.ConfigDict):
      check_keys(value, reference[key], f"{prefix}.{key}")


def builder_overrides() -> ml_collections.ConfigDict:
  """`config.data.builder_overrides`: unset (None) keeps the named builder config's value."""
  return ml_collections.ConfigDict({name: config_dict.placeholder(int)
                                    for name in ("num_examples", "image_size", "seed")})


def train_defaults() -> ml_collections.ConfigDict:
  """`config.train` durations: each `*_epochs` has a `*_steps` twin (steps win when set)."""
  train = ml_collections.ConfigDict()
  for name in ("num", "warmup", "eval_every", "checkpoint_every"):
    train[f"{name}_epochs"] = config_dict.placeholder(float)
    train[f"{name}_steps"] = config_dict.placeholder(int)
  return train


def apply_smoke_schedule(train: ml_collections.ConfigDict, steps: int) -> None:
  """A few steps, logged every step, one evaluation and checkpoint at the end."""
  for name in ("num", "warmup", "eval_every", "checkpoint_every"):
    train[f"{name}_epochs"] = None
  train.num_steps = steps
  train.warmup_steps = 1
  train.eval_every_steps = steps
  train.checkpoint_every_steps = steps
  train.log_every_steps = 1
  # 0, not None: the field stays an int, so --config.train.early_stopping.patience=3 still
  # parses on a smoke config (absl types an override by the field's current value).
  train.early_stopping.patience = 0  # 0 = no early stopping


# What to pass instead of None to an int field of the configs that has an "off" value.
NONE_HINTS = {"train.early_stopping.patience": "0 turns early stopping off"}


def check_override_paths(config: ml_collections.ConfigDict, argv, flag: str = "config") -> None:
  """Checks every `--config.a.b=value` in `argv` against `config` before absl applies it,
  so a misspelt key fails with the valid keys at that level and the closest one, and None
  given to an int field fails saying what to pass (absl's message is int() of 'None')."""
  prefix = f"--{flag}."
  for arg in argv:
    if not arg.startswith(prefix):
      continue
    dotted, has_value, value = arg[len(prefix):].partition("=")
    node, walked = config, flag
    for key in dotted.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ValueError(f"--{walked}.{key}: {walked} has no key {key!r}; valid keys: {valid}."
                         f"{closest(key, valid)}")
      node, walked = node[key], f"{walked}.{key}"
    if (has_value and value.lower() == "none" and isinstance(node, int)
        and not isinstance(node, bool)):
      hint = NONE_HINTS.get(dotted)
      raise ValueError(f"{arg}: {walked} is an int field and cannot be None"
                       + (f" ({hint})" if hint else ""))


def config_spec_in(argv, flag: str = "config") -> str | None:
  """The FILE[:ARG] of `--config=FILE[:ARG]` or `--config FILE[:ARG]` in `argv`, else None."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag}="):
      return arg.split("=", 1)[1]
    if arg == f"--{flag}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


# The config settings that determine the trained model: the seed and the model, data,
# optimizer and train sections, less the keys that do not change it (paths, and settings of
# speed, logging, checkpoint frequency or the final evaluation). One definition serves both
# uses: a training run refuses a workdir whose config.json differs in them
# (loop.check_workdir_config), and checkpointing.config_hash keys every cache of a model's
# outputs on them. Sections used only by later stages (saliency, evaluation, shap, baselines,
# fairness, report, pipeline, eval, variants) are not part of them.
MODEL_SECTIONS = ("seed", "model", "data", "optimizer", "train")
MODEL_IGNORED = ("data.data_dir", "data.manual_dir", "data.eval_batch_size", "data.num_threads",
                 "data.prefetch_to_device", "data.keep_fields", "train.log_every_steps",
                 "train.progress", "train.async_checkpoints", "train.checkpoint_every_epochs",
                 "train.checkpoint_every_steps", "train.final_eval_splits")


def class_weights_choice(choice) -> Any:
  """`config.train.class_weights` with the strings "None" / "none" read as None: absl types
  `--config.train.class_weights=None` by the field's value ("balanced"), so it arrives as a
  string, and a None field cannot be overridden at all."""
  return None if isinstance(choice, str) and choice.lower() == "none" else choice


def model_settings(config_json: dict) -> dict:
  """The flat {"a.b": value} settings of a config read back from JSON (MODEL_SECTIONS less
  MODEL_IGNORED) that determine the trained model, with the spellings of one setting made
  one: class_weights "None" is None, patience None is 0."""
  flat = flat_items({k: config_json[k] for k in MODEL_SECTIONS if k in config_json})
  flat = {k: v for k, v in flat.items()
          if not any(k == i or k.startswith(f"{i}.") for i in MODEL_IGNORED)}
  if "train.class_weights" in flat:
    flat["train.class_weights"] = class_weights_choice(flat["train.class_weights"])
  if "train.early_stopping.patience" in flat:
    flat["train.early_stopping.patience"] = flat["train.early_stopping.patience"] or 0
  return flat


MISSING = "<absent>"  # a key one of two compared configs lacks


def flat_items(tree: dict, prefix: str = "") -> dict:
  """{"a.b.c": leaf} of a nested dict such as a config read back from JSON (an empty dict is
  a leaf, lists are compared whole)."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      flat.update(flat_items(value, f"{name}."))
    else:
      flat[name] = value
  return flat


def differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """(key, old value, new value) of every key of two flat dicts whose values differ, sorted by
  key; a key one side lacks has MISSING there."""
  return [(key, old.get(key, MISSING), new.get(key, MISSING))
          for key in sorted(set(old) | set(new))
          if old.get(key, MISSING) != new.get(key, MISSING)]


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` the way `--config` does (for pre-flight checks)."""
  import importlib.util
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_jaxmm_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"config file {path!r} not found")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None) if arg else module.get_config()
