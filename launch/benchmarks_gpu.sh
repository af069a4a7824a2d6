#!/usr/bin/env bash
# The peer benchmarks on one GPU, most important first, each in its own process with its own
# time limit (one that fails or runs over is reported and the next one runs): saliency vs
# captum, ResNet-50 (bfloat16) / ResNet-18 (float32) / BERT-base (bfloat16) training vs
# transformers' PyTorch classes, ResNet-50 with XLA's own conv / max-pool gradients.
# Numbers go to OUTDIR/<part>.json, the whole log to OUTDIR/log.txt (about 8 minutes on an
# H200, most of it compilation; docs/benchmarks/ has a run); the exit status is 1 if any part
# failed or ran over.
#
#   launch/benchmarks_gpu.sh [OUTDIR]     (needs the test extra: torch, transformers, captum)
set -uo pipefail
out=${1:-bench_out}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # OUTDIR is relative to where this is run, not to the checkout
cd "$(dirname "$0")/.."
failed=()
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
part() {  # part LIMIT_S NAME BENCHMARK_ARGS...
  local limit=$1 name=$2
  shift 2
  echo "=== [$(( $(date +%s) - start )) s] $name: $*"
  timeout "$limit" python -m jaxmm.benchmark "$@" --no-xla_cpu_flags --json="$out/$name.json" \
    || { echo "!!! $name failed or ran over ${limit}s (exit $?)"; failed+=("$name"); }
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
part 150 saliency saliency --batch=32 --steps=50 --samples=2 --path_chunk=25 --sample_chunk=1 \
  --captum_batch=800 --repeats=5
part 240 r50 train --models=resnet50 --repeats=20 --warmup=3
part 100 r18_f32 train --models=resnet18 --dtype=float32 --torch_compile=off --repeats=20 --warmup=3
part 200 bert train --models=bert --repeats=20 --warmup=3
part 100 r50_xla_grads train --models=resnet50 --torch_compile=off --no-fast_backward \
  --repeats=20 --warmup=3
echo "=== [$(( $(date +%s) - start )) s] done; numbers in $out/"
if [ ${#failed[@]} -gt 0 ]; then
  echo "!!! failed or ran over: ${failed[*]}"
  exit 1
fi
