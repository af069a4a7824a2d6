"""Several processes (hosts) as one run: start-up, barriers and gathering host results.

Every process runs the same command. `initialize` joins them through `jax.distributed`
before JAX touches a device: on SLURM and TPU VMs JAX reads the coordinator, process count
and index from the cluster's environment; elsewhere they come from the flags (or
$JAX_COORDINATOR_ADDRESS). After that `jax.devices()` lists every process's devices, the
training mesh spans all of them, each process feeds only its share of every global batch, and
files are written by process 0 (orbax checkpoints by all processes together).
"""
import itertools
import os
import re
from typing import Optional

import jax
import numpy as np
from absl import logging
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODES = ("auto", "on", "off")
# Set inside a SLURM job step (srun) with more than one task, under Open MPI's mpirun with more
# than one process, or on a multi-worker TPU VM slice.
CLUSTER_HINTS = (("SLURM_STEP_NUM_TASKS", lambda v: int(v) > 1),
                 ("OMPI_COMM_WORLD_SIZE", lambda v: int(v) > 1),
                 ("TPU_WORKER_HOSTNAMES", lambda v: "," in v))


def wanted(mode: str, num_processes: Optional[int], environ=os.environ,
           coordinator_address: Optional[str] = None,
           process_id: Optional[int] = None) -> bool:
  """Whether to start jax.distributed: `on`, or `auto` with a multi-process flag (a process
  count above 1, a coordinator address or a process id), $JAX_COORDINATOR_ADDRESS, or a
  cluster's multi-process environment (CLUSTER_HINTS)."""
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}; valid: {list(MODES)}")
  if mode != "auto":
    return mode == "on"
  if ((num_processes or 1) > 1 or coordinator_address or process_id is not None
      or environ.get("JAX_COORDINATOR_ADDRESS")):
    return True
  return any(name in environ and is_multi(environ[name]) for name, is_multi in CLUSTER_HINTS)


