"""One of two processes passing jaxmm barriers: python two_process_barriers.py PROCESS PORT
DELAY. Process 0 reaches the first barrier DELAY seconds after process 1, as when it works
alone on a stage (distributed.on_process_zero); then both meet at a second one, then at a
third under different names. Prints `late barrier passed` and the third's error."""
import sys
import time

import jax

from jaxmm.train import distributed


def main(process_id: int, port: int, delay: float) -> None:
  jax.distributed.initialize(f"localhost:{port}", 2, process_id, shutdown_timeout_seconds=30)
  jax.devices()  # the CPU backend (and its collectives) starts as it would in a run
  if process_id == 0:
    time.sleep(delay)
  distributed.barrier("stage done")
  distributed.on_process_zero(lambda: None, "second")
  print("late barrier passed", flush=True)
  try:
    distributed.barrier(f"path of process {process_id}")
  except ValueError as e:
    print(f"mismatch: {e}", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
