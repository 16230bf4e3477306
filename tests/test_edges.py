"""Runs and folders without surprises (issue #23): one process per run folder, runs too large for memory, an
unreachable Ray address, and the faults of a user's own environment (exceptions, observations that do not fit,
NaN/inf, agents that leave mid-episode or appear from nowhere)."""

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
    args = [
        "train",
        "--task",
        task,
        "--algo",
        "race",
        "--total-steps",
        str(steps),
        "--out",
        str(out),
        "--eval-interval",
        "24",
        "--eval-episodes",
        "1",
        "--no-progress",
    ]
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
    code = (
        "import sys, time; from racemarl.records.runs import FolderLock, TRAIN_LOCK; from pathlib import Path; "
        "FolderLock(Path(sys.argv[1]) / TRAIN_LOCK, 'racemarl train').acquire(); print('held', flush=True); "
        "time.sleep(60)"
    )
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
    from racemarl.config import build_config
    from racemarl.envs import make_env
    from racemarl.records import memory

    env = make_env(BAD)
    spec = env.spec
    env.close()
    small = build_config(None, SMALL + ["learner.buffer_size=1000"], total_steps=10**9)
    large = build_config(None, SMALL + ["learner.buffer_size=100000000"], total_steps=10**9)
    parts = memory.check(small, spec, available=10**9)
    assert sum(memory.estimate(large, spec).values()) > 100 * sum(parts.values())
    with pytest.raises(memory.MemoryEstimateError, match="learner.buffer_size"):
        memory.check(large, spec, available=10**9)


def test_a_buffer_the_system_cannot_reserve_is_a_clear_error(tmp_path, capsys):
    # the estimate counts the rows a short run fills (min(buffer_size, total_steps)); the buffer reserves them all,
    # and 10^12 rows (~1 PB) are more than any address space
    out = tmp_path / "run"
    assert main(_train_args(out, extra=["learner.buffer_size=1000000000000"])) == 2
    line = _one_line_error(capsys)
    assert "learner.buffer_size" in line and "reserved" in line
    assert not out.exists()


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


@pytest.mark.parametrize(
    "fault, words",
    [
        ("step_raises", ["step()", "ZeroDivisionError", "episode step 3", "RACEMARL_TRACEBACK"]),
        ("bad_obs", ["runner", "4 numbers", "declares 3"]),
        ("nan_reward", ["reward of nan"]),
        ("inf_obs", ["runner", "NaN or inf"]),
        ("stranger", ["ghost", "possible_agents"]),
    ],
)
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
    assert (
        main(_train_args(out, extra=["env.kwargs.fault=step_raises", "rollout.backend=process", "rollout.workers=1"]))
        == 2
    )
    line = _one_line_error(capsys)
    assert "ZeroDivisionError" in line and "step()" in line and not out.exists()


@pytest.mark.parametrize("end_on_fall", [True, False])
def test_agents_removed_mid_episode_like_multiwalker(tmp_path, capsys, end_on_fall):
    out = tmp_path / "run"
    extra = ["env.kwargs.fault=remove_on_fall", f"env.kwargs.end_on_fall={end_on_fall}"]
    assert main(_train_args(out, extra=extra)) == 0, capsys.readouterr().err
    assert (out / "summary.json").is_file()


# ---------------------------------------------------------------- 3, 5, 6, 10-12: own envs, flags, help


@pytest.mark.parametrize("flag", ["--task", "--config", "--resume", "--device"])
def test_an_empty_flag_value_is_refused_not_taken_as_the_default(tmp_path, capsys, flag):
    assert main(["train", flag, "", "--out", str(tmp_path / "run"), "--total-steps", "10"]) == 2
    assert flag in _one_line_error(capsys) and not (tmp_path / "run").exists()


def test_a_relative_env_file_is_stored_absolute_so_eval_and_video_work_from_anywhere(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    assert main(_train_args(run, task="pettingzoo/tests/bad_env.py:make_env", steps=30)) == 0
    saved = (run / "config.yaml").read_text()
    assert f"pettingzoo/{ROOT / 'tests' / 'bad_env.py'}:make_env" in saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    # 10. a task that cannot render: one line, nothing written
    pytest.importorskip("imageio")
    assert (
        main(
            ["eval", str(run), "--episodes", "1", "--video", str(tmp_path / "v.mp4"), "--out", str(tmp_path / "e.json")]
        )
        == 2
    )
    assert "--video" in _one_line_error(capsys)
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "e.json").exists()


