"""Several processes (hosts) as one run: start-up, barriers and gathering host results.

Every process runs the same command. `initialize` joins them through `jax.distributed`
before JAX touches a device: on SLURM and TPU VMs JAX reads the coordinator, process count
and index from the cluster's environment; elsewhere they come from the flags (or
$JAX_COORDINATOR_ADDRESS). After that `jax.devices()` lists every process's devices, the
training mesh spans all of them, each process feeds only its share of every global batch, and
files are written by process 0 (orbax checkpoints by all processes together).
"""
import os
from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

MODES = ("auto", "on", "off")
# Set inside a SLURM job step (srun) with more than one task, or on a multi-worker TPU VM slice.
CLUSTER_HINTS = (("SLURM_STEP_NUM_TASKS", lambda v: int(v) > 1),
                 ("TPU_WORKER_HOSTNAMES", lambda v: "," in v))


def wanted(mode: str, num_processes: Optional[int], environ=os.environ) -> bool:
  """Whether to start jax.distributed: `on`, or `auto` with a multi-process setting or cluster."""
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}; valid: {list(MODES)}")
  if mode != "auto":
    return mode == "on"
  if (num_processes or 1) > 1 or environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  return any(name in environ and is_multi(environ[name]) for name, is_multi in CLUSTER_HINTS)


def initialize(mode: str = "auto", coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None) -> bool:
  """Joins the processes of a multi-process run (see module doc); True if it did.

  Must run before any JAX computation. Unset arguments are auto-detected by JAX on SLURM,
  Open MPI, Kubernetes and Cloud TPU.
  """
  if not wanted(mode, num_processes):
    return False
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.warning("process %d of %d: %d local / %d global devices", jax.process_index(),
                  jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier of this name (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _gather_strings(values: np.ndarray) -> np.ndarray:
  """process_allgather for str arrays: fixed-width UTF-8 bytes of a width all processes agree on."""
  encoded = np.char.encode(values.astype(str), "utf-8")
  width = int(np.max(multihost_utils.process_allgather(np.asarray(encoded.dtype.itemsize))))
  raw = encoded.astype(f"S{max(width, 1)}")
  as_bytes = raw.view(np.uint8).reshape(raw.shape + (-1,))
  gathered = multihost_utils.process_allgather(as_bytes, tiled=True)
  return np.char.decode(np.ascontiguousarray(gathered).view(f"S{max(width, 1)}")[..., 0],
                        "utf-8").astype(object)


def gather_rows(values) -> np.ndarray:
  """Concatenates every process's host rows along axis 0, in process order (same on all).

  Every process must pass the same number of rows; str/object arrays are supported. A global
  jax.Array sharded over the batch axis (e.g. a model's output) is fetched whole instead.
  """
  if isinstance(values, jax.Array) and not values.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(values, tiled=True))
  values = np.asarray(values)
  if jax.process_count() == 1:
    return values
  if values.dtype == object or values.dtype.kind in "US":
    return _gather_strings(values)
  return np.asarray(multihost_utils.process_allgather(values, tiled=True))


def host_copy(tree):
  """NumPy copies of replicated (possibly multi-process) arrays, e.g. a restored state, to
  move onto this process's own devices for work no other process takes part in."""
  def local(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(local, tree)


def process_zero_first(fn, name: str):
  """fn() on process 0, then on the others once it is done (e.g. building a shared dataset
  folder once instead of every process writing it at the same time)."""
  if jax.process_index() == 0:
    result = fn()
    barrier(name)
    return result
  barrier(name)
  return fn()
