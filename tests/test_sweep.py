"""`racemarl sweep`: a grid of tiny runs, skipping finished runs, surviving kills, the ray backend."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from racemarl.cli import main
from racemarl.config import ConfigError
from racemarl.experiment.sweep import parse_seeds, run_name
from racemarl.records.metrics import read_metrics
from tests.conftest import TINY

TASK = "mamujoco/HalfCheetah-6x1"


def sweep_args(out, algos="race,matd3", seeds="1", steps=160, workers=2, extra=()):
    args = [
        "sweep",
        "--tasks",
        TASK,
        "--algos",
        algos,
        "--seeds",
        seeds,
        "--total-steps",
        str(steps),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--eval-interval",
        "40",
        "--eval-episodes",
        "1",
        *extra,
    ]
    for s in TINY:
        args += ["--set", s]
    return args


def _cli(args):
    return subprocess.run([sys.executable, "-m", "racemarl", *args], capture_output=True, text=True)


def test_parse_seeds():
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("1,3,7") == [1, 3, 7]
    assert parse_seeds("1-3,9,2") == [1, 2, 3, 9]
    for bad in ("a", "5-1", "1-", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    assert run_name("mamujoco/Humanoid-9|8", "race", 2) == "mamujoco_Humanoid-9_8__race__s2"


def _check_run(run_dir: Path, steps: int) -> None:
    assert (run_dir / "summary.json").exists()
    env_steps = [int(r["env_steps"]) for r in read_metrics(run_dir / "metrics.csv")]
    assert env_steps == sorted(set(env_steps)), env_steps  # strictly increasing: no row twice
    assert env_steps[-1] >= steps


def test_sweep_runs_the_grid_and_skips_finished_runs(tmp_path):
    out = tmp_path / "sweep"
    res = _cli(sweep_args(out))
    assert res.returncode == 0, res.stdout + res.stderr
    index = json.loads((out / "index.json").read_text())
    assert [(e["algo"], e["seed"], e["status"]) for e in index["runs"]] == [
        ("race", 1, "finished"),
        ("matd3", 1, "finished"),
    ]
    for e in index["runs"]:
        assert e["task"] == TASK and e["env_steps"] >= 160
        assert e["final_eval_return"] is not None and e["best_eval_return"] >= e["final_eval_return"]
        _check_run(out / e["run_dir"], 160)
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*/metrics.csv")}
    # again, in-process: nothing to do, no process started, nothing rewritten
    assert main(sweep_args(out)) == 0
    assert {p.name: p.read_text() for p in (out / "logs").iterdir()} == logs
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*/metrics.csv")} == mtimes
    assert json.loads((out / "index.json").read_text())["runs"] == index["runs"]
    # other settings in the same folder are refused
    assert main(sweep_args(out, extra=["--set", "learner.gamma=0.9"])) == 2


def _children_of(out: Path) -> list[int]:
    """Pids of processes whose command line mentions the sweep folder (the train subprocesses)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                cmd = (p / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(out) in cmd and "train" in cmd:
                pids.append(int(p.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and process groups")
@pytest.mark.parametrize("how", ["kill the process group", "SIGTERM to the sweep only", "Ctrl-C to the process group"])
def test_an_interrupted_sweep_resumes_without_duplicates(tmp_path, how):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "racemarl", *sweep_args(out, algos="matd3", steps=800, workers=1)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = out / run_name(TASK, "matd3", 1)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "latest.pt").exists():  # killed mid-way: after a checkpoint ...
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.02)
    time.sleep(0.3)
    assert not (run_dir / "summary.json").exists()  # ... before the run finishes
    if how == "kill the process group":
        os.killpg(proc.pid, signal.SIGKILL)
    elif how == "Ctrl-C to the process group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    if how != "kill the process group":
        assert proc.returncode == 130
        assert json.loads((out / "index.json").read_text())["runs"][0]["status"] == "interrupted"
        # the run got one signal (not a second one from the sweep) and wrote its checkpoint before stopping
        assert "racemarl: stopped by SIGINT" in (out / "logs" / f"{run_dir.name}.log").read_text()
    deadline = time.monotonic() + 20
    while _children_of(out):  # no orphan keeps training
        assert time.monotonic() < deadline, "a train process outlived the sweep"
        time.sleep(0.1)
    rows_before = len(read_metrics(run_dir / "metrics.csv"))
    assert rows_before >= 1 and not (run_dir / "summary.json").exists()

    res = _cli(sweep_args(out, algos="matd3", steps=800, workers=1))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resume" in res.stdout
    assert "--resume" in (out / "logs" / f"{run_dir.name}.log").read_text()  # continued, not restarted
    _check_run(run_dir, 800)
    assert json.loads((out / "index.json").read_text())["runs"][0]["status"] == "finished"


def test_ray_backend(tmp_path, capsys):
    try:
        import ray  # noqa: F401
    except ImportError:
        assert main(sweep_args(tmp_path / "s", algos="matd3", extra=["--backend", "ray"])) == 2
        assert "pip install 'racemarl[ray]'" in capsys.readouterr().err
        return
    out = tmp_path / "s"
    res = _cli(sweep_args(out, algos="matd3", seeds="1,2", extra=["--backend", "ray"]))
    assert res.returncode == 0, res.stdout + res.stderr
    index = json.loads((out / "index.json").read_text())
    assert [e["status"] for e in index["runs"]] == ["finished", "finished"]
    for e in index["runs"]:
        _check_run(out / e["run_dir"], 160)
