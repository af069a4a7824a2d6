"""Data parallelism: a 1-D device mesh, the batch sharded over it, the state replicated."""
import collections
from typing import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A mesh over every device of every process, one axis named "data"."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(f"{what} {global_batch_size} is not divisible by the {n} devices of the "
                     f"mesh; pick a multiple of {n}")


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles the global batch from this process's rows, sharded along the batch axis.

  Only numeric arrays travel to devices; str/object fields stay on the host.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items() if np.asarray(v).dtype != object}


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


class _Failed:
  """An exception met while preparing a batch, re-raised when that batch's turn comes."""

  def __init__(self, error: BaseException):
    self.error = error


def prefetch_to_mesh(batches: Iterator[dict], mesh: Mesh, keys: tuple,
                     size: int = 2) -> Iterator[dict]:
  """The `keys` of each host batch, sharded over `mesh`, `size` batches ahead of the consumer.

  Device transfers are asynchronous, so batch s+1..s+size travel while step s computes. An
  error while reading or transferring a batch is raised at that batch, not earlier, so the
  step it names is right.
  """
  queue = collections.deque()

  def enqueue() -> bool:
    try:
      host = next(batches)
    except StopIteration:
      return False
    except Exception as e:  # noqa: BLE001 -- re-raised in order below
      queue.append(_Failed(e))
      return True
    queue.append(shard_batch({k: v for k, v in host.items() if k in keys}, mesh))
    return True

  for _ in range(max(size, 1)):
    if not enqueue():
      break
  while queue:
    item = queue.popleft()
    if isinstance(item, _Failed):
      raise item.error
    enqueue()
    yield item
