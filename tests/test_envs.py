"""Tests for racemarl.envs: the MaMuJoCo adapter, task names and the conformance checker."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from racemarl.envs import (
    EnvSpec,
    MissingDependencyError,
    MultiAgentEnv,
    StepResult,
    UnknownTaskError,
    list_tasks,
    make_env,
    parse_task,
)
from racemarl.envs.conformance import check_env_conformance
from racemarl.envs.mamujoco import MAMUJOCO_PARTITIONS, mamujoco_task_name

# find_spec, not importorskip: importing gymnasium_robotics directly prints an unrelated notice.
needs_mujoco = pytest.mark.skipif(
    importlib.util.find_spec("gymnasium_robotics") is None or importlib.util.find_spec("mujoco") is None,
    reason="needs gymnasium-robotics and mujoco (pip install 'racemarl[mamujoco]')",
)


def _const_actions(env: MultiAgentEnv, value: float) -> list[np.ndarray]:
    return [np.full(d, value, dtype=np.float32) for d in env.spec.act_dims]


# ----------------------------------------------------------------------------- conformance


@needs_mujoco
@pytest.mark.parametrize(
    "task",
    [
        "mamujoco/HalfCheetah-6x1",
        "mamujoco/HalfCheetah",
        "mamujoco/Ant-2x4d",
        "mamujoco/Hopper-3x1",
        "mamujoco/Humanoid-9|8",
        "mamujoco/ManySegmentSwimmer-3x2",  # an unlisted NxM
    ],
)
def test_conformance(task):
    env = make_env(task, max_episode_steps=30)
    try:
        check_env_conformance(env, n_steps=15, seed=3)
    finally:
        env.close()


@needs_mujoco
def test_spec_matches_library():
    env = make_env("mamujoco/Humanoid-9|8", agent_obsk=1, max_episode_steps=77)
    spec = env.spec
    assert spec.task == "mamujoco/Humanoid-9|8"
    assert spec.n_agents == 2 and spec.act_dims == (9, 8)
    assert spec.state_dim == 348 and not spec.discrete and spec.episode_limit == 77
    for lo, hi, d in zip(spec.act_low, spec.act_high, spec.act_dims):
        assert lo.dtype == np.float32 and hi.dtype == np.float32 and lo.shape == hi.shape == (d,)
        np.testing.assert_allclose(hi, 0.4, rtol=1e-6)
        np.testing.assert_allclose(lo, -0.4, rtol=1e-6)
    env.close()
    single = make_env("mamujoco/Hopper")
    assert single.spec.task == "mamujoco/Hopper" and single.spec.n_agents == 1
    assert single.spec.episode_limit == 1000
    single.close()


# ----------------------------------------------------------------------------- episode ends


@needs_mujoco
def test_truncation_at_time_limit_gives_valid_final_obs():
    limit = 25
    env = make_env("mamujoco/HalfCheetah", max_episode_steps=limit)  # single agent: obs == full state
    obs, state, avail = env.reset(seed=0)
    assert avail is None
    for t in range(1, limit + 1):
        prev = obs
        r = env.step(_const_actions(env, 0.5))
        obs = r.obs
        if t < limit:
            assert not r.terminated and not r.truncated
    assert r.truncated is True and r.terminated is False
    assert r.info["episode_step"] == limit
    final = r.obs[0]
    assert final.shape == (env.spec.obs_dims[0],) and final.dtype == np.float32
    assert np.all(np.isfinite(final)) and not np.array_equal(final, prev[0])
    np.testing.assert_array_equal(final, r.state)  # the real final observation, not a reset one
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        env.step(_const_actions(env, 0.0))
    env.reset(seed=0)
    env.step(_const_actions(env, 0.0))  # usable again after reset
    env.close()


@needs_mujoco
def test_truncation_multi_agent_final_obs():
    env = make_env("mamujoco/Ant-4x2", max_episode_steps=10)
    env.reset(seed=1)
    for _ in range(10):
        r = env.step(_const_actions(env, 0.3))
    assert r.truncated and not r.terminated
    assert [o.shape[0] for o in r.obs] == list(env.spec.obs_dims)
    assert all(o.dtype == np.float32 and np.all(np.isfinite(o)) and np.any(o != 0) for o in r.obs)
    env.close()


@needs_mujoco
def test_hopper_falls_and_terminates():
    env = make_env("mamujoco/Hopper-3x1", max_episode_steps=200)
    env.reset(seed=0)
    for t in range(1, 201):  # noqa: B007 - t is read after the loop
        r = env.step(_const_actions(env, -1.0))  # extreme actions: the hopper falls over
        if r.terminated or r.truncated:
            break
    assert r.terminated is True and r.truncated is False
    assert t < 200
    assert all(np.all(np.isfinite(o)) for o in r.obs)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(_const_actions(env, 0.0))
    env.close()

    # Falling exactly at the time limit counts as termination, not truncation.
    env = make_env("mamujoco/Hopper-3x1", max_episode_steps=t)
    env.reset(seed=0)
    for _ in range(t):
        r = env.step(_const_actions(env, -1.0))
    assert r.terminated is True and r.truncated is False
    env.close()


@needs_mujoco
def test_step_errors_and_clipping():
    env = make_env("mamujoco/HalfCheetah-2x3", max_episode_steps=20)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(_const_actions(env, 0.0))  # never reset
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(_const_actions(env, 0.0)[:1])
    with pytest.raises(ValueError):
        env.step([np.zeros(2), np.zeros(3)])
    # Out-of-bounds actions are clipped to the bounds.
    env.reset(seed=0)
    big = env.step(_const_actions(env, 7.0))
    env.reset(seed=0)
    one = env.step(_const_actions(env, 1.0))
    assert big.reward == one.reward
    for a, b in zip(big.obs, one.obs):
        np.testing.assert_array_equal(a, b)
    # seed=None does not reseed.
    first, _, _ = env.reset(seed=0)
    again, _, _ = env.reset()
    assert not np.array_equal(first[0], again[0])
    env.close()


@needs_mujoco
def test_agent_obsk_widens_observations():
    e0 = make_env("mamujoco/HalfCheetah-6x1", agent_obsk=0)
    e1 = make_env("mamujoco/HalfCheetah-6x1", agent_obsk=1)
    assert e0.spec.n_agents == e1.spec.n_agents == 6
    assert all(a < b for a, b in zip(e0.spec.obs_dims, e1.spec.obs_dims)), (e0.spec.obs_dims, e1.spec.obs_dims)
    obs0, _, _ = e0.reset(seed=0)
    obs1, _, _ = e1.reset(seed=0)
    assert [o.shape[0] for o in obs0] == list(e0.spec.obs_dims)
    assert [o.shape[0] for o in obs1] == list(e1.spec.obs_dims)
    e0.close()
    e1.close()


# ----------------------------------------------------------------------------- task names


def test_list_tasks_all_parse():
    tasks = list_tasks()
    assert len(tasks) == len(set(tasks))
    for name in ["mamujoco/HalfCheetah-6x1", "mamujoco/HalfCheetah", "mamujoco/Ant-2x4d", "mamujoco/Humanoid-9|8"]:
        assert name in tasks
    for task in tasks:
        family, scenario, partition = parse_task(task)
        if family != "mamujoco":  # smax/smac tasks: tests/test_smax.py, tests/test_smac_fake.py
            continue
        assert partition in MAMUJOCO_PARTITIONS[scenario]
        assert mamujoco_task_name(scenario, partition) == task
    assert parse_task("mamujoco/Hopper") == ("mamujoco", "Hopper", None)
    assert parse_task("mamujoco/ManySegmentAnt-5x1") == ("mamujoco", "ManySegmentAnt", "5x1")


@pytest.mark.parametrize(
    "task, must_contain",
    [
        ("mamujoco/HalfCheetah-7x1", ["7x1", "mamujoco/HalfCheetah-2x3", "mamujoco/HalfCheetah-6x1"]),
        ("mamujoco/Hopper-", ["mamujoco/Hopper-3x1"]),
        ("mamujoco/Cheetah-2x3", ["Cheetah", "HalfCheetah", "Ant", "Humanoid"]),
        ("mamujoco/ManySegmentAnt", ["needs a partition", "NxM"]),
        ("mamujoco/ManySegmentSwimmer-0x3", ["0x3", "NxM"]),
        ("smacv9/3m", ["smacv9/3m", "mamujoco"]),
        ("HalfCheetah-6x1", ["mamujoco"]),
    ],
)
def test_unknown_task(task, must_contain):
    with pytest.raises(UnknownTaskError) as info:
        parse_task(task)
    msg = str(info.value)
    assert "\n" not in msg
    for text in must_contain:
        assert text in msg, msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownTaskError):
        make_env(task)


def test_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)  # makes `import mujoco` fail
    with pytest.raises(MissingDependencyError, match=r"racemarl\[mamujoco\]") as info:
        make_env("mamujoco/Hopper")
    assert isinstance(info.value, ImportError)


# ----------------------------------------------------------------------------- the checker itself


class _ToyEnv(MultiAgentEnv):
    """A tiny deterministic continuous env; `bug` breaks one rule of the contract."""

    def __init__(self, bug: str | None = None, limit: int = 8) -> None:
        self.bug = bug
        lo, hi = np.full(2, -1, np.float32), np.full(2, 1, np.float32)
        self.spec = EnvSpec("toy", 2, (3, 4), 5, (2, 2), False, limit, (lo, lo), (hi, hi))
        self._rng = np.random.default_rng(0)
        self._t = -1

    def _obs(self):
        dtype = np.float64 if self.bug == "float64" else np.float32
        obs = [np.full(3, self._x, dtype), np.full(4 if self.bug != "shape" else 5, self._x, dtype)]
        return obs, np.full(5, self._x, np.float32)

    def reset(self, seed=None):
        if seed is not None and self.bug != "nondeterministic":
            self._rng = np.random.default_rng(seed)
        self._x = float(self._rng.normal())
        self._t = 0
        obs, state = self._obs()
        return obs, state, None

    def step(self, actions):
        if self._t < 0 and self.bug != "no_raise":
            raise RuntimeError("call reset() first")
        self._t += 1
        self._x += float(np.sum(actions[0]))
        obs, state = self._obs()
        done = self._t >= self.spec.episode_limit
        if done:
            self._t = -1
        return StepResult(obs, state, 1.0, done and self.bug == "both", done, None)


def test_checker_accepts_a_good_env():
    check_env_conformance(_ToyEnv())


@pytest.mark.parametrize(
    "bug, pattern",
    [
        ("float64", "float32"),
        ("shape", "shape"),
        ("nondeterministic", "reset"),
        ("both", "both True"),
        ("no_raise", "RuntimeError"),
    ],
)
def test_checker_catches_violations(bug, pattern):
    with pytest.raises(AssertionError, match=pattern):
        check_env_conformance(_ToyEnv(bug))
