#!/usr/bin/env bash
# The reproduction (docs/results.md, "Reproduction"): RACE against its base learners across tasks and seeds, in
# two lanes (one per core). Restartable: run it again after an interruption and every benchmark resumes its
# unfinished runs from their checkpoints and skips the finished ones (benchmarks/learning.py), then rewrites its
# results JSON. A session's end kills the lanes; the last checkpoints survive in RUNS_DIR.
#
#   benchmarks/reproduction.sh [RUNS_DIR]          # default ~/racemarl_repro; logs in RUNS_DIR/lane{1,2}.out
#   LANES=2 benchmarks/reproduction.sh             # one lane only (1 or 2)
#
# Lane 1, RACE on MA-MuJoCo:
#   1. the beta tuning, the procedure of docs/results.md "VMM on MA-MuJoCo": HalfCheetah-6x1, tuning seeds 101 and
#      102, 100k steps, beta 0.1, 1 and 10; then benchmarks/choose_beta.py applies the rule;
#   2. RACE with the chosen beta, seeds 1-5, 200k steps, HalfCheetah-6x1 and Hopper-3x1;
#   3. the HalfCheetah-6x1 ablations, seeds 1-3, 200k steps: without VMM (beta 0), without the PeVFA term in the
#      encoder loss (race.vfm_pevfa=false), MERL.
# Lane 2, what does not depend on beta:
#   1. SMAX 3m, RACE (discrete) and FACMAC, seeds 1-5, 150k steps;
#   2. MATD3 and EA-only, seeds 1-5, 200k steps, HalfCheetah-6x1 and Hopper-3x1 (with a random policy's return);
#   3. SMAX 2s3z, RACE and FACMAC, seeds 1-5, 150k steps.
# Every run uses the defaults of the code it starts with (precision included); a resumed run keeps its config.
# On 2 cores this is days of compute: about 2-4 h per 200k-step RACE run, 1-2 h per MATD3 run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-$HOME/racemarl_repro}"
PY="${PYTHON:-.venv/bin/python}"
LANES="${LANES:-1 2}"
mkdir -p "$RUNS"
MUJOCO=mamujoco/HalfCheetah-6x1,mamujoco/Hopper-3x1

bench() { "$PY" benchmarks/learning.py --workers 1 --runs-dir "$RUNS" --eval-interval 5000 "$@"; }

lane1() {
  for beta in 0.1 1 10; do
    bench --tasks mamujoco/HalfCheetah-6x1 --algos race --seeds 101,102 --total-steps 100000 \
      --set "race.vmm_beta=$beta" --name "vmm_beta_$beta"
  done
  "$PY" benchmarks/choose_beta.py --betas 0.1,1,10
  beta=$("$PY" -c 'import json; print(json.load(open("benchmarks/results/vmm_beta.json"))["beta"])')
  bench --tasks "$MUJOCO" --algos race --seeds 1,2,3,4,5 --total-steps 200000 --set "race.vmm_beta=$beta" \
    --name repro_race_mamujoco
  bench --tasks mamujoco/HalfCheetah-6x1 --algos race --seeds 1,2,3 --total-steps 200000 --set race.vmm_beta=0 \
    --name ablation_no_vmm
  bench --tasks mamujoco/HalfCheetah-6x1 --algos race --seeds 1,2,3 --total-steps 200000 --set "race.vmm_beta=$beta" \
    --set race.vfm_pevfa=false --name ablation_no_pevfa
  bench --tasks mamujoco/HalfCheetah-6x1 --algos merl --seeds 1,2,3 --total-steps 200000 --name ablation_merl
}

lane2() {
  bench --tasks smax/3m --algos race,facmac --seeds 1,2,3,4,5 --total-steps 150000 --eval-episodes 32 \
    --random-episodes 64 --name repro_smax_3m
  bench --tasks "$MUJOCO" --algos matd3,ea --seeds 1,2,3,4,5 --total-steps 200000 --random-episodes 20 \
    --name repro_base_mamujoco
  bench --tasks smax/2s3z --algos race,facmac --seeds 1,2,3,4,5 --total-steps 150000 --eval-episodes 32 \
    --random-episodes 64 --name repro_smax_2s3z
}

for lane in $LANES; do
  "lane$lane" > "$RUNS/lane$lane.out" 2>&1 &
done
wait
"$PY" benchmarks/reproduction_table.py --runs "$RUNS"
echo "done: benchmarks/results/{vmm_beta*,repro_*,ablation_*,reproduction}.json"
