#!/usr/bin/env bash
# Every worker of a Cloud TPU VM (pod slice), from your workstation:
#
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG[:ARG] WORKDIR [flags]
#
# runs the same `python -m jaxmm.main` on all workers at once through
# `gcloud compute tpus tpu-vm ssh --worker=all`; jax.distributed.initialize() finds the
# workers, their count and index from the TPU VM's metadata. Each worker needs this repository
# at the same path ($JAXMM_REMOTE_DIR, default ~/jaxmm) installed with `pip install -e .` and
# `pip install 'jax[tpu]'`, the data under the same JAXMM_DATA_DIR, and WORKDIR on a filesystem
# every worker sees (e.g. a Filestore/NFS mount).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG[:ARG] WORKDIR [extra flags...]" >&2
  exit 2
fi
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
remote_dir=${JAXMM_REMOTE_DIR:-'~/jaxmm'}
flags=$(printf ' %q' --config="$config" --workdir="$workdir" --distributed=on "$@")
exec gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd $remote_dir && JAXMM_DATA_DIR=${JAXMM_DATA_DIR:-} python -m jaxmm.main$flags"
