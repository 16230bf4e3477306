"""`benchmarks/reproduction.sh --list`: the queue of runs the workers take, in order, and where each stands."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "reproduction.sh"


def listing(runs: Path, records: Path) -> list[str]:
    env = {**os.environ, "RECORDS": str(records)}
    out = subprocess.run([str(SCRIPT), "--list", str(runs)], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_the_queue_puts_what_done_needs_first_and_says_where_each_run_stands(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    (records / "repro_smax_3m" / "smax_3m__facmac__s1").mkdir(parents=True)
    (records / "repro_smax_3m" / "smax_3m__facmac__s1" / "summary.json").write_text("{}")
    started = runs / "repro_race_mamujoco" / "mamujoco_Hopper-3x1__race__s2"
    (started / "checkpoints").mkdir(parents=True)
    (started / "checkpoints" / "latest.pt").write_bytes(b"")
    (started / "metrics.csv").write_text("env_steps,generation\n5000,1\n10021,2\n")
    lines = listing(runs, records)
    names = [line.split(" ")[1].rstrip(":") for line in lines]
    assert [line.split(" ")[0] for line in lines] == [str(i) for i in range(len(lines))]
    assert len(names) == len(set(names)) == 10 + 5 + 5 + 5 + 10 + 20 + 10 + 3 * 3
    groups = [n.split("/")[0] for n in names]
    order = [
        "repro_smax_3m",
        "ablation_smax_3m_no_vmm",
        "ablation_smax_3m_no_repr",
        "ablation_smax_3m_own_data",
        "repro_race_mamujoco",
    ]
    assert [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g][:5] == order
    assert names[:2] == ["repro_smax_3m/smax_3m__race__s1", "repro_smax_3m/smax_3m__facmac__s1"]  # seed-major
    assert sum(n.endswith("__s5") for n in names) == 2 + 1 + 1 + 1 + 2 + 4 + 2  # HalfCheetah's ablations stop at seed 3
    state = dict(line.split(": ", 1) for line in lines)
    assert state["1 repro_smax_3m/smax_3m__facmac__s1"] == "recorded"
    assert state["28 repro_race_mamujoco/mamujoco_Hopper-3x1__race__s2"] == "started, 10021 of 200000 env steps"
    assert state["0 repro_smax_3m/smax_3m__race__s1"] == "not started"
    assert not (runs / "claims").exists()  # listing takes no job


FAKE_PYTHON = """#!/usr/bin/env bash
# stands for the project's Python: logs each script it is asked to run; answers `-c` with the real one
if [ "$1" = -c ]; then exec {python} "$@"; fi
echo "$*" >> "$CALLS"
if [ "$1" = benchmarks/choose_beta.py ]; then echo '{{"beta": 1.0}}' > benchmarks/results/vmm_beta.json; fi
"""


def test_the_tuning_then_every_job_once_then_each_groups_results(tmp_path):
    """The whole script with a stand-in Python in a copy of the repository's layout: phase 1 runs every candidate
    beta on both tuning seeds and applies the rule; the two workers share the queue so that each job runs once;
    then each group's results come from all its runs, and the table."""
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "reproduction.sh").write_text(SCRIPT.read_text())
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        **os.environ,
        "PYTHON": str(python),
        "CALLS": str(calls),
        "RECORDS": str(tmp_path / "records"),
        "THREADS": "2",
    }
    recorded, unrecorded = "repro_smax_3m/smax_3m__race__s1", "repro_smax_3m/smax_3m__facmac__s1"
    (tmp_path / "records" / recorded).mkdir(parents=True)
    (tmp_path / "records" / recorded / "summary.json").write_text("{}")
    for run in (recorded, unrecorded):
        (tmp_path / "runs" / run / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / run / "checkpoints" / "latest.pt").write_bytes(b"")
    subprocess.run(
        ["bash", str(repo / "benchmarks" / "reproduction.sh"), str(tmp_path / "runs")],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    lines = calls.read_text().splitlines()
    tuning = [c for c in lines if "--name vmm_beta_" in c]
    assert sorted(c.split("--seeds ")[1].split()[0] + c.split("vmm_beta=")[1].split()[0] for c in tuning[:6]) == sorted(
        f"{s}{b}" for s in (101, 102) for b in (1, 10, 0.1)
    )
    assert lines[len(tuning)].startswith("benchmarks/choose_beta.py --betas 1,10,0.1")
    jobs = [c for c in lines[len(tuning) + 1 :] if "--seeds " in c and "," not in c.split("--seeds ")[1].split()[0]]
    listed = listing(tmp_path / "runs", tmp_path / "records")
    assert len(jobs) == len(set(jobs)) == len(listed)  # every job once, however the workers interleave
    # worker 2 starts with the groups that fit in a session (the SMAX ablation first), worker 1 with the queue's head
    assert "--name ablation_smax_3m_no_vmm" in (tmp_path / "runs" / "worker2.out").read_text().splitlines()[0]
    assert "--name repro_smax_3m" in (tmp_path / "runs" / "worker1.out").read_text().splitlines()[0]
    single = tuning[:6] + jobs  # one run each: its record only, never its group's results file
    assert all("--no-results" in c for c in single)
    bench = [c for c in lines if c.startswith("benchmarks/learning.py")]
    assert len(bench) > len(single) and all(
        c.startswith("benchmarks/learning.py --workers 1 --torch-threads 2 ") for c in bench
    )
    race = [c for c in jobs if "--name repro_race_mamujoco" in c]
    assert len(race) == 10 and all("--set race.vmm_beta=1.0 " in c for c in race)  # the chosen beta
    collect = [c for c in lines if "--seeds 1,2,3" in c]
    assert tuning[6:] and not any("--no-results" in c for c in tuning[6:] + collect)
    assert len(collect) == 10 and "--random-episodes 20 --name repro_base_mamujoco" in collect[5]
    assert lines[-1].startswith("benchmarks/reproduction_table.py --runs")
    # a recorded run's checkpoints are deleted, an unrecorded run keeps its own
    assert not (tmp_path / "runs" / recorded / "checkpoints").exists()
    assert (tmp_path / "runs" / unrecorded / "checkpoints" / "latest.pt").exists()
    assert f"1 {unrecorded}: started, before its first evaluation" in listed  # no metrics.csv yet


def test_a_second_script_on_the_same_runs_folder_stops_before_touching_it(tmp_path):
    """While one reproduction.sh works on RUNS_DIR (it holds RUNS_DIR/.reproduction.lock), a second one ends with
    one line and exit 2, and leaves the first one's job claims alone."""
    import fcntl

    runs = tmp_path / "runs"
    (runs / "claims" / "10").mkdir(parents=True)
    with open(runs / ".reproduction.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        env = {**os.environ, "PYTHON": "/bin/false", "RECORDS": str(tmp_path / "records")}
        out = subprocess.run([str(SCRIPT), str(runs)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == f"reproduction.sh: error: another reproduction.sh is running on {runs}"
    assert (runs / "claims" / "10").is_dir() and not (runs / "worker1.out").exists()
