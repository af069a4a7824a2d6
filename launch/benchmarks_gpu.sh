#!/usr/bin/env bash
# The peer benchmarks on one GPU, each part in its own process with its own time limit (one
# that fails or runs over is reported and the next one runs):
#   saliency       IG + SmoothGrad and Grad-CAM vs captum
#   r50            ResNet-50 training, bfloat16, vs transformers' PyTorch (eager and compile)
#   r18_f32        ResNet-18 training, float32 (TF32), vs PyTorch (eager and compile)
#   bert           BERT-base training, bfloat16, vs PyTorch (eager and compile)
#   r50_xla_grads  jaxmm ablation, not a peer comparison: ResNet-50 with XLA's own conv /
#                  max-pool gradients (--no-fast_backward), to set against r50's jaxmm line
#                  (its torch line is eager only, for reference)
# Numbers go to OUTDIR/<part>.json, the log to OUTDIR/log.txt (appended); the exit status is 1
# if any part failed or ran over, 2 if a part name is unknown or a module is missing.
#
#   launch/benchmarks_gpu.sh [OUTDIR [PART...]]     (default: every part, in the order above)
#
# The parts' limits add up to 810 s (an H200 took 464 s, most of it compilation, before r18_f32
# timed torch.compile too). Where one command may run 600 s at most, run two invocations:
#   launch/benchmarks_gpu.sh OUTDIR saliency r50 r18_f32       (limits 510 s)
#   launch/benchmarks_gpu.sh OUTDIR bert r50_xla_grads         (limits 300 s)
# PYTHON picks the interpreter (default python3). It needs jaxmm's dependencies and the test
# extra (torch, transformers, captum); a preflight checks them before any part runs. Where
# the machine cannot reach a package index, carry the wheels (`pip download captum
# ml-collections -d wheels` elsewhere) and install them there with
# `pip install --no-index wheels/*.whl`.
set -uo pipefail
out=${1:-bench_out}
shift $(( $# > 0 ? 1 : 0 ))
py=${PYTHON:-python3}
# part name -> "time limit (s)|benchmark arguments"
declare -A PARTS=(
  [saliency]="140|saliency --batch=32 --steps=50 --samples=2 --path_chunk=25 --sample_chunk=1 --captum_batch=800 --repeats=5"
  [r50]="220|train --models=resnet50 --repeats=20 --warmup=3"
  [r18_f32]="150|train --models=resnet18 --dtype=float32 --torch_compile=auto --repeats=20 --warmup=3"
  [bert]="200|train --models=bert --repeats=20 --warmup=3"
  [r50_xla_grads]="100|train --models=resnet50 --torch_compile=off --no-fast_backward --repeats=20 --warmup=3"
)
ORDER=(saliency r50 r18_f32 bert r50_xla_grads)
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${ORDER[@]}")
for name in "${selected[@]}"; do
  if [ -z "${PARTS[$name]+set}" ]; then
    echo "!!! unknown part '$name'; the parts: ${ORDER[*]}" >&2
    exit 2
  fi
done
# The modules each benchmark imports (jaxmm.benchmark brings jax, flax and numpy).
modules=(jaxmm.benchmark torch transformers)
for name in "${selected[@]}"; do
  case ${PARTS[$name]#*|} in
    saliency*) modules+=(captum.attr) ;;
    train*) modules+=(flax optax ml_collections jaxmm.train.optimizers) ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)  # OUTDIR is relative to where this is run, not to the checkout
cd "$(dirname "$0")/.."
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
total=0
for name in "${selected[@]}"; do total=$(( total + ${PARTS[$name]%%|*} )); done
echo "=== parts: ${selected[*]} (time limits ${total} s in all); $py"
# Preflight: prints the modules that fail to import, one per line, and exits 1 if any did.
check='import importlib, sys
failed = []
for name in dict.fromkeys(sys.argv[1:]):
  try:
    importlib.import_module(name)
  except Exception as error:
    failed.append(f"{name} ({type(error).__name__}: {error})")
print("\n".join(failed))
sys.exit(1 if failed else 0)'
if ! missing=$("$py" -c "$check" "${modules[@]}" 2>&1); then
  echo "!!! $py cannot import what the parts need:"
  echo "$missing" | sed 's/^/    /'
  echo "!!! install them, or carry their wheels and install them offline:"
  echo "    pip download captum ml-collections -d wheels   (on a machine with an index)"
  echo "    $py -m pip install --no-index wheels/*.whl        (here)"
  echo "    (or PYTHON=/path/to/python for another interpreter)"
  exit 2
fi
failed=()
part() {  # part NAME: runs PARTS[NAME] under its time limit
  local name=$1 limit=${PARTS[$1]%%|*} args
  read -r -a args <<< "${PARTS[$1]#*|}"
  echo "=== [$(( $(date +%s) - start )) s] $name: ${args[*]}"
  timeout "$limit" "$py" -m jaxmm.benchmark "${args[@]}" --no-xla_cpu_flags \
    --json="$out/$name.json" \
    || { echo "!!! $name failed or ran over ${limit}s (exit $?)"; failed+=("$name"); }
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
for name in "${selected[@]}"; do part "$name"; done
echo "=== [$(( $(date +%s) - start )) s] done; numbers in $out/"
if [ ${#failed[@]} -gt 0 ]; then
  echo "!!! failed or ran over: ${failed[*]}"
  exit 1
fi
