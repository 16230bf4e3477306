#!/usr/bin/env bash
# The reproduction (docs/results.md, "Reproduction"): RACE against its base learners across tasks and seeds, one
# run per core. Restartable: run it again after an interruption and every run resumes from its checkpoint, finished
# runs are skipped (benchmarks/learning.py). A session's end kills the runs; the last checkpoints survive in
# RUNS_DIR. Every finished run also leaves its record (config, metrics, summary: a few kB) in
# benchmarks/results/run_records/<group>/: commit those as runs finish, and a machine that lost RUNS_DIR skips the
# recorded runs instead of running them again.
#
#   benchmarks/reproduction.sh [RUNS_DIR]            # default ~/racemarl_repro; logs in RUNS_DIR/{tune,worker}{1,2}.out
#                                                    # (a run's checkpoints are deleted once its record is written;
#                                                    # one script at a time per RUNS_DIR: a second one exits 2)
#   WORKERS=1 benchmarks/reproduction.sh             # one run at a time (default 2: one per core)
#   WORKERS=1 THREADS=2 benchmarks/reproduction.sh   # one run at a time on 2 PyTorch threads (default 1): on a 2-core
#                                                    # machine that loses unfinished runs between sessions, so that
#                                                    # a RACE run on MA-MuJoCo ends within a session (see below);
#                                                    # a started run resumes with the threads of this start
#   benchmarks/reproduction.sh --list [RUNS_DIR]     # the queue of runs and where each stands; nothing runs
#   benchmarks/reproduction.sh --collect [RUNS_DIR]  # no training: write the results JSON of every group whose runs
#                                                    # are all recorded, then the Reproduction table and figures
#
# Phase 1, the beta tuning (the procedure of docs/results.md "VMM on MA-MuJoCo"), on the critical path because
#   everything RACE-on-MA-MuJoCo waits for it: HalfCheetah-6x1, 100k steps, beta 1, 10 and 0.1 (0.1 last: its
#   first runs, on a machine that was wiped later, measured it ineligible, see the results page); tuning seed 101 on
#   one core and 102 on the other; then benchmarks/choose_beta.py applies the rule (skipped once
#   benchmarks/results/vmm_beta.json holds a choice).
# Phase 2, a queue of single runs that the workers (one per core) take in order, each the next one no worker has
#   taken, so that the cores stay busy whatever a run costs. Worker 1 takes the queue in order; the others take the
#   groups whose runs fit in a working session (SHORT: the SMAX 3m ablations, MATD3 and EA-only on MA-MuJoCo) first
#   and then the queue, so that runs finish in every session even where a machine loses its unfinished runs between
#   sessions (a RACE run on MA-MuJoCo takes longer than a session). SMAX 2s3z is not SHORT: once the MA-MuJoCo base
#   learners are done, the other workers help with RACE on MA-MuJoCo (about 4 hours a run, 10 runs) before it.
#   The queue's order puts first what the issue's "done" needs:
#   SMAX 3m (RACE, FACMAC, seeds 1-5, 150k), then RACE without VMM there (seeds 1-5, a few hours in all: do two of
#   RACE's five seeds fail there because of VMM? no) and without both representation losses (VMM and the PeVFA
#   term: does the MARL critic still fail with only the population's episodes added?) and with the MARL critic on
#   the MARL team's own episodes (discrete.marl_data=own), then RACE with the chosen beta on HalfCheetah-6x1 and
#   Hopper-3x1 (seeds 1-5, 200k); MATD3 and EA-only there (seeds 1-5, 200k); then RACE without VMM (beta 0) on
#   HalfCheetah-6x1, seeds 1-3, 200k (moved ahead of SMAX 2s3z on 2026-12-06: RACE's seeds 1-2 there ended lower
#   with beta 10 than with the inert 0.001 of earlier runs, see the results page); then SMAX 2s3z like 3m; then
#   the other HalfCheetah-6x1 ablations, seeds 1-3, 200k: MERL, RACE without the PeVFA term in the encoder loss
#   (race.vfm_pevfa=false). Once every run is done each group's results JSON is written from all
#   its runs (with the random policy's value where the group measures one), then the Reproduction table.
# Every run uses the defaults of the code it starts with (precision included); a resumed run keeps its config.
# Measured speeds with two runs sharing the cores (fp32): RACE on HalfCheetah-6x1 ~11-16 env steps/s (3.5-5 h per
# 200k), on Hopper-3x1 ~17/s (3.2 h), MATD3 ~35/s, RACE on SMAX ~100/s. A RACE update on Hopper-3x1 takes 36 ms
# on one thread alone and 24 ms on two (benchmarks/update_speed.py --a torch_threads=1 --b torch_threads=2).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=run
case "${1:-}" in --collect | --list) MODE="${1#--}"; shift ;; esac
RUNS="${1:-$HOME/racemarl_repro}"
PY="${PYTHON:-.venv/bin/python}"
WORKERS="${WORKERS:-2}"
THREADS="${THREADS:-1}"
RECORDS="${RECORDS:-benchmarks/results/run_records}"  # learning.py's default
mkdir -p "$RUNS"
if [ "$MODE" = run ]; then  # one script per RUNS_DIR: a second one would find every started run locked, and fail it
  exec 9> "$RUNS/.reproduction.lock"
  if ! flock -n 9; then echo "reproduction.sh: error: another reproduction.sh is running on $RUNS" >&2; exit 2; fi
