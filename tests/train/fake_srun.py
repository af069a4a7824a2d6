#!/usr/bin/env python3
"""A stand-in for SLURM's `srun` on one machine: starts $SLURM_NTASKS copies of the command
with the variables a real job step sets (SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST, ...)
so launch/slurm.sh and JAX's SLURM detection run unchanged. Options before the command
(`--kill-on-bad-exit=1`) are accepted; any failing task stops the others, like that option.

Each task's stdout and stderr lines go to stdout prefixed with its rank (`srun --label`), and
how each task ended is printed last (a signal by name), so a failed test shows which task
failed first and how."""
import os
import signal
import subprocess
import sys
import threading
import time


def _relay(rank: int, stream) -> None:
  for line in iter(stream.readline, b""):
    sys.stdout.buffer.write(f"{rank}: ".encode() + line)
    sys.stdout.buffer.flush()


def describe(code: int) -> str:
  if code is not None and code < 0:
    return f"killed by {signal.Signals(-code).name}"
  return f"exit code {code}"


def main(argv):
  args = list(argv)
  while args and args[0].startswith("--"):
    args.pop(0)
  ntasks = int(os.environ["SLURM_NTASKS"])
  procs, relays = [], []
  for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
               SLURM_STEP_NODELIST="localhost", SLURM_STEP_NUM_NODES="1",
               SLURM_STEP_NUM_TASKS=str(ntasks), SLURM_STEP_TASKS_PER_NODE=str(ntasks),
               SLURM_NODEID="0")
    procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT))
    relays.append(threading.Thread(target=_relay, args=(rank, procs[-1].stdout)))
    relays[-1].start()
  first_failure = None
  while any(p.poll() is None for p in procs):
    failed = [r for r, p in enumerate(procs) if p.poll() not in (None, 0)]
    if failed and first_failure is None:
      first_failure = failed[0]
      print(f"srun: task {first_failure}: {describe(procs[first_failure].returncode)}; "
            "killing the other tasks", flush=True)
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)
  for relay in relays:
    relay.join()
  for rank, p in enumerate(procs):
    print(f"srun: task {rank}: {describe(p.returncode)}", flush=True)
  if first_failure is not None:
    return 1
  return max(p.returncode for p in procs)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
