#!/usr/bin/env bash
# The GPU rows of README "Speed": jnas and the PyTorch reference timed on the same GPU, one process
# after another (never side by side), each writing its JSON into one folder.
#
#   bash benchmarks/gpu.sh models [folder]   # model_step (supernet, DARTS_V2) + pytorch_reference --device cuda
#   bash benchmarks/gpu.sh search [folder]   # search_step: DARTS's three orders at 1 seed, then 4 and 8 vmapped seeds
#   bash benchmarks/gpu.sh methods [folder]  # search_step: every registered method at paper size, 1 seed
#   bash benchmarks/gpu.sh packed [folder]   # train_step --part packed: K = 1, 2, 4, 8 genotypes, study and paper size
#
# folder defaults to benchmarks/results/gpu; PYTHON picks the interpreter (default python3), REPS the
# number of timed steps (default 50; a GPU step takes milliseconds, so more than on a CPU).
set -uo pipefail
part=${1:?usage: bash benchmarks/gpu.sh models|search|methods|packed [folder]}
out=${2:-benchmarks/results/gpu}
py=${PYTHON:-python3}
reps=${REPS:-50}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
cd "$(dirname "$0")/.."
"$py" -c "import jax, jnas; print('jax', jax.__version__, jax.devices())" || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>/dev/null
status=0
# A jnas benchmark that aborts inside XLA's compiler (exit 134) is run once more with XLA's Triton
# GEMM fusion off, and says so.
jnas_run() {
  "$py" -m "$@" && return 0
  local rc=$?
  if [ $rc -eq 134 ]; then
    echo "exit 134 (XLA abort): again with --xla_gpu_enable_triton_gemm=false" >&2
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false" "$py" -m "$@" && return 0
  fi
  status=1
}
case "$part" in
  models)
    for m in supernet network; do
      jnas_run benchmarks.model_step --model "$m" --reps "$reps" --out "$out/model_step_$m.json"
    done
    "$py" -m benchmarks.pytorch_reference --device cuda --threads "$(nproc)" --reps "$reps" --out "$out/pytorch_reference.json" || status=1
    ;;
  search)
    jnas_run benchmarks.search_step --methods darts --orders first,second,second-fd --seeds 1 --reps "$reps" \
      --out "$out/search_step_orders.json"
    jnas_run benchmarks.search_step --methods darts --orders first,second --seeds 4,8 --reps "$reps" \
      --out "$out/search_step_seeds.json"
    ;;
  methods)
    jnas_run benchmarks.search_step --last-stage --reps "$reps" --out "$out/search_step_methods.json"
    jnas_run benchmarks.search_step --methods gdas --seeds 2 --reps "$reps" --out "$out/search_step_gdas_vmap.json"
    jnas_run benchmarks.search_step --methods gdas --seeds 2 --batching loop --reps "$reps" \
      --out "$out/search_step_gdas_loop.json"
    ;;
  packed)
    jnas_run benchmarks.train_step --part packed --size both --reps "$reps" --out "$out/train_step_packed.json"
    ;;
  *) echo "unknown part: $part (models, search, methods or packed)" >&2; exit 2 ;;
esac
exit $status
