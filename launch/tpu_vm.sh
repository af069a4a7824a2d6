#!/usr/bin/env bash
# Every worker of a Cloud TPU VM (pod slice), from your workstation:
#
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG[:ARG] WORKDIR [flags]
#
# runs the same `python -m jaxmm.main` on all workers at once through
# `gcloud compute tpus tpu-vm ssh --worker=all`; jax.distributed.initialize() finds the
# workers, their count and index from the TPU VM's metadata. Each worker needs this repository
# at the same path ($JAXMM_REMOTE_DIR, default ~/jaxmm) installed with `pip install -e .` and
# `pip install 'jax[tpu]'` for $JAXMM_REMOTE_PYTHON (default python3), the data under the same
# JAXMM_DATA_DIR (passed on when set here), and WORKDIR on a filesystem every worker sees
# (e.g. a Filestore/NFS mount).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG[:ARG] WORKDIR [extra flags...]" >&2
  exit 2
fi
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
# The remote shell expands a leading ~/ (kept outside the quotes); the rest is quoted.
remote_dir=${JAXMM_REMOTE_DIR:-'~/jaxmm'}
case $remote_dir in
  '~') cd_to='~' ;;
  '~/'*) cd_to="~/$(printf %q "${remote_dir#'~/'}")" ;;
  *) cd_to=$(printf %q "$remote_dir") ;;
esac
# JAXMM_DATA_DIR is passed on only when it is set here; otherwise the workers' own applies.
data_dir=${JAXMM_DATA_DIR:+JAXMM_DATA_DIR=$(printf %q "$JAXMM_DATA_DIR") }
flags=$(printf ' %q' --config="$config" --workdir="$workdir" --distributed=on "$@")
exec gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd $cd_to && ${data_dir}${JAXMM_REMOTE_PYTHON:-python3} -m jaxmm.main$flags"
