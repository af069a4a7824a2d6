"""Data parallelism: a 1-D device mesh, the batch sharded over it, the state replicated."""
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
