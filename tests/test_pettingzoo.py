"""Bring your own environment: the PettingZoo adapter, mpe/* tasks, pettingzoo/<module>:<factory> tasks,
`register_env`, env.kwargs, and their errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pettingzoo", reason="PettingZoo tasks need pettingzoo: pip install 'racemarl[pettingzoo]'")

from racemarl.cli import main  # noqa: E402
from racemarl.config import ConfigError, build_config  # noqa: E402
from racemarl.envs import (  # noqa: E402
    BadTaskError,
    MissingDependencyError,
    UnknownTaskError,
    is_discrete_task,
    list_tasks,
    make_env,
    register_env,
    unregister_env,
)
from racemarl.envs.byo import MPE_TASKS  # noqa: E402
from racemarl.envs.conformance import check_env_conformance  # noqa: E402
from racemarl.records.metrics import read_metrics  # noqa: E402
from racemarl.train import train  # noqa: E402
from tests import user_env  # noqa: E402
from tests.conftest import TINY, tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
USER_TASK = "pettingzoo/tests/user_env.py:make_env"  # a file path, relative to the repository root
SPREAD = "pettingzoo/mpe2.simple_spread_v3:parallel_env"


def _needs_mpe2():
    pytest.importorskip("mpe2", reason="mpe/* tasks need mpe2: pip install 'racemarl[pettingzoo]'")


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


# ---------------------------------------------------------------- the adapter


@pytest.mark.parametrize("task", [f"mpe/{t}" for t in MPE_TASKS])
def test_mpe_tasks_are_listed_and_conform(task):
    _needs_mpe2()
    assert task in list_tasks()
    env = make_env(task, max_episode_steps=8)
    s = env.spec
    assert not s.discrete and s.episode_limit == 8
    assert all(np.all(lo == 0) and np.all(hi == 1) for lo, hi in zip(s.act_low, s.act_high))  # mpe2's Box(0, 1)
    check_env_conformance(env)
    env.close()


def test_heterogeneous_agents_and_the_env_state():
    _needs_mpe2()
    env = make_env("mpe/simple_speaker_listener")
    assert env.spec.obs_dims == (3, 11) and env.spec.act_dims == (3, 5) and env.spec.state_dim == 14
    obs, state, avail = env.reset(seed=1)
    assert avail is None and state.shape == (14,)
    # mpe2's state() is the concatenation of the agents' observations
    np.testing.assert_array_equal(state, np.concatenate(obs))


def test_env_kwargs_reach_the_factory_and_discrete_mpe_has_masks():
    _needs_mpe2()
    env = make_env(SPREAD, kwargs={"N": 2, "max_cycles": 6})
    s = env.spec
    assert s.discrete and s.n_agents == 2 and s.act_dims == (5, 5) and s.episode_limit == 6  # from max_cycles
    _, _, avail = env.reset(seed=0)
    assert [m.tolist() for m in avail] == [[1.0] * 5] * 2  # no masks in the env: all actions available
    check_env_conformance(env)
    assert is_discrete_task(SPREAD, kwargs={"N": 2}) and not is_discrete_task(
        SPREAD, kwargs={"continuous_actions": True}
    )


def test_user_env_masks_fallback_state_early_agent_exit(in_root):
    env = make_env(USER_TASK)
    s = env.spec
    assert (s.n_agents, s.obs_dims, s.state_dim, s.act_dims, s.discrete, s.episode_limit) == (
        2,
        (2, 3),
        5,
        (3, 3),
        True,
        12,
    )
    check_env_conformance(env)
    obs, state, avail = env.reset(seed=0)
    np.testing.assert_array_equal(state, np.concatenate(obs))  # no state(): concatenated observations
    raw = env._env
    raw.pos["scout"], raw.pos["runner"] = -3.0, -raw.goal  # the runner is 6 away from the goal
    r = env.step([np.array(0), np.array(1)])  # the scout walks to the left edge: "left" is masked there
    assert raw.pos["scout"] == -4 and r.avail_actions[0].tolist() == [0.0, 1.0, 1.0]
    assert r.avail_actions[1].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="not available"):
        env.step([np.array(0), np.array(1)])
    r = env.step([np.array(1), np.array(1)])
    assert r.obs[0].tolist() == [-4.0, raw.goal]
    r = env.step([np.array(1), np.array(1)])  # third step: the scout is done, the runner plays on
    assert not (r.terminated or r.truncated) and r.obs[0].tolist() == [0.0, 0.0] and "scout" not in raw.agents
    assert r.reward == pytest.approx(-6.0) and r.avail_actions[0].tolist() == [1.0, 1.0, 1.0]
    r = env.step([np.array(0), np.array(2)])  # the scout's actions are no longer sent
    assert raw.pos["scout"] == -4 and r.reward == pytest.approx(-abs(raw.pos["runner"] - raw.goal))


def test_truncation_vs_termination(in_root):
    env = make_env(USER_TASK, kwargs={"continuous": True}, max_episode_steps=4)
    assert env.spec.episode_limit == 4 and not env.spec.discrete
    env.reset(seed=0)
    flags = [env.step([np.zeros(1, np.float32)] * 2) for _ in range(4)]
    assert [(f.terminated, f.truncated) for f in flags] == [(False, False)] * 3 + [(False, True)]  # cut by the limit
    env.reset(seed=0)
    raw = env._env
    raw.pos["runner"] = raw.goal - 1.0
    r = env.step([np.zeros(1, np.float32), np.ones(1, np.float32) * np.sign(raw.goal - raw.pos["runner"])])
    assert (r.terminated, r.truncated) == (True, False) and r.reward == 0.0  # reached the goal


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "task, match",
    [
        ("pettingzoo/no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("pettingzoo/tests/no_file.py:make_env", "no such file"),
        ("pettingzoo/tests/user_env.py:nope", "has no attribute 'nope'"),
        ("pettingzoo/tests/user_env.py:not_an_env", "not a PettingZoo ParallelEnv"),
        ("pettingzoo/tests/user_env.py:SIZE", "not a callable"),
        ("pettingzoo/mpe2", "expected 'pettingzoo/<module>:<factory>'"),
        ("pettingzoo/mpe2.simple_tag_v3:parallel_env", "competing teams"),
        ("pettingzoo/mpe2.simple_crypto_v3:parallel_env", "competing teams"),
        ("pettingzoo/mpe2.simple_spread_v3:env", "AECEnv"),
        ("mpe/simple_tag", "valid mpe tasks"),
    ],
)
def test_bad_tasks_are_one_line_errors(task, match, in_root):
    if "mpe2" in task:
        _needs_mpe2()
    with pytest.raises(UnknownTaskError, match=match) as info:
        make_env(task)
    assert "\n" not in str(info.value)


def test_unsupported_spaces_and_missing_time_limit():
    from gymnasium import spaces

    class Odd(user_env.LineWalk):
        def action_space(self, agent):
            return spaces.MultiDiscrete([2, 2])

    class NoLimit(user_env.LineWalk):
        def __init__(self):
            super().__init__()
            del self.max_cycles

    register_env("test/odd", Odd)
    register_env("test/nolimit", NoLimit)
    try:
        with pytest.raises(BadTaskError, match="MultiDiscrete action space; supported: Discrete or Box"):
            make_env("test/odd")
        with pytest.raises(BadTaskError, match="no time limit.*env.max_episode_steps"):
            make_env("test/nolimit")
        assert make_env("test/nolimit", max_episode_steps=5).spec.episode_limit == 5
        with pytest.raises(BadTaskError, match="factory raised TypeError"):
            make_env("test/odd", kwargs={"colour": "red"})
    finally:
        unregister_env("test/odd")
        unregister_env("test/nolimit")


def test_register_env_rejects_builtin_namespaces_and_bad_names():
    with pytest.raises(BadTaskError, match="built-in task family"):
        register_env("mpe/mine", user_env.make_env)
    with pytest.raises(BadTaskError, match="namespace/name"):
        register_env("no-slash", user_env.make_env)


def test_missing_pettingzoo_names_the_extra(monkeypatch, in_root):
    monkeypatch.setitem(sys.modules, "pettingzoo", None)
    with pytest.raises(MissingDependencyError, match=r"racemarl\[pettingzoo\]") as info:
        make_env(USER_TASK)
    assert "\n" not in str(info.value)


def test_env_kwargs_only_for_factory_tasks():
    with pytest.raises(BadTaskError, match="only for mpe/\\*, pettingzoo/\\* and registered"):
        make_env("mamujoco/HalfCheetah-6x1", kwargs={"N": 3})


def test_env_kwargs_config_entries_merge():
    cfg = build_config(None, ["env.kwargs.N=2", "env.kwargs.local_ratio=0.0", "env.kwargs={max_cycles: 9}"])
    assert cfg.env.kwargs == {"N": 2, "local_ratio": 0.0, "max_cycles": 9}
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_config(None, ["env.kwargs=3"])
    with pytest.raises(ConfigError, match="unknown config key 'env.kwarg.N'"):
        build_config(None, ["env.kwarg.N=2"])


def test_cli_errors_exit_2_with_one_line_and_no_run_dir(tmp_path, in_root):
    for task in ("pettingzoo/no_such_module_xyz:make", "pettingzoo/tests/user_env.py:not_an_env"):
        out = tmp_path / "run"
        p = subprocess.run(
            [sys.executable, "-m", "racemarl", "train", "--task", task, "--total-steps", "10", "--out", str(out)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("racemarl: error: ")
        assert not out.exists()


# ---------------------------------------------------------------- training


def test_third_party_env_trains_from_the_cli(tmp_path, in_root):
    _needs_mpe2()
    args = [
        "train",
        "--task",
        SPREAD,
        "--algo",
        "race",
        "--total-steps",
        "120",
        "--eval-interval",
        "40",
        "--eval-episodes",
        "1",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--set",
        "env.kwargs.N=2",
        "--set",
        "env.kwargs.continuous_actions=true",
    ]
    for s in TINY:
        args += ["--set", s]
    assert main(args + ["--set", "env.max_episode_steps=10"]) == 0
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    last = rows[-1]
    assert int(last["env_steps"]) >= 120 and int(last["updates"]) > 0 and np.isfinite(float(last["eval_return"]))
    assert last["eval_win_rate"] in ("", None)  # continuous: the MATD3-based learner ran


def test_user_script_env_trains_from_the_cli(tmp_path, in_root, capsys):
    args = [
        "train",
        "--task",
        USER_TASK,
        "--algo",
        "facmac",
        "--total-steps",
        "120",
        "--eval-interval",
        "60",
        "--eval-episodes",
        "2",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--set",
        "discrete.batch_episodes=2",
    ]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    assert int(rows[-1]["updates"]) > 0 and is_discrete_task(
        USER_TASK
    )  # the discrete learner ran; PettingZoo tasks have no battles to win:
    assert rows[-1]["eval_win_rate"] in ("", None) and "win rate" not in capsys.readouterr().out


@pytest.mark.parametrize("algo, continuous", [("race", True), ("matd3", True), ("race", False)])
def test_registered_env_trains_from_the_api(tmp_path, algo, continuous):
    register_env("mylab/line_walk", user_env.make_env, continuous=continuous)
    try:
        cfg = tiny_config(
            algo,
            total_steps=120,
            extra=["discrete.batch_episodes=2", "env.kwargs.scout_steps=2"],
            env={"task": "mylab/line_walk"},
        )
        assert "mylab/line_walk" in list_tasks()
        summary = train(cfg, tmp_path / "r")
    finally:
        unregister_env("mylab/line_walk")
    assert summary["total_env_steps"] >= 120 and summary["updates"] > 0
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "scout_steps: 2" in saved and "mylab/line_walk" in saved
