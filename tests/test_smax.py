"""The SMAX adapter (JaxMARL). Environments are module fixtures: each map/limit compiles once."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from racemarl.envs import MissingDependencyError, UnknownTaskError, list_tasks, make_env, parse_task
from racemarl.envs.conformance import check_env_conformance
from racemarl.envs.smax import SmaxBatch, SmaxEnv
from racemarl.envs.smax_core import _import_smax, seed_to_key
from racemarl.envs.smax_maps import SMAX_MAPS

STOP, EAST, ATTACK0 = 4, 1, 5  # SMAX actions: 0 N, 1 E, 2 S, 3 W, 4 stop, 5.. attack enemy 0..
LIMIT_3M, LIMIT_2S3Z = 30, 20


def _needs_jaxmarl() -> None:
    pytest.importorskip("jaxmarl", reason="SMAX tasks need jaxmarl: pip install 'racemarl[smax]'")


@pytest.fixture(scope="module")
def env3m():
    _needs_jaxmarl()
    env = make_env("smax/3m", max_episode_steps=LIMIT_3M)
    yield env
    env.close()


@pytest.fixture(scope="module")
def env2s3z():
    _needs_jaxmarl()
    env = SmaxEnv("2s3z", max_episode_steps=LIMIT_2S3Z)
    yield env
    env.close()


def _focus_fire(avail) -> list[int]:
    """Attack the lowest-numbered enemy in range, else walk east towards the enemies, else stop."""
    out = []
    for m in avail:
        attack = np.flatnonzero(np.asarray(m)[ATTACK0:])
        out.append(ATTACK0 + int(attack[0]) if attack.size else (EAST if m[EAST] else STOP))
    return out


def _unit_health(state: np.ndarray, n_units: int) -> np.ndarray:
    """Health fractions from SMAX's world state: 10 features per unit (health first), then teams, types."""
    return state[: 10 * n_units].reshape(n_units, 10)[:, 0]


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("fixture", ["env3m", "env2s3z"])
def test_conformance(fixture, request):
    env = request.getfixturevalue(fixture)
    check_env_conformance(env, n_steps=15, seed=3)


def test_specs(env3m, env2s3z):
    s = env3m.spec
    assert (s.task, s.n_agents, s.discrete, s.episode_limit) == ("smax/3m", 3, True, LIMIT_3M)
    assert s.act_dims == (8,) * 3 and s.obs_dims == (75,) * 3 and s.state_dim == 72  # (10 + 2) * 6 units
    s = env2s3z.spec
    assert (s.task, s.n_agents, s.episode_limit) == ("smax/2s3z", 5, LIMIT_2S3Z)
    assert s.act_dims == (10,) * 5 and s.state_dim == 120
    assert env3m.agent_names == ("ally_0", "ally_1", "ally_2")


def test_every_map_listed_and_buildable():
    _needs_jaxmarl()
    smax = _import_smax()
    from jaxmarl.environments.smax import smax_env

    assert set(SMAX_MAPS) == set(smax_env.MAP_NAME_TO_SCENARIO), "JaxMARL's SMAX maps changed"
    tasks = list_tasks()
    for m in SMAX_MAPS:
        assert f"smax/{m}" in tasks and parse_task(f"smax/{m}") == ("smax", m, None)
        spec = SmaxEnv(m).spec  # building compiles nothing
        sc = smax.map_name_to_scenario(m)
        assert spec.n_agents == sc.num_allies and spec.act_dims[0] == sc.num_enemies + 5
        assert spec.episode_limit == 100  # SMAX's default max_steps


# (these two run without jaxmarl)
@pytest.mark.parametrize("task", ["smax/4x", "smax/3m-1x3", "smax/", "smax/0m", "smax/3s_vs_"])
def test_unknown_map(task):
    with pytest.raises(UnknownTaskError) as info:
        parse_task(task)
    msg = str(info.value)
    assert "\n" not in msg and "smax/3m" in msg and "smax/2s3z" in msg and "smax/smacv2_5_units" in msg
    assert [t for t in list_tasks() if t.startswith("smax/")] == [f"smax/{m}" for m in (*SMAX_MAPS, "3s_vs_3z")]
    with pytest.raises(ValueError, match="render"):
        make_env("smax/3m", render_mode="rgb_array")


def test_missing_jaxmarl(monkeypatch):
    for name in ("jaxmarl", "jaxmarl.environments", "jaxmarl.environments.smax"):
        monkeypatch.setitem(sys.modules, name, None)  # makes importing them fail, even if imported
    with pytest.raises(MissingDependencyError, match=r"racemarl\[smax\]") as info:
        make_env("smax/3m")
    assert "\n" not in str(info.value) and isinstance(info.value, ImportError)