def test_runs_of_a_registered_env_are_read_back_in_another_process(tmp_path):
    from racemarl.envs import register_env, unregister_env
    from racemarl.train import train
    from tests import user_env
    from tests.conftest import tiny_config

    register_env("mylab/walk", user_env.make_env, continuous=True)
    try:
        train(tiny_config("matd3", total_steps=60, env={"task": "mylab/walk"}), tmp_path / "run")
    finally:
        unregister_env("mylab/walk")
    for cmd in (["info", str(tmp_path / "run")], ["table", str(tmp_path)]):
        r = subprocess.run([sys.executable, "-m", "racemarl", *cmd], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "mylab/walk" in r.stdout, r.stderr
    code = "import racemarl, sys; print(racemarl.load_run(sys.argv[1]).task)"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "mylab/walk", r.stderr


def test_make_config_takes_mapping_entries_as_the_string_form_does():
    import racemarl
    from racemarl.config import ConfigError

    a = racemarl.make_config(
        task="mpe/simple_spread", overrides={"env.kwargs.continuous": False, "learner.batch_size": 64}
    )
    b = racemarl.make_config(
        task="mpe/simple_spread", overrides=["env.kwargs.continuous=false", "learner.batch_size=64"]
    )
    assert a.env.kwargs == b.env.kwargs == {"continuous": False} and a.learner.batch_size == 64
    with pytest.raises(ConfigError, match="unknown config key"):
        racemarl.make_config(overrides={"learner.nope": 1})


def test_help_names_every_algorithm_and_the_defaults(capsys):
    from racemarl.cli import build_parser

    top = build_parser().format_help()
    assert all(a in top for a in ("RACE", "MATD3", "FACMAC", "EA", "MERL"))
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "seeds every random draw of the run (default 1)" in text and "default 10000)" in text
    assert "(default 5)" in text and "rollout workers of --backend process or ray" in text
    with pytest.raises(SystemExit):
        main(["config", "--help"])
    assert "override a config value" in capsys.readouterr().out


def test_a_run_without_updates_says_so(tmp_path, capsys):
    assert main(_train_args(tmp_path / "run", steps=12, extra=["learner.start_steps=1000"])) == 0
    assert "the learner made no updates" in capsys.readouterr().err


def test_a_sweep_leaves_a_run_that_another_process_trains_alone(tmp_path, capsys):
    from racemarl.experiment.sweep_grid import run_name

    out = tmp_path / "grid"
    sweep = ["sweep", "--tasks", BAD, "--out", str(out), "--eval-interval", "12"] + [
        x for s in SMALL for x in ("--set", s)
    ]
    assert main(sweep + ["--total-steps", "12"]) == 0
    run = out / run_name(BAD, "race", 1)
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    holder = _hold_lock(run)  # e.g. a `racemarl train --resume` of it started by hand
    try:
        code = main(sweep + ["--total-steps", "36"])  # a larger budget: the run would be resumed
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and f"pid {holder.pid}" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".train.lock"}
    assert after == {k: v for k, v in before.items() if k != ".train.lock"}  # left alone


def test_a_users_own_multiagentenv_is_guarded_as_well(tmp_path, capsys):
    import numpy as np

    from racemarl.envs import register_env, unregister_env
    from racemarl.envs.base import EnvSpec, MultiAgentEnv, StepResult

    class Drifting(MultiAgentEnv):
        """Continuous, 2 agents; its reward turns infinite at step 3."""

        def __init__(self):
            lo, hi = np.full(1, -1, np.float32), np.full(1, 1, np.float32)
            self.spec = EnvSpec("mylab/drift", 2, (2, 2), 4, (1, 1), False, 12, (lo, lo), (hi, hi))

        def reset(self, seed=None):
            self.t = 0
            return [np.zeros(2, np.float32)] * 2, np.zeros(4, np.float32), None

        def step(self, actions):
            self.t += 1
            reward = float("inf") if self.t >= 3 else 0.0
            return StepResult([np.zeros(2, np.float32)] * 2, np.zeros(4, np.float32), reward, False, self.t >= 12)

    register_env("mylab/drift", Drifting)
    try:
        assert main(_train_args(tmp_path / "run", task="mylab/drift")) == 2
    finally:
        unregister_env("mylab/drift")
    line = _one_line_error(capsys)
    assert "mylab/drift" in line and "reward of inf" in line and "episode step 3" in line
    assert not (tmp_path / "run").exists()


def test_non_finite_transitions_never_reach_the_replay_buffer():
    import numpy as np

    from racemarl.acting.families import _check_finite_transitions
    from racemarl.envs.base import EnvFailure

    fine = {"reward": np.zeros(3, np.float32), "obs": np.zeros((3, 2, 4), np.float32)}
    _check_finite_transitions(fine, "mamujoco/Hopper-3x1")
    with pytest.raises(EnvFailure, match="Hopper-3x1: a non-finite next obs"):
        _check_finite_transitions({**fine, "next_obs": np.array([np.nan], np.float32)}, "mamujoco/Hopper-3x1")