fi
MUJOCO=mamujoco/HalfCheetah-6x1,mamujoco/Hopper-3x1

bench() {
  "$PY" benchmarks/learning.py --workers 1 --torch-threads "$THREADS" --runs-dir "$RUNS" --records "$RECORDS" \
    --eval-interval 5000 "$@"
}
# One run of a group (a tuning run, a queue's job): its record, not the group's results file, which a single run
# would overwrite with itself alone; the group's results come from one call with all its runs (tune, collect).
bench_one() { bench --no-results "$@"; }

BETAS="1 10 0.1"
tune() {  # the tuning seeds $1 through every candidate beta, each with $2 (bench_one: one seed; bench: the JSON)
  for beta in $BETAS; do
    "$2" --tasks mamujoco/HalfCheetah-6x1 --algos race --seeds "$1" --total-steps 100000 \
      --set "race.vmm_beta=$beta" --name "vmm_beta_$beta"
  done
}

if [ "$MODE" = run ] && [ ! -f benchmarks/results/vmm_beta.json ]; then
  tune 101 bench_one > "$RUNS/tune1.out" 2>&1 &
  tune 102 bench_one > "$RUNS/tune2.out" 2>&1 &
  wait
  tune 101,102 bench > /dev/null  # every run is finished: this only writes each JSON with both seeds
  "$PY" benchmarks/choose_beta.py --betas "${BETAS// /,}"
fi
beta=$("$PY" -c 'import json; print(json.load(open("benchmarks/results/vmm_beta.json"))["beta"])' 2>/dev/null || echo none)

# The groups, in the queue's order: name;tasks;algos;seeds;total steps;flags of every run;random-policy episodes
GROUP_LIST=(
  "repro_smax_3m;smax/3m;race,facmac;1,2,3,4,5;150000;--eval-episodes 32;64"
  "ablation_smax_3m_no_vmm;smax/3m;race;1,2,3,4,5;150000;--eval-episodes 32 --set race.vmm_beta=0;0"
  "ablation_smax_3m_no_repr;smax/3m;race;1,2,3,4,5;150000;--eval-episodes 32 --set race.vmm_beta=0 --set race.vfm_pevfa=false;0"
  "ablation_smax_3m_own_data;smax/3m;race;1,2,3,4,5;150000;--eval-episodes 32 --set discrete.marl_data=own;0"
  "repro_race_mamujoco;$MUJOCO;race;1,2,3,4,5;200000;--set race.vmm_beta=$beta;0"
  "repro_base_mamujoco;$MUJOCO;matd3,ea;1,2,3,4,5;200000;;20"
  "ablation_no_vmm;mamujoco/HalfCheetah-6x1;race;1,2,3;200000;--set race.vmm_beta=0;0"
  "repro_smax_2s3z;smax/2s3z;race,facmac;1,2,3,4,5;150000;--eval-episodes 32;64"
  "ablation_merl;mamujoco/HalfCheetah-6x1;merl;1,2,3;200000;;0"
  "ablation_no_pevfa;mamujoco/HalfCheetah-6x1;race;1,2,3;200000;--set race.vmm_beta=$beta --set race.vfm_pevfa=false;0"
)