def test_compiles_once(env3m):
    env3m.reset(seed=0)
    for _ in range(3):
        env3m.step([STOP] * 3)
    core = env3m._core
    # reset's state has weakly typed ints that step returns strongly typed; normalised, so one compile.
    assert core.step._cache_size() == 1 and core.reset._cache_size() == 1
    assert SmaxEnv("3m", max_episode_steps=LIMIT_3M)._core is core  # same map + limit: shared


# ----------------------------------------------------------------------------- masks and actions


def test_random_available_actions_play_whole_episodes(env3m):
    rng = np.random.default_rng(1)
    for seed in range(3):
        _obs, _state, avail = env3m.reset(seed=seed)
        while True:
            r = env3m.step(env3m.sample_actions(rng, avail))  # raises ValueError on an unavailable one
            avail = r.avail_actions
            health = _unit_health(r.state, 6)
            for i, m in enumerate(avail):
                assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
                if health[i] == 0:  # dead: only "stop"
                    assert np.flatnonzero(m).tolist() == [STOP]
            if r.terminated or r.truncated:
                break


def test_unavailable_action(env3m):
    _obs, _state, avail = env3m.reset(seed=0)
    assert not any(m[ATTACK0:].any() for m in avail)  # the teams start out of range
    with pytest.raises(ValueError, match="agent 0 chose unavailable action 5"):
        env3m.step([ATTACK0, STOP, STOP])
    with pytest.raises(ValueError, match="out of range"):
        env3m.step([8, STOP, STOP])
    with pytest.raises(ValueError, match="one integer"):
        env3m.step([1.5, STOP, STOP])
    with pytest.raises(ValueError, match="expected 3 actions"):
        env3m.step([STOP, STOP])
    stop = env3m.step([STOP] * 3)

    # Unchecked, SMAX treats an impossible attack as "stop": the world is the same (only the
    # "last targeted" observation feature differs).
    loose = SmaxEnv("3m", max_episode_steps=LIMIT_3M, check_actions=False)
    loose.reset(seed=0)
    r = loose.step([ATTACK0, STOP, STOP])
    np.testing.assert_array_equal(r.state, stop.state)
    assert r.reward == stop.reward
    assert not np.array_equal(r.obs[1], stop.obs[1])


# ----------------------------------------------------------------------------- seeds


def test_seeds(env3m):
    a = env3m.reset(seed=11)
    b = env3m.reset(seed=12)
    c = env3m.reset()  # continues the key chain: neither of the above
    d = env3m.reset(seed=11)
    assert not np.array_equal(a[1], b[1]) and not np.array_equal(c[1], d[1])
    np.testing.assert_array_equal(a[1], d[1])
    assert a[0][0].flags.writeable and a[1].flags.writeable and not np.shares_memory(a[0][0], a[0][1])
    assert seed_to_key(5).tolist() == [0, 5] and seed_to_key(2**40 + 3).tolist() == [256, 3]
    with pytest.raises(ValueError):
        env3m.reset(seed=-1)
    assert env3m._core.reset._cache_size() == 1  # numpy seed keys and device chain keys alike


# ----------------------------------------------------------------------------- episode ends


def test_battle_won_matches_final_health(env3m):
    outcomes = []
    for seed in range(6):
        _obs, _state, avail = env3m.reset(seed=seed)
        ret = 0.0
        while True:
            r = env3m.step(_focus_fire(avail))
            avail, ret = r.avail_actions, ret + r.reward
            assert isinstance(r.info["battle_won"], bool)
            if r.terminated or r.truncated:
                break
            assert r.info["battle_won"] is False
        health = _unit_health(r.state, 6)
        allies_alive, enemies_alive = np.any(health[:3] > 0), np.any(health[3:] > 0)
        assert r.terminated == (not (allies_alive and enemies_alive))
        assert r.info["battle_won"] == (allies_alive and not enemies_alive)
        assert r.info["dead_enemies"] == int(np.sum(health[3:] == 0))
        if r.info["battle_won"]:
            assert r.reward >= 1.0 and ret == pytest.approx(2.0, abs=1e-5)  # all damage + win bonus
        outcomes.append(r.info["battle_won"])
    assert any(outcomes) and not all(outcomes), outcomes  # both ends seen (deterministic by seed)


