#!/usr/bin/env bash
# Several nodes under SLURM: one process per node (driving all of its GPUs) or one per GPU.
#
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 launch/slurm.sh CONFIG[:ARG] WORKDIR [flags]
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm.sh CONFIG[:ARG] WORKDIR [flags]
#
# srun starts one `python -m jaxmm.main` per task; jax.distributed.initialize() takes the
# coordinator (first node of the step), process count and index from SLURM_*. Each task drives
# its share of its node's GPUs (jaxmm/train/distributed.py:slurm_local_device_ids): all of them
# with one task per node, one each with a task per GPU, or the ones SLURM bound to it
# (--gpus-per-task). Relative paths are taken from the submission directory. WORKDIR must be
# on a filesystem every node sees.
#SBATCH --job-name=jaxmm
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch [slurm options] launch/slurm.sh CONFIG[:ARG] WORKDIR [extra flags...]" >&2
  exit 2
fi
# sbatch runs a copy of this script from its spool folder: start from where it was submitted.
cd "${SLURM_SUBMIT_DIR:-.}"
exec srun --kill-on-bad-exit=1 python -m jaxmm.main --config="$1" --workdir="$2" \
  --distributed=on "${@:3}"
