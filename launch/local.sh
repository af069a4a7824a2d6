#!/usr/bin/env bash
# One host, all of its devices (GPUs, TPU cores or CPU): jaxmm shards every batch over a
# mesh of all local devices by itself, so one process is all it takes.
#
#   launch/local.sh configs/synthetic_derm.py:model=film runs/derm_film [--mode=train] [--config.x=y ...]
#
# The same as `python -m jaxmm.main --config=CONFIG --workdir=WORKDIR [flags]` run from the
# current directory (relative paths are its), with this checkout importable.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:ARG] WORKDIR [extra flags...]" >&2
  exit 2
fi
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec python -m jaxmm.main --config="$1" --workdir="$2" "${@:3}"
