"""Optimizers: adam / adamw / sgd with warm-up + cosine, clipping and frozen sub-trees."""
import re
from typing import Any, Sequence

import flax
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


def make_schedule(opt_config, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak rate, then cosine decay (or constant) to the end."""
  lr = float(opt_config.learning_rate)
  schedule = opt_config.get("schedule", "cosine")
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; valid: {SCHEDULES}")
  warmup_steps = int(min(max(warmup_steps, 0), max(total_steps - 1, 0)))
  if schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1),
                                       alpha=float(opt_config.get("final_lr_fraction", 0.0)))
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def _base_transform(opt_config, schedule) -> optax.GradientTransformation:
  name = opt_config.get("name", "adam")
  wd = float(opt_config.get("weight_decay", 0.0))
  if name == "adam":
    tx = optax.adam(schedule, b1=opt_config.get("b1", 0.9), b2=opt_config.get("b2", 0.999))
    # Coupled L2 (PyTorch Adam's weight_decay) when asked for.
    return optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx
  if name == "adamw":
    return optax.adamw(schedule, b1=opt_config.get("b1", 0.9), b2=opt_config.get("b2", 0.999),
                       weight_decay=wd)
  if name == "sgd":
    tx = optax.sgd(schedule, momentum=opt_config.get("momentum", 0.9),
                   nesterov=bool(opt_config.get("nesterov", False)))
    return optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx
  raise ValueError(f"unknown optimizer {name!r}; valid: {OPTIMIZERS}")


def frozen_labels(params: Any, freeze: Sequence[str]) -> Any:
  """Labels each parameter "frozen" if its '/'-joined path matches one of `freeze` (regex,
  matched at the start of the path, e.g. "image/stage[12]" or "text"), else "trainable"."""
  patterns = [re.compile(p) for p in freeze]
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  labels = {k: "frozen" if any(p.match(k) for p in patterns) else "trainable" for k in flat}
  return flax.traverse_util.unflatten_dict(labels, sep="/")


def check_freeze_patterns(params: Any, freeze: Sequence[str]) -> None:
  """Raises if a freeze pattern matches no parameter (a typo would silently train all)."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  top = sorted({k.split("/")[0] + "/" + k.split("/")[1] if "/" in k else k for k in flat})
  for pattern in freeze:
    if not any(re.match(pattern, k) for k in flat):
      raise ValueError(f"optimizer.freeze pattern {pattern!r} matches no parameter; "
                       f"parameter paths start with: {top}")


def make_optimizer(opt_config, params: Any, total_steps: int,
                   warmup_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transformation and its learning-rate schedule.

  Gradient clipping by global norm (`grad_clip_norm`, 0/None = off) comes first; parameters
  whose path matches `opt_config.freeze` get zero updates through `optax.multi_transform`.
  """
  schedule = make_schedule(opt_config, total_steps, warmup_steps)
  tx = _base_transform(opt_config, schedule)
  clip = opt_config.get("grad_clip_norm", None)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  freeze = tuple(opt_config.get("freeze", ()) or ())
  if freeze:
    check_freeze_patterns(params, freeze)
    tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                               frozen_labels(params, freeze))
  return tx, schedule
