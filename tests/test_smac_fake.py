"""The SMAC adapter against a FAKE StarCraft2Env (tests/fakes.py); no StarCraft II needed."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from racemarl.envs import MissingDependencyError, UnknownTaskError, list_tasks, make_env, parse_task
from racemarl.envs.conformance import check_env_conformance
from racemarl.envs.smac import SMAC_MAPS, SmacEnv
from tests.fakes import FakeStarCraft2Env, focus_fire_actions


class _Factory:
    """Builds fakes and remembers them (to check seeding and closing)."""

    def __init__(self, **fake_kwargs) -> None:
        self.fake_kwargs = fake_kwargs
        self.made: list[FakeStarCraft2Env] = []
        self.calls: list[dict] = []

    def __call__(self, **kwargs) -> FakeStarCraft2Env:
        self.calls.append(kwargs)
        env = FakeStarCraft2Env(**kwargs, **self.fake_kwargs)
        self.made.append(env)
        return env


def _play(env: SmacEnv, policy, seed: int | None = 0):
    _obs, _state, avail = env.reset(seed=seed)
    while True:
        r = env.step(policy(avail))
        avail = r.avail_actions
        if r.terminated or r.truncated:
            return r


def _stop(avail):
    return [1 if m[1] else 0 for m in avail]


def test_conformance():
    env = SmacEnv("fake3m", seed=0, reseed="recreate", env_factory=_Factory())
    check_env_conformance(env, n_steps=15, seed=3)
    env.close()


def test_spec_and_construction():
    factory = _Factory(n_agents=4, n_enemies=2, episode_limit=33)
    env = SmacEnv("fake", env_factory=factory, difficulty="7")
    spec = env.spec
    assert (spec.task, spec.n_agents, spec.discrete, spec.episode_limit) == ("smac/fake", 4, True, 33)
    assert spec.act_dims == (8,) * 4 and spec.obs_dims == (7,) * 4 and spec.state_dim == 10
    # The adapter always asks for continuing_episode=True (so time limits are flagged).
    assert factory.calls[0] == {"map_name": "fake", "seed": None, "continuing_episode": True, "difficulty": "7"}
    obs, state, avail = env.reset(seed=1)
    assert all(o.dtype == np.float32 for o in obs) and state.dtype == np.float32
    assert all(m.dtype == np.float32 and m.shape == (8,) for m in avail)
    env.close()
    assert factory.made[-1].n_closes == 1
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()
    with pytest.raises(ValueError, match="reseed"):
        SmacEnv("fake", reseed="sometimes", env_factory=_Factory())
    with pytest.raises(ValueError, match="continuing_episode"):
        SmacEnv("fake", env_factory=_Factory(), continuing_episode=False)


def test_time_limit_is_truncation():
    env = SmacEnv("fake", env_factory=_Factory(episode_limit=12))
    r = _play(env, _stop)
    assert r.truncated is True and r.terminated is False
    assert r.info["episode_limit"] is True and r.info["battle_won"] is False
    assert r.info["episode_step"] == 12
    assert len(r.obs) == 3 and np.all(np.isfinite(r.state))
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        env.step(_stop(r.avail_actions))


def test_battle_won_is_termination_even_on_the_last_step():
    # Focus fire kills one 3-health enemy per step: the battle is won on step 3.
    env = SmacEnv("fake", env_factory=_Factory(episode_limit=20))
    r = _play(env, focus_fire_actions)
    assert r.terminated is True and r.truncated is False
    assert r.info["battle_won"] is True and r.info["episode_step"] == 3
    assert r.info["dead_enemies"] == 3 and "episode_limit" not in r.info
    # Won exactly at the map's time limit: SMAC checks the battle first -> terminated, not truncated.
    env = SmacEnv("fake", env_factory=_Factory(episode_limit=3))
    r = _play(env, focus_fire_actions)
    assert r.terminated is True and r.truncated is False and r.info["battle_won"] is True


def test_lost_battle():
    env = SmacEnv("fake", env_factory=_Factory(ally_health=1, enemy_hit_prob=1.0, episode_limit=50))
    r = _play(env, _stop)
    assert r.terminated is True and r.truncated is False and r.info["battle_won"] is False
    assert r.info["dead_allies"] == 3
    assert all(np.flatnonzero(m).tolist() == [0] for m in r.avail_actions)  # dead: only no-op


def test_shorter_time_limit_and_too_long_one():
    env = SmacEnv("fake", max_episode_steps=5, env_factory=_Factory(episode_limit=12))
    assert env.spec.episode_limit == 5
    r = _play(env, _stop)
    assert r.truncated and not r.terminated and r.info["episode_step"] == 5
    env.reset()  # SMAC restarts an unfinished episode on reset
    with pytest.warns(UserWarning, match="lowered to 12"):
        env = SmacEnv("fake", max_episode_steps=1000, env_factory=_Factory(episode_limit=12))
    assert env.spec.episode_limit == 12


def test_reward_is_smac_team_reward():
    env = SmacEnv("fake", env_factory=_Factory(episode_limit=20))
    total, r = 0.0, None
    avail = env.reset(seed=0)[2]
    while r is None or not (r.terminated or r.truncated):
        r = env.step(focus_fire_actions(avail))
        avail = r.avail_actions
        assert isinstance(r.reward, float)
        total += r.reward
    assert total == pytest.approx(20.0)  # every enemy killed + win = SMAC's max scaled return


def test_unavailable_and_malformed_actions():
    env = SmacEnv("fake", env_factory=_Factory(enemy_x=100.0))  # enemies out of range
    _obs, _state, avail = env.reset(seed=0)
    assert not any(m[6:].any() for m in avail)
    with pytest.raises(ValueError, match="unavailable action 6"):
        env.step([6, 1, 1])
    with pytest.raises(ValueError, match="unavailable action 0"):
        env.step([0, 1, 1])  # no-op is for dead agents
    with pytest.raises(ValueError, match="out of range"):
        env.step([1, 1, 9])
    with pytest.raises(ValueError, match="expected 3 actions"):
        env.step([1, 1])
    with pytest.raises(ValueError, match="one integer"):
        env.step([1, 1, 1.5])
    r = env.step([np.int64(2), np.array(1), 5])  # numpy ints are fine
    assert not r.terminated


def test_seeding_first_seed_only_by_default():
    factory = _Factory()
    env = SmacEnv("fake", env_factory=factory)
    first = env.reset(seed=7)  # not launched yet: rebuilt with seed 7
    assert factory.calls[-1]["seed"] == 7 and len(factory.made) == 2 and factory.made[0].n_closes == 1
    env.reset(seed=8)  # launched: the seed is ignored, no relaunch
    env.reset()
    assert len(factory.made) == 2 and factory.made[-1].n_launches == 1

    # The same seed in a fresh env repeats the first episode.
    env2 = SmacEnv("fake", seed=7, env_factory=_Factory())
    again = env2.reset(seed=7)
    for a, b in zip(first[0], again[0]):
        np.testing.assert_array_equal(a, b)


def test_seeding_recreate():
    factory = _Factory()
    env = SmacEnv("fake", seed=1, reseed="recreate", env_factory=factory)
    o1 = env.reset()[1]
    o2 = env.reset()[1]  # the game's RNG continues: another start
    assert not np.array_equal(o1, o2)
    o3 = env.reset(seed=1)[1]  # relaunched with seed 1: the first start again
    np.testing.assert_array_equal(o1, o3)
    assert len(factory.made) == 2 and factory.made[0].n_closes == 1 and factory.made[1].n_launches == 1


# ----------------------------------------------------------------------------- registry


def test_smac_tasks_listed_and_parsed():
    tasks = list_tasks()
    for m in [
        "3m",
        "8m",
        "2s3z",
        "3s5z",
        "MMM",
        "MMM2",
        "2s_vs_1sc",
        "2c_vs_64zg",
        "so_many_baneling",
        "3s_vs_3z",
        "5m_vs_6m",
        "27m_vs_30m",
        "corridor",
        "6h_vs_8z",
        "3s5z_vs_3s6z",
        "1c3s5z",
    ]:
        assert f"smac/{m}" in tasks
        assert parse_task(f"smac/{m}") == ("smac", m, None)
    assert sum(t.startswith("smac/") for t in tasks) == len(SMAC_MAPS)


@pytest.mark.parametrize("task", ["smac/4m", "smac/", "smac/3m-2x1"])
def test_unknown_smac_map(task):
    with pytest.raises(UnknownTaskError) as info:
        parse_task(task)
    msg = str(info.value)
    assert "\n" not in msg and "smac/3m" in msg and "smac/corridor" in msg


def test_missing_smac(monkeypatch):
    monkeypatch.setitem(sys.modules, "smac", None)  # makes `import smac` fail, as when it is not installed
    with pytest.raises(MissingDependencyError) as info:
        make_env("smac/3m")
    msg = str(info.value)
    assert "\n" not in msg
    assert "pip install git+https://github.com/oxwhirl/smac.git" in msg and "SC2PATH" in msg
    with pytest.raises(ValueError, match="render"):
        make_env("smac/3m", render_mode="rgb_array")


def test_make_env_uses_starcraft2env(monkeypatch):
    """make_env builds `smac.env.StarCraft2Env` (here a fake module standing in for SMAC)."""
    made = []

    def fake_sc2env(**kwargs):
        made.append(kwargs)
        return FakeStarCraft2Env(**kwargs, episode_limit=SMAC_MAPS[kwargs["map_name"]])

    smac_mod, env_mod = types.ModuleType("smac"), types.ModuleType("smac.env")
    env_mod.StarCraft2Env = fake_sc2env
    smac_mod.env = env_mod
    monkeypatch.setitem(sys.modules, "smac", smac_mod)
    monkeypatch.setitem(sys.modules, "smac.env", env_mod)
    env = make_env("smac/3m")
    assert env.spec.task == "smac/3m" and env.spec.episode_limit == 60 and made[0]["map_name"] == "3m"
    env = make_env("smac/3m", max_episode_steps=10)
    assert env.spec.episode_limit == 10