def test_time_limit_truncates(env2s3z):
    rng = np.random.default_rng(0)
    _obs, _state, avail = env2s3z.reset(seed=0)
    for t in range(1, LIMIT_2S3Z + 1):  # noqa: B007 - t is read after the loop
        r = env2s3z.step(env2s3z.sample_actions(rng, avail))
        avail = r.avail_actions
        if r.terminated or r.truncated:
            break
    assert t == LIMIT_2S3Z and r.truncated is True and r.terminated is False
    assert r.info["battle_won"] is False and r.info["episode_step"] == LIMIT_2S3Z
    assert all(np.all(np.isfinite(o)) for o in r.obs)  # the real final observation
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        env2s3z.step([STOP] * 5)


def test_rewards_are_the_same_for_every_ally(env3m):
    import jax

    core = env3m._core
    key, state, _ = core.reset(seed_to_key(0))
    for _ in range(15):
        acts = {a: jax.numpy.int32(EAST) for a in core.agents}
        key, sub = jax.random.split(key)
        _, state, rewards, _, _ = core.env.step_env(sub, state, acts)
        values = {float(rewards[a]) for a in core.agents}
        assert len(values) == 1


# ----------------------------------------------------------------------------- batch


def test_batch_equals_single_envs(env3m):
    B = 3
    batch = SmaxBatch("3m", B, max_episode_steps=LIMIT_3M)
    singles = [SmaxEnv("3m", max_episode_steps=LIMIT_3M) for _ in range(B)]
    seeds = [21, 22, 23]
    obs, state, avail = batch.reset(seeds)
    assert obs.shape == (B, 3, 75) and state.shape == (B, 72) and avail.shape == (B, 3, 8)
    for b, env in enumerate(singles):
        o, s, m = env.reset(seed=seeds[b])
        np.testing.assert_array_equal(obs[b], np.stack(o))
        np.testing.assert_array_equal(state[b], s)
        np.testing.assert_array_equal(avail[b], np.stack(m))

    rng = np.random.default_rng(0)
    running = np.ones(B, bool)
    restarted = False
    for _ in range(3 * LIMIT_3M):
        actions = np.stack([_focus_fire(avail[b]) if b == 0 else batch.sample_actions(rng)[b] for b in range(B)])
        r = batch.step(actions)
        np.testing.assert_array_equal(r.stepped, running)
        for b in range(B):
            if not running[b]:  # frozen until reset: nothing changes, nothing is reported
                assert r.reward[b] == 0 and not (r.terminated[b] or r.truncated[b] or r.battle_won[b])
                continue
            s = singles[b].step(list(actions[b]))
            np.testing.assert_array_equal(r.obs[b], np.stack(s.obs))
            np.testing.assert_array_equal(r.state[b], s.state)
            np.testing.assert_array_equal(r.avail_actions[b], np.stack(s.avail_actions))
            assert r.reward[b] == np.float32(s.reward)
            assert (r.terminated[b], r.truncated[b], r.battle_won[b]) == (
                s.terminated,
                s.truncated,
                s.info["battle_won"],
            )
            assert r.episode_step[b] == s.info["episode_step"]
            if s.terminated or s.truncated:
                running[b] = False
        avail = r.avail_actions
        if not running[0] and not restarted:  # restart env 0 alone, by index, with a new seed
            obs, state, avail = batch.reset([99], indices=[0])
            o, _, m = singles[0].reset(seed=99)
            np.testing.assert_array_equal(obs[0], np.stack(o))
            np.testing.assert_array_equal(avail[0], np.stack(m))
            running[0], restarted = True, True
        if not running.any():
            break
    assert restarted and not running.any()
    np.testing.assert_array_equal(batch.needs_reset, np.ones(B, bool))
    assert batch._core.step_batch._cache_size() == 1 and batch._core.reset_batch._cache_size() == 1

    with pytest.raises(ValueError, match="shape"):
        batch.step(np.zeros((B, 2), np.int32))
    with pytest.raises(IndexError):
        batch.reset([1], indices=[B])
    batch.reset([1, 2], indices=[1, 2])
    singles[2].reset(seed=2)
    with pytest.raises(ValueError, match="unavailable"):
        batch.step(np.full((B, 3), ATTACK0))  # env 0 is frozen (its row is ignored); 1 and 2 are not
    with pytest.raises(RuntimeError, match="first reset"):
        SmaxBatch("3m", B, max_episode_steps=LIMIT_3M).reset([1], indices=[0])

    # A None seed continues the env's key chain, as SmaxEnv.reset() does.
    obs, _, _ = batch.reset([None], indices=[2])
    np.testing.assert_array_equal(obs[2], np.stack(singles[2].reset(seed=None)[0]))
