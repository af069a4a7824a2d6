"""Run records in the workdir: metrics.jsonl, config.json, env_info.json, requirements.lock."""
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from typing import Any

import jax

from jaxmm.data.atomic import write_text_atomic
from jaxmm.models import batch_norm, onednn_conv
from jaxmm.train import steps

KEY_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
                "grain", "transformers", "scikit-learn", "scipy", "numpy", "ml-collections",
                "shap", "matplotlib")


def _jsonable(value: Any) -> Any:
  """NaN/inf become None so every line is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
    return _jsonable(value.item())
  return value


def dumps(record: dict) -> str:
  return json.dumps(_jsonable(record), sort_keys=True)


FINAL_PREFIX = "final_"  # kinds of the records of the evaluation after training


class MetricsWriter:
  """Appends one JSON object per line to `metrics.jsonl` (each line flushed as written)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled

  def write(self, step: int, kind: str, values: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind, "time": time.time(), **values}
    with open(self.path, "a") as f:
      f.write(dumps(record) + "\n")
      f.flush()

  def read(self) -> list:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` (written after the checkpoint a resumed run restarts from)
    and the final evaluation's (`final_*`, which the resumed run writes again), so a resumed
    run's metrics.jsonl matches an uninterrupted one."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [r for r in self.read()
            if r["step"] <= step and not str(r.get("kind", "")).startswith(FINAL_PREFIX)]
    write_text_atomic(self.path, "".join(dumps(r) + "\n" for r in kept))


def package_versions(names=KEY_PACKAGES) -> dict:
  versions = {}
  for name in names:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def env_info(seed: int) -> dict:
  """Versions, devices, seed and which convolutions, BatchNorm and non-finite guard ran: what
  a reader needs to reproduce the run."""
  return {
      "python": sys.version,
      "platform": platform.platform(),
      "packages": package_versions(),
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(),
      "seed": int(seed),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      **step_choices(),
  }


def step_choices() -> dict:
  """Which convolutions, BatchNorm and non-finite guard a training step in this process takes
  (each choice rounds differently): for run records and the train benchmark."""
  return {"convolutions": onednn_conv.describe(),  # oneDNN or XLA's, and why
          "batch_norm": batch_norm.describe(),  # which BatchNorm float32 ResNets train with
          "update_guard": steps.describe_update_guard()}  # cond or per-leaf select


def requirements_lock() -> str:
  """`pip freeze`-style pins of every installed distribution (read without a subprocess)."""
  pins = set()
  for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"]
    if name:
      pins.add(f"{name}=={dist.version}")
  return "\n".join(sorted(pins, key=str.lower)) + "\n"


def write_run_info(workdir: str, config_json: str, seed: int) -> None:
  """Writes config.json, env_info.json and requirements.lock at the start of a run."""
  write_text_atomic(os.path.join(workdir, "config.json"), config_json)
  write_text_atomic(os.path.join(workdir, "env_info.json"),
                    json.dumps(env_info(seed), indent=2))
  write_text_atomic(os.path.join(workdir, "requirements.lock"), requirements_lock())