def _tasks_on_node(environ) -> int:
  """This SLURM task's node's task count, from SLURM_STEP_TASKS_PER_NODE ("8(x2),4")."""
  counts = []
  for entry in environ.get("SLURM_STEP_TASKS_PER_NODE", "").split(","):
    match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", entry.strip())
    if match:
      counts += [int(match.group(1))] * int(match.group(2) or 1)
  node = int(environ.get("SLURM_NODEID", 0))
  if node < len(counts):
    return counts[node]
  tasks, nodes = (int(environ.get(k, 1)) for k in ("SLURM_STEP_NUM_TASKS", "SLURM_STEP_NUM_NODES"))
  return max(tasks // max(nodes, 1), 1)


def slurm_local_device_ids(environ=os.environ) -> Optional[list[int]]:
  """The GPUs (indices among those the process sees) a SLURM task drives; None leaves the
  choice to JAX (no SLURM step, no GPUs, or $JAX_LOCAL_DEVICE_IDS set).

  JAX alone gives task SLURM_LOCALID the one GPU of that index, which is right only when each
  of a node's tasks sees all its GPUs and there is one task per GPU. Here: a task that sees
  only its own GPUs (SLURM bound them, e.g. --gpus-per-task) drives all it sees; tasks that
  share a node's G GPUs split them, T tasks taking G/T each (all G with one task per node).
  """
  if "SLURM_STEP_NUM_TASKS" not in environ or environ.get("JAX_LOCAL_DEVICE_IDS"):
    return None
  on_node = int(environ.get("SLURM_GPUS_ON_NODE") or 0)
  visible_text = environ.get("CUDA_VISIBLE_DEVICES")
  visible = len([d for d in visible_text.split(",") if d.strip()]) if visible_text else on_node
  if visible == 0:
    return None
  tasks = _tasks_on_node(environ)
  if tasks == 1 or visible < on_node:  # the node's only task, or SLURM bound this task's GPUs
    return list(range(visible))
  if visible % tasks:
    raise ValueError(f"SLURM node {environ.get('SLURMD_NODENAME', '?')}: {tasks} tasks cannot "
                     f"share its {visible} GPUs evenly; use --ntasks-per-node=1 or one task "
                     f"per GPU (or set $JAX_LOCAL_DEVICE_IDS)")
  share = visible // tasks
  local = int(environ.get("SLURM_LOCALID", 0))
  return list(range(local * share, (local + 1) * share))


def initialize(mode: str = "auto", coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None) -> bool:
  """Joins the processes of a multi-process run (see module doc); True if it did.

  Must run before any JAX computation. Unset arguments are auto-detected by JAX on SLURM,
  Open MPI and Cloud TPU; under SLURM the task's GPUs come from `slurm_local_device_ids`.
  """
  if not wanted(mode, num_processes, coordinator_address=coordinator_address,
                process_id=process_id):
    return False
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=slurm_local_device_ids())
  except ValueError as e:  # JAX names its arguments, not jaxmm's flags
    raise ValueError(
        f"--distributed={mode}: cannot join a multi-process run ({e}). Outside SLURM, Open MPI "
        f"and Cloud TPU give every process --coordinator_address=HOST:PORT (or set "
        f"$JAX_COORDINATOR_ADDRESS), --num_processes and its own --process_id") from e
  logging.warning("process %d of %d: %d local / %d global devices", jax.process_index(),
                  jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# How long a process waits at a barrier for the others: process 0 works alone for a whole stage
# (on_process_zero) while they wait. A process that dies stops the run sooner: jax.distributed's
# heartbeats take the others down.
BARRIER_TIMEOUT_S = 24 * 3600
_barrier_count = itertools.count()


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process reaches the barrier of this name (nothing with one process).

  A barrier of jax.distributed's coordination service (as orbax's), not a device collective:
  `multihost_utils.sync_global_devices` ran a computation over every device, whose first run
  on CPU gave up when a process came more than 30 s after the others (gloo's context set-up:
  "DEADLINE_EXCEEDED ... cpu:gloo"), as happens when process 0 works alone on a stage while
  the others wait, and on GPUs kept the waiting ones busy in a collective. Every process
  passes its barriers in the same order; the n-th barrier of each must have the same name, or
  a ValueError names them.
  """
  if jax.process_count() == 1:
    return
  client = jax_distributed.global_state.client
  if client is None:  # several processes without jax.distributed (not a jaxmm launch)
    multihost_utils.sync_global_devices(name)
    return
  count = next(_barrier_count)
  key = f"jaxmm_barrier/{count}"
  client.key_value_set(f"{key}/{jax.process_index()}", name)
  try:
    client.wait_at_barrier(key, int(timeout_s * 1000))
  except Exception as e:  # the runtime's XlaRuntimeError / JaxRuntimeError
    raise RuntimeError(f"process {jax.process_index()} waited {timeout_s:g} s at barrier "
                       f"{name!r} (#{count}) and not every process came (one stuck, or one "
                       f"that took another path): {e}") from e
  names = {int(k.rsplit("/", 1)[1]): v for k, v in client.key_value_dir_get(key)}
  if len(set(names.values())) > 1:
    listed = "; ".join(f"process {p}: {n!r}" for p, n in sorted(names.items()))
    raise ValueError(f"the processes met at barrier #{count} under different names, so they "
                     f"run different code paths: {listed}")


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


def local_mesh() -> Mesh:
  """A 1-D mesh ("data") over this process's own devices, for work no other process joins."""
  return Mesh(np.asarray(jax.local_devices()), ("data",))


def local_replica(tree):
  """`tree` (e.g. restored variables, replicated over every process's devices) replicated
  over this process's own devices only, so process 0 can compute with it alone; unchanged
  with one process, where every device is local."""
  if jax.process_count() == 1:
    return tree
  return jax.device_put(host_copy(tree), NamedSharding(local_mesh(), PartitionSpec()))


def on_process_zero(fn, name: str):
  """fn() on process 0 alone, then a barrier: the other processes wait there until process 0
  is done, so none reads its files before they are written. Returns fn's result on process 0
  and None elsewhere. fn must join no collective (a barrier, orbax, a computation over
  devices of other processes): only process 0 runs it. Every process must call this, with
  the same name, whatever fn will find to do (a condition inside fn, never around the call)."""
  result = fn() if jax.process_index() == 0 else None
  barrier(name)
  return result


def process_zero_first(fn, name: str):
  """fn() on process 0, then on the others once it is done (e.g. building a shared dataset
  folder once instead of every process writing it at the same time)."""
  if jax.process_index() == 0:
    result = fn()
    barrier(name)
    return result
  barrier(name)
  return fn()