JOBS=()  # one run each, seed-major within a group: bench's arguments
for g in "${GROUP_LIST[@]}"; do
  IFS=';' read -r name tasks algos seeds steps flags _ <<< "$g"
  for s in ${seeds//,/ }; do
    for t in ${tasks//,/ }; do
      for a in ${algos//,/ }; do
        JOBS+=("--tasks $t --algos $a --seeds $s --total-steps $steps $flags --name $name")
      done
    done
  done
done

collect() {  # $1 = a group's entry: its results JSON from all its runs (each finished or recorded: no training)
  local name tasks algos seeds steps flags random
  IFS=';' read -r name tasks algos seeds steps flags random <<< "$1"
  # shellcheck disable=SC2086  # $flags holds several arguments
  bench --tasks "$tasks" --algos "$algos" --seeds "$seeds" --total-steps "$steps" $flags --random-episodes "$random" \
    --name "$name" > /dev/null
  echo "written: benchmarks/results/$name.json"
}

recorded() {  # $1 = a group's entry: are all its runs recorded?
  local name tasks algos seeds _rest s t a
  IFS=';' read -r name tasks algos seeds _rest <<< "$1"
  for s in ${seeds//,/ }; do for t in ${tasks//,/ }; do for a in ${algos//,/ }; do
    [ -f "$RECORDS/$name/${t//\//_}__${a}__s${s}/summary.json" ] || return 1
  done; done; done
}

job_run() {  # $1 = a job's index: its run folder under RUNS (and its record under RECORDS), <group>/<run>
  local t a s
  read -r _ t _ a _ s _ <<< "${JOBS[$1]}"
  echo "${JOBS[$1]##* }/${t//\//_}__${a}__s${s}"
}

if [ "$MODE" = list ]; then
  for i in "${!JOBS[@]}"; do
    read -r _ _ _ _ _ _ _ steps _ <<< "${JOBS[$i]}"
    IFS=/ read -r name run <<< "$(job_run "$i")"
    if [ -f "$RECORDS/$name/$run/summary.json" ]; then state=recorded
    elif [ -f "$RUNS/$name/$run/summary.json" ]; then state="finished, not recorded"
    elif [ -f "$RUNS/$name/$run/checkpoints/latest.pt" ]; then
      done_steps=$({ tail -n 1 "$RUNS/$name/$run/metrics.csv" 2> /dev/null || true; } | cut -d, -f1)
      state="started, before its first evaluation"
      if [[ "$done_steps" =~ ^[0-9]+$ ]]; then state="started, $done_steps of $steps env steps"; fi
    else state="not started"; fi
    echo "$i $name/$run: $state"
  done
  exit 0
fi

if [ "$MODE" = collect ]; then
  for g in "${GROUP_LIST[@]}"; do
    if [ "$beta" = none ] && [[ "$g" == *"=none"* ]]; then echo "${g%%;*}: waits for the beta tuning"; continue; fi
    if recorded "$g"; then collect "$g"; else echo "${g%%;*}: not every run is recorded yet"; fi
  done
  "$PY" benchmarks/reproduction_table.py --runs "$RECORDS"
  exit 0
fi

CLAIMS="$RUNS/claims"  # a job is taken by creating its folder here (atomic); cleared at every start
rm -rf "$CLAIMS"
mkdir -p "$CLAIMS"
SHORT=" ablation_smax_3m_no_vmm ablation_smax_3m_no_repr ablation_smax_3m_own_data repro_base_mamujoco "
order() {  # $1 = a worker's number: the jobs' indices in the order it tries them (each is taken once, by one worker)
  local i
  if [ "$1" -gt 1 ]; then
    for i in "${!JOBS[@]}"; do [[ "$SHORT" == *" ${JOBS[$i]##* } "* ]] && echo "$i"; done
  fi
  for i in "${!JOBS[@]}"; do echo "$i"; done
}
worker() {  # $1 = its number
  for i in $(order "$1"); do
    mkdir "$CLAIMS/$i" 2> /dev/null || continue
    echo "$(date -u +%FT%TZ) job $i/${#JOBS[@]}: ${JOBS[$i]}"
    # shellcheck disable=SC2086  # a job is a list of arguments
    bench_one ${JOBS[$i]} > /dev/null || echo "$(date -u +%FT%TZ) job $i FAILED (its log is in $RUNS/<group>/)"
    # a recorded run needs its checkpoint no more (the tables read the record): keep RUNS small
    run=$(job_run "$i")
    if [ -f "$RECORDS/$run/summary.json" ]; then rm -rf "${RUNS:?}/$run/checkpoints"; fi
  done
}
for w in $(seq 1 "$WORKERS"); do
  worker "$w" > "$RUNS/worker$w.out" 2>&1 &
done
wait
for g in "${GROUP_LIST[@]}"; do collect "$g"; done
"$PY" benchmarks/reproduction_table.py --runs "$RECORDS"  # from the run records
echo "done: benchmarks/results/{vmm_beta*,repro_*,ablation_*,reproduction}.json, run_records/ and docs/figures/"
