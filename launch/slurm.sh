#!/usr/bin/env bash
# Several nodes under SLURM: one process per node (driving all of its GPUs) or one per GPU.
#
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 launch/slurm.sh CONFIG[:ARG] WORKDIR [flags]
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm.sh CONFIG[:ARG] WORKDIR [flags]
#
# srun starts one `python -m jaxmm.main` per task; jax.distributed.initialize() takes the
# coordinator (first node of the step), process count and index from SLURM_*. JAX on its own
# gives each SLURM task one GPU (SLURM_LOCALID); with one task per node this script hands the
# process all of the node's GPUs instead. WORKDIR must be on a filesystem every node sees.
#SBATCH --job-name=jaxmm
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch [slurm options] $0 CONFIG[:ARG] WORKDIR [extra flags...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
# sbatch runs a copy of this script from its spool folder: start from where it was submitted.
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
exec srun --kill-on-bad-exit=1 bash -c '
  if [ "${SLURM_NTASKS_PER_NODE:-1}" = 1 ] && [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
    export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((SLURM_GPUS_ON_NODE - 1)))
  fi
  exec python -m jaxmm.main --distributed=on "$@"' jaxmm --config="$config" --workdir="$workdir" "$@"
