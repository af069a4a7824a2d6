"""One of two processes saving a replicated state as both `latest` and `best` at every step
(async), as a run does whenever validation improves: python two_process_saves.py PROCESS PORT
WORKDIR STEPS. Prints `saved N steps` when both managers finished."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmm.train import checkpointing


def main(process_id: int, port: int, workdir: str, steps: int) -> None:
  jax.distributed.initialize(f"localhost:{port}", 2, process_id, shutdown_timeout_seconds=30)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  state = jax.jit(lambda: {"w": jnp.ones((4, 8))},
                  out_shardings=NamedSharding(mesh, PartitionSpec()))()
  checkpointer = checkpointing.Checkpointer(workdir, async_save=True)
  for step in range(1, steps + 1):
    checkpointer.save(step, state, {"step": step}, best=True)
  checkpointer.wait()
  print(f"saved {steps} steps", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
