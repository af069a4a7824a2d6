"""Orbax checkpoints of the train state: `checkpoints/latest` and `checkpoints/best`.

Each checkpoint holds the TrainState pytree and a small JSON record (loop state: early
stopping counters, best metric, epoch). Orbax writes to a temporary directory and renames,
so a killed run leaves either the old or the new checkpoint, never half of one.
"""
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the latest `keep_latest` checkpoints and the single best one."""

  def __init__(self, workdir: str, keep_latest: int = 2, async_save: bool = True):
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.latest = ocp.CheckpointManager(
        os.path.join(root, "latest"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep_latest,
                                             enable_async_checkpointing=async_save))
    self.best = ocp.CheckpointManager(
        os.path.join(root, "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                             enable_async_checkpointing=async_save))

  def save(self, step: int, state: Any, record: dict, *, best: bool = False) -> None:
    """Saves `state` and `record` as the latest checkpoint (and as the best one if `best`)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              record=ocp.args.JsonSave(record))
    self.latest.save(step, args=args, force=True)
    if best:
      self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   record=ocp.args.JsonSave(record)), force=True)

  def restore(self, abstract_state: Any, *, which: str = "latest",
              step: Optional[int] = None) -> Optional[tuple[Any, dict]]:
    """Restores (state, record) from the newest (or given) step; None if there is none.

    `abstract_state` gives structure, shapes, dtypes and shardings (e.g. from
    `jax.eval_shape` plus the target shardings); a shape mismatch raises naming the
    parameter.
    """
    manager = self.best if which == "best" else self.latest
    self.wait()
    step = manager.latest_step() if step is None else step
    if step is None:
      return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["record"])

  def latest_step(self, which: str = "latest") -> Optional[int]:
    return (self.best if which == "best" else self.latest).latest_step()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a concrete state, as restore targets."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)
