#!/usr/bin/env python3
"""A stand-in for SLURM's `srun` on one machine: starts $SLURM_NTASKS copies of the command
with the variables a real job step sets (SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST, ...)
so launch/slurm.sh and JAX's SLURM detection run unchanged. Options before the command
(`--kill-on-bad-exit=1`) are accepted; any failing task stops the others, like that option."""
import os
import subprocess
import sys
import time


def main(argv):
  args = list(argv)
  while args and args[0].startswith("--"):
    args.pop(0)
  ntasks = int(os.environ["SLURM_NTASKS"])
  procs = []
  for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
               SLURM_STEP_NODELIST="localhost", SLURM_STEP_NUM_NODES="1",
               SLURM_STEP_NUM_TASKS=str(ntasks), SLURM_NTASKS_PER_NODE=str(ntasks))
    procs.append(subprocess.Popen(args, env=env))
  while any(p.poll() is None for p in procs):
    if any(p.poll() not in (None, 0) for p in procs):
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)
  return max(p.returncode for p in procs)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
