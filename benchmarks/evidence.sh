#!/usr/bin/env bash
# The MA-MuJoCo evidence of the "RACE vs MATD3" section of docs/results.md, in two lanes (one per core), each
# restartable: run it again after an interruption and every benchmark resumes its unfinished runs from
# their checkpoints and skips the finished ones (benchmarks/learning.py, benchmarks/diagnostics.py).
#
#   benchmarks/evidence.sh [RUNS_DIR]        # default ~/racemarl_evidence; logs in RUNS_DIR/*.out
#
# Lane 1: the 200k-step comparison (HalfCheetah-6x1, RACE and MATD3, 2 seeds), then MERL (2 seeds, 200k).
# Lane 2: the 40k-step one-seed diagnostics (the first loop, each reference fix alone, MATD3 without the
#         critic fixes; "all" and "matd3" are read from the comparison's seed-1 runs), then Hopper-3x1 at
#         100k steps (RACE and MATD3, 2 seeds).
# On 2 CPU cores this is several days of compute: about 3-5 h per 200k-step run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-$HOME/racemarl_evidence}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$RUNS"
COMPARISON="$RUNS/race_vs_matd3_6x1_200k"

lane1() {
  "$PY" benchmarks/learning.py --tasks mamujoco/HalfCheetah-6x1 --algos race,matd3 --seeds 1,2 \
    --total-steps 200000 --eval-interval 5000 --workers 1 --name race_vs_matd3_6x1_200k --runs-dir "$RUNS"
  "$PY" benchmarks/learning.py --tasks mamujoco/HalfCheetah-6x1 --algos merl --seeds 1,2 \
    --total-steps 200000 --eval-interval 5000 --workers 1 --name merl_6x1_200k --runs-dir "$RUNS"
}

lane2() {
  "$PY" benchmarks/diagnostics.py --total-steps 40000 --runs-dir "$RUNS" \
    --variants legacy,+warmup,+critic,+champion,+operators,+fitness,+small,matd3-legacy
  "$PY" benchmarks/learning.py --tasks mamujoco/Hopper-3x1 --algos race,matd3 --seeds 1,2 \
    --total-steps 100000 --eval-interval 5000 --workers 1 --name race_vs_matd3_hopper_100k --runs-dir "$RUNS"
}

lane1 > "$RUNS/lane1.out" 2>&1 &
lane2 > "$RUNS/lane2.out" 2>&1 &
wait
# The diagnostics table with "all" and "matd3" taken from the comparison's first 40k steps (seed 1).
"$PY" benchmarks/diagnostics.py --report-only --total-steps 40000 --runs-dir "$RUNS" \
  --reuse all="$COMPARISON/mamujoco_HalfCheetah-6x1__race__s1" \
  --reuse matd3="$COMPARISON/mamujoco_HalfCheetah-6x1__matd3__s1"
echo "done: benchmarks/results/{race_vs_matd3_6x1_200k,merl_6x1_200k,race_vs_matd3_hopper_100k,diagnostics_6x1}.*"
