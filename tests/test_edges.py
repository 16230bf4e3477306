"""Runs and folders without surprises (issue #23): one process per run folder, runs too large for memory, an
unreachable Ray address, and the faults of a user's own environment (exceptions, observations that do not fit,
NaN/inf, agents that leave mid-episode or appear from nowhere)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from racemarl.cli import main
from tests.conftest import TINY

pytest.importorskip("pettingzoo", reason="the faulty envs are PettingZoo envs: pip install 'racemarl[pettingzoo]'")

ROOT = Path(__file__).resolve().parent.parent
BAD = f"pettingzoo/{ROOT / 'tests' / 'bad_env.py'}:make_env"
SMALL = [s for s in TINY if not s.startswith("env.max_episode_steps")] + ["env.max_episode_steps=12"]


def _train_args(out, task=BAD, steps=60, extra=()):
    args = ["train", "--task", task, "--algo", "race", "--total-steps", str(steps), "--out", str(out),
            "--eval-interval", "24", "--eval-episodes", "1", "--no-progress"]
    for s in SMALL + list(extra):
        args += ["--set", s]
    return args


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [ln for ln in err if ln.startswith("racemarl: error:")]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    return lines[0]


# ---------------------------------------------------------------- 1. one process per run folder


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding RUN/.train.lock (as a running `racemarl train` does) until it is killed."""
    code = ("import sys, time; from racemarl.records.runs import FolderLock, TRAIN_LOCK; from pathlib import Path; "
            "FolderLock(Path(sys.argv[1]) / TRAIN_LOCK, 'racemarl train').acquire(); print('held', flush=True); "
            "time.sleep(60)")
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_train_of_the_same_run_is_refused_naming_the_first(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        assert main(_train_args(out)) == 2
        line = _one_line_error(capsys)
        assert f"pid {holder.pid}" in line and "another racemarl train" in line
        assert sorted(p.name for p in out.iterdir()) == [".train.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock does not block; the run trains, and a resume of it is refused while it is held
    assert main(_train_args(out, steps=30)) == 0
    holder = _hold_lock(out)
    try:
        rows_before = (out / "metrics.csv").read_text()
        assert main(["train", "--resume", str(out), "--total-steps", "60", "--no-progress"]) == 2
        assert f"pid {holder.pid}" in _one_line_error(capsys)
        assert (out / "metrics.csv").read_text() == rows_before
    finally:
        holder.kill()
        holder.wait()


def test_two_fresh_trains_started_together_write_one_run(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "racemarl", *_train_args(out, steps=48)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    time.sleep(0.1)
    procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "racemarl: error:" in loser and "Traceback" not in loser
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    steps = [r.split(",")[0] for r in rows]
    assert len(steps) == len(set(steps))  # every evaluation once


# ---------------------------------------------------------------- 2. sizes that cannot fit


def test_a_population_too_large_for_memory_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    start = time.monotonic()
    assert main(_train_args(out, extra=["race.pop_size=100000000"])) == 2
    line = _one_line_error(capsys)
    assert "race.pop_size" in line and "available" in line
    assert time.monotonic() - start < 30 and not out.exists()


def test_memory_estimate_grows_with_the_buffer_and_is_checked():
    from racemarl import memory
    from racemarl.config import build_config
    from racemarl.envs import make_env

    env = make_env(BAD)
    spec = env.spec
    env.close()
    small = build_config(None, SMALL + ["learner.buffer_size=1000"], total_steps=10**9)
    large = build_config(None, SMALL + ["learner.buffer_size=100000000"], total_steps=10**9)
    parts = memory.check(small, spec, available=10**9)
    assert sum(memory.estimate(large, spec).values()) > 100 * sum(parts.values())
    with pytest.raises(memory.MemoryEstimateError, match="learner.buffer_size"):
        memory.check(large, spec, available=10**9)


# ---------------------------------------------------------------- 4. an unreachable Ray address


@pytest.mark.parametrize("address, why", [("notahost.invalid:1", "unknown host"), ("127.0.0.1:1", "no Ray cluster")])
def test_an_unreachable_ray_address_is_refused_at_once(tmp_path, capsys, address, why):
    pytest.importorskip("ray")
    out = tmp_path / "run"
    start = time.monotonic()
    assert main(_train_args(out, extra=[]) + ["--ray-address", address]) == 2
    assert why in _one_line_error(capsys)
    assert time.monotonic() - start < 20 and not out.exists()


def test_a_listener_that_is_not_ray_is_refused_within_the_bound(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    monkeypatch.setenv("RACEMARL_RAY_CONNECT_TIMEOUT", "3")
    out = tmp_path / "run"
    start = time.monotonic()
    try:
        assert main(_train_args(out) + ["--ray-address", f"127.0.0.1:{server.getsockname()[1]}"]) == 2
    finally:
        server.close()
    assert "Ray" in _one_line_error(capsys)
    assert time.monotonic() - start < 25 and not out.exists()


# ---------------------------------------------------------------- 7-9. the environment's own faults


@pytest.mark.parametrize("fault, words", [
    ("step_raises", ["step()", "ZeroDivisionError", "episode step 3", "RACEMARL_TRACEBACK"]),
    ("bad_obs", ["runner", "4 numbers", "declares 3"]),
    ("nan_reward", ["reward of nan"]),
    ("inf_obs", ["runner", "NaN or inf"]),
    ("stranger", ["ghost", "possible_agents"]),
])
def test_an_env_fault_is_one_line_and_leaves_no_half_written_run(tmp_path, capsys, fault, words):
    out = tmp_path / "run"
    assert main(_train_args(out, extra=[f"env.kwargs.fault={fault}"])) == 2
    line = _one_line_error(capsys)
    assert all(w in line for w in words), line
    assert "bad_env.py" in line and "nothing of the run was kept" in line
    assert not out.exists()


def test_an_env_fault_after_a_checkpoint_leaves_the_run_resumable(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    # one env per slot: every env's third episode raises (the first generation was evaluated and checkpointed)
    assert main(_train_args(out, steps=200, extra=["env.kwargs.fault=step_raises", "env.kwargs.from_episode=3"])) == 2
    line = _one_line_error(capsys)
    assert "--resume" in line and (out / "checkpoints" / "latest.pt").is_file()
    assert not (out / "summary.json").exists()
    monkeypatch.setenv("RACEMARL_TRACEBACK", "1")
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "division by zero in the user's reward" in err and "bad_env.py" in err


def test_an_env_fault_in_a_worker_process_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(out, extra=["env.kwargs.fault=step_raises", "rollout.backend=process",
                                        "rollout.workers=1"])) == 2
    line = _one_line_error(capsys)
    assert "ZeroDivisionError" in line and "step()" in line and not out.exists()


@pytest.mark.parametrize("end_on_fall", [True, False])
def test_agents_removed_mid_episode_like_multiwalker(tmp_path, capsys, end_on_fall):
    out = tmp_path / "run"
    extra = ["env.kwargs.fault=remove_on_fall", f"env.kwargs.end_on_fall={end_on_fall}"]
    assert main(_train_args(out, extra=extra)) == 0, capsys.readouterr().err
    assert (out / "summary.json").is_file()
