"""Orbax checkpoints of the train state: `checkpoints/latest` and `checkpoints/best`.

Each checkpoint holds the TrainState pytree and a small JSON record (loop state: early
stopping counters, best metric, epoch). Orbax writes to a temporary directory and renames,
so a killed run leaves either the old or the new checkpoint, never half of one.

A checkpoint damaged afterwards (truncated or corrupted files) is not fatal: `restore` warns,
naming the bad checkpoint and the one it falls back to, moves the bad one aside to
`checkpoints/corrupt/` (never deleting anything) and restores the newest readable one. A
checkpoint whose shapes do not match the model built from the config is not damage: it raises
`CheckpointMismatch` naming the first mismatching parameter.

When a damaged checkpoint fails to restore, Python may also print "Exception ignored ...
RuntimeError: Event loop is closed" to stderr: orbax (0.12) closes its asyncio loop on the
first failed read while tensorstore still completes the others, whose callbacks then find the
loop closed. It is noise from that teardown; the warning or error above it is the diagnosis.
"""
import hashlib
import json
import os
import time
import warnings
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxmm.train import config_lib
from jaxmm.train import distributed


class CheckpointMismatch(ValueError):
  """A readable checkpoint whose parameter shapes do not match the configured model."""


class CheckpointUnreadable(RuntimeError):
  """No checkpoint of a manager could be read."""


# The checkpoints a workdir keeps (`which` of restore / latest_step, config.*.checkpoint).
CHECKPOINT_NAMES = ("best", "latest")


def check_checkpoint_name(which: str, where: str = "checkpoint") -> str:
  """`which` if it names a kept checkpoint; else ValueError naming `where` (e.g.
  "config.shap.checkpoint") and the valid names, so a typo never restores another one."""
  if which not in CHECKPOINT_NAMES:
    raise ValueError(f"{where} must be one of {list(CHECKPOINT_NAMES)}, got {which!r}."
                     f"{config_lib.closest(str(which), CHECKPOINT_NAMES)}")
  return which


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaf_shapes(tree) -> dict:
  """{"params/image/conv1/kernel": shape} for every leaf that has a shape."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in flat if hasattr(leaf, "shape")}


# Leaves under these are the model's variables: one only the checkpoint or only the model has
# means another model (e.g. another fusion head), not damage.
MODEL_VARIABLES = ("params/", "batch_stats/")


def check_shapes(abstract_state: Any, saved_tree: Any, where: str) -> None:
  """Raises CheckpointMismatch at the first parameter (in model order) whose saved shape
  differs from the model's or that the checkpoint lacks, else at the first one only the
  checkpoint has. Only MODEL_VARIABLES count as missing: leaves only one side has elsewhere
  (e.g. optimizer internals) are skipped."""
  saved, model = _leaf_shapes(saved_tree), _leaf_shapes(abstract_state)
  advice = ("(was the run trained with other model settings? use a new --workdir for a new "
            "model)")
  for name, shape in model.items():
    if name in saved and saved[name] != shape:
      raise CheckpointMismatch(
          f"checkpoint {where} does not match the config: {name} has shape {saved[name]} in the "
          f"checkpoint but {shape} in the model the config builds {advice}")
    if name not in saved and name.startswith(MODEL_VARIABLES):
      raise CheckpointMismatch(f"checkpoint {where} does not match the config: {name} is in the "
                               f"model the config builds but not in the checkpoint {advice}")
  for name in saved:
    if name not in model and name.startswith(MODEL_VARIABLES):
      raise CheckpointMismatch(f"checkpoint {where} does not match the config: {name} is in the "
                               f"checkpoint but not in the model the config builds {advice}")


class Checkpointer:
  """Keeps the latest `keep_latest` checkpoints and the single best one."""

  def __init__(self, workdir: str, keep_latest: int = 2, async_save: bool = True):
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.latest, self.best = (ocp.CheckpointManager(
        os.path.join(root, name),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save,
            # Both managers save the same step when it is the best so far; orbax names its
            # multi-process barriers by step, so without a prefix per manager the two saves'
            # barriers share names, pair up wrongly across processes and hang the run.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=f"jaxmm_{name}")))
        for name, keep in (("latest", keep_latest), ("best", 1)))

  def save(self, step: int, state: Any, record: dict, *, best: bool = False) -> None:
    """Saves `state` and `record` as the latest checkpoint (and as the best one if `best`)."""
    self.latest.save(step, args=_save_args(state, record), force=True)
    if best:
      self.save_best(step, state, record)

  def save_best(self, step: int, state: Any, record: dict) -> None:
    """Saves `state` and `record` as the best checkpoint (replacing the previous best)."""
    self.best.save(step, args=_save_args(state, record), force=True)

  def set_aside_best_after(self, step: int) -> list:
    """Moves best checkpoints of steps after `step` to checkpoints/superseded/ with a warning;
    returns their new paths (process 0; [] elsewhere).

    A run resumed at `step` (its newer latest checkpoints damaged, or never committed) trains
    those steps again: orbax would refuse to save a best step that exists, and a best newer
    than the restored record's best_step is not that run's best. Kept, not deleted.
    """
    self.wait()
    newer = sorted(s for s in self.best.all_steps() if s > step)
    if not newer:
      return []
    root = os.path.join(os.path.dirname(str(self.best.directory)), "superseded")
    moved = []
    if jax.process_index() == 0:
      os.makedirs(root, exist_ok=True)
      for s in newer:
        target = os.path.join(root, f"best_{s}_{int(time.time())}")
        os.replace(os.path.join(str(self.best.directory), str(s)), target)
        moved.append(target)
    distributed.barrier(f"jaxmm_best_set_aside_{step}")  # every process then sees the moves
    self.best.reload()
    warnings.warn(f"{self.best.directory} held step(s) {newer}, newer than the restored step "
                  f"{step}: the resumed run trains them again and saves their best anew"
                  + (f"; the old one is kept at {', '.join(moved)}" if moved else ""),
                  RuntimeWarning, stacklevel=3)
    return moved

  def restore(self, abstract_state: Any, *, which: str = "latest",
              step: Optional[int] = None) -> Optional[tuple[Any, dict]]:
    """Restores (state, record) from the newest readable (or the given) step; None if none.

    `abstract_state` gives structure, shapes, dtypes and shardings (e.g. from
    `jax.eval_shape` plus the target shardings). Shapes are checked against the saved
    metadata first (CheckpointMismatch names the parameter). Without `step`, an unreadable
    checkpoint is moved aside with a warning and the next older one is tried.
    """
    manager = self._manager(which)
    self.wait()
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    bad = []
    for candidate in steps:
      where = os.path.join(str(manager.directory), str(candidate))
      try:
        restored = self._restore_step(manager, candidate, abstract_state, where)
      except CheckpointMismatch:
        raise
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        if step is not None:
          raise CheckpointUnreadable(f"checkpoint {where} is unreadable: {_first_line(e)}") from e
        bad.append((where, _first_line(e)))
        continue
      if bad:
        self._set_aside(manager, bad, where)
      return restored
    if bad:
      raise CheckpointUnreadable("no readable checkpoint: " + "; ".join(
          f"{where}: {error}" for where, error in bad))
    return None

  @staticmethod
  def _restore_step(manager, step: int, abstract_state: Any, where: str) -> tuple[Any, dict]:
    saved = ocp.StandardCheckpointHandler().metadata(epath.Path(where) / "state")
    check_shapes(abstract_state, saved, where)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["record"])

  @staticmethod
  def _set_aside(manager, bad: list, good: str) -> None:
    """Moves unreadable step folders to checkpoints/corrupt/ (kept for inspection, out of the
    manager's sight so later saves are not refused) and warns naming them and the good one."""
    root = os.path.join(os.path.dirname(str(manager.directory)), "corrupt")
    moved = []
    if jax.process_index() == 0:
      os.makedirs(root, exist_ok=True)
      for where, _ in bad:
        target = os.path.join(root, f"{os.path.basename(str(manager.directory))}_"
                                    f"{os.path.basename(where)}_{int(time.time())}")
        os.replace(where, target)
        moved.append(target)
    manager.reload()
    details = "; ".join(f"{where} ({error})" for where, error in bad)
    warnings.warn(f"unreadable checkpoint {details}: restored {good} instead"
                  + (f"; the unreadable one is kept at {', '.join(moved)}" if moved else ""),
                  RuntimeWarning, stacklevel=3)

  def latest_step(self, which: str = "latest") -> Optional[int]:
    return self._manager(which).latest_step()

  def _manager(self, which: str):
    """The manager of checkpoint `which` ("best" / "latest"; any other name raises)."""
    return self.best if check_checkpoint_name(which, "checkpoint name") == "best" else self.latest

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _save_args(state: Any, record: dict) -> ocp.args.Composite:
  return ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record))


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a concrete state, as restore targets."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


