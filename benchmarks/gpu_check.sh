#!/usr/bin/env bash
# The GPU checks of issue 11 in one call, for a machine with CUDA: the GPU tests, then the throughput benchmark
# with the learner and the replay buffer on the GPU. Everything it writes goes under $OUT (default ./gpu_out):
#   env.txt              python, torch, CUDA, GPU, CPU cores
#   tests.txt            pytest of tests/test_gpu.py (sync-free update under set_sync_debug_mode("error"), CPU/GPU
#                        agreement, train on CUDA -> resume and eval on CPU) and tests/test_device.py
#   throughput-gpu.json  + .md: benchmarks/throughput.py --device cuda (update steps/s and GPU ms per update of
#                        MATD3 and RACE in each of $PRECISIONS (default fp32,bf16), shares of the float32 and the
#                        bfloat16 GPU peak, per-section CPU and GPU time, end-to-end env steps/s with rollout workers)
#   rc.txt               exit status of each step
# Usage: PYTHON=/path/to/python bash benchmarks/gpu_check.sh [--quick]
# Budget: about 6 minutes with --quick on HalfCheetah-6x1 only (the default here) with one precision; both
# precisions double the update and end-to-end sections (PRECISIONS=fp32 for the float32 half only); TASKS for more.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TASKS="${TASKS:-mamujoco/HalfCheetah-6x1}"
PRECISIONS="${PRECISIONS:-fp32,bf16}"
WORKERS="${E2E_WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))}"

{
  echo "python: $($PY --version 2>&1)"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)" 2>&1
  echo "cores: $(nproc)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
} > "$OUT/env.txt"
cat "$OUT/env.txt"

timeout 240 $PY -m pytest tests/test_gpu.py tests/test_device.py -q -rs -p no:cacheprovider > "$OUT/tests.txt" 2>&1
echo "tests $?" > "$OUT/rc.txt"
tail -5 "$OUT/tests.txt"

QUICK=()
if [ "${1:-}" != "--full" ]; then QUICK=(--quick); fi
timeout 420 $PY benchmarks/throughput.py --device cuda --tasks "$TASKS" --precisions "$PRECISIONS" \
  --e2e-workers "$WORKERS" "${QUICK[@]}" --out "$OUT/throughput-gpu.json" > "$OUT/throughput-gpu.log" 2>&1
echo "throughput $?" >> "$OUT/rc.txt"
tail -40 "$OUT/throughput-gpu.log"
cat "$OUT/rc.txt"