# ------------------------------------------------------------------ which model a checkpoint is

def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a saved step of the `latest` or `best` checkpoint: a step folder
  (orbax renames its temporary folder to the step number once the save is complete)."""
  root = os.path.join(os.path.abspath(workdir), "checkpoints")
  return any(name.isdigit() for which in ("latest", "best")
             if os.path.isdir(os.path.join(root, which))
             for name in os.listdir(os.path.join(root, which)))


def config_hash(config) -> str:
  """sha256 (16 hex digits) of config_lib.model_settings of `config`: the settings that train
  (or feed) another model, the same ones a training run compares before it resumes a workdir."""
  settings = config_lib.model_settings(json.loads(config.to_json_best_effort()))
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def checkpoint_fingerprint(workdir: str, which: str, step: int) -> str:
  """sha256 (16 hex digits) of the relative paths and bytes of every file of the `which`
  checkpoint's step folder: identifies the saved checkpoint itself (a retrained model saved
  at the same step differs), reading the files once, cheaper than restoring them."""
  root = os.path.join(os.path.abspath(workdir), "checkpoints", which, str(step))
  digest = hashlib.sha256()
  for directory, subdirs, files in sorted(os.walk(root)):
    subdirs.sort()
    for name in sorted(files):
      path = os.path.join(directory, name)
      digest.update(os.path.relpath(path, root).encode("utf-8") + b"\0")
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          digest.update(chunk)
  return digest.hexdigest()[:16]


def model_identity(config, workdir: str, which: str, step: int) -> dict:
  """Which model the workdir's `which` checkpoint at `step` is, as every cache of its outputs
  records it (the embedding cache, saliency manifests, explanation-evaluation units): the
  checkpoint's fingerprint and the config hash. The step alone does not tell a model retrained
  from scratch and saved at the same step from the old one."""
  return {"checkpoint_fingerprint": checkpoint_fingerprint(workdir, which, step),
          "config_hash": config_hash(config)}
