"""A generic check that an adapter honours the `MultiAgentEnv` contract (for tests of every family)."""

from __future__ import annotations

import math

import numpy as np

from racemarl.envs.base import EnvSpec, MultiAgentEnv, StepResult


def _fail(task: str, msg: str) -> None:
    raise AssertionError(f"[{task}] {msg}")


def _check(cond: bool, task: str, msg: str) -> None:
    if not cond:
        _fail(task, msg)


def _check_spec(spec: EnvSpec) -> None:
    t = spec.task
    _check(isinstance(spec, EnvSpec), t, f"env.spec must be an EnvSpec, got {type(spec).__name__}")
    _check(isinstance(t, str) and len(t) > 0, t, "spec.task must be a non-empty string")
    _check(spec.n_agents >= 1, t, f"spec.n_agents must be >= 1, got {spec.n_agents}")
    _check(len(spec.obs_dims) == spec.n_agents, t, "spec.obs_dims needs one entry per agent")
    _check(len(spec.act_dims) == spec.n_agents, t, "spec.act_dims needs one entry per agent")
    _check(all(int(d) >= 1 for d in spec.obs_dims), t, f"spec.obs_dims must be positive, got {spec.obs_dims}")
    _check(all(int(d) >= 1 for d in spec.act_dims), t, f"spec.act_dims must be positive, got {spec.act_dims}")
    _check(spec.state_dim >= 1, t, f"spec.state_dim must be >= 1, got {spec.state_dim}")
    _check(spec.episode_limit >= 1, t, f"spec.episode_limit must be >= 1, got {spec.episode_limit}")
    if not spec.discrete:
        for i, (lo, hi, d) in enumerate(zip(spec.act_low, spec.act_high, spec.act_dims)):
            lo, hi = np.asarray(lo), np.asarray(hi)
            _check(
                lo.shape == (d,) and hi.shape == (d,),
                t,
                f"agent {i}: act_low/act_high shapes {lo.shape}/{hi.shape}, expected ({d},)",
            )
            _check(
                bool(np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))), t, f"agent {i}: action bounds must be finite"
            )
            _check(bool(np.all(lo < hi)), t, f"agent {i}: act_low must be < act_high")


def _check_obs_state(spec: EnvSpec, obs, state, where: str) -> None:
    t = spec.task
    _check(isinstance(obs, list), t, f"{where}: obs must be a list, got {type(obs).__name__}")
    _check(len(obs) == spec.n_agents, t, f"{where}: got {len(obs)} observations for {spec.n_agents} agents")
    for i, o in enumerate(obs):
        _check(isinstance(o, np.ndarray), t, f"{where}: obs[{i}] must be a numpy array, got {type(o).__name__}")
        _check(o.dtype == np.float32, t, f"{where}: obs[{i}] dtype {o.dtype}, expected float32")
        _check(o.shape == (spec.obs_dims[i],), t, f"{where}: obs[{i}] shape {o.shape}, expected ({spec.obs_dims[i]},)")
        _check(bool(np.all(np.isfinite(o))), t, f"{where}: obs[{i}] has non-finite values")
    _check(isinstance(state, np.ndarray), t, f"{where}: state must be a numpy array, got {type(state).__name__}")
    _check(state.dtype == np.float32, t, f"{where}: state dtype {state.dtype}, expected float32")
    _check(state.shape == (spec.state_dim,), t, f"{where}: state shape {state.shape}, expected ({spec.state_dim},)")
    _check(bool(np.all(np.isfinite(state))), t, f"{where}: state has non-finite values")


def _check_avail(spec: EnvSpec, avail, where: str) -> None:
    t = spec.task
    if not spec.discrete:
        _check(avail is None, t, f"{where}: continuous tasks must return avail_actions=None")
        return
    if avail is None:
        return
    _check(
        isinstance(avail, list) and len(avail) == spec.n_agents,
        t,
        f"{where}: avail_actions must be a list with one mask per agent",
    )
    for i, m in enumerate(avail):
        m = np.asarray(m)
        _check(
            m.shape == (spec.act_dims[i],),
            t,
            f"{where}: avail_actions[{i}] shape {m.shape}, expected ({spec.act_dims[i]},)",
        )
        _check(bool(np.all((m == 0) | (m == 1))), t, f"{where}: avail_actions[{i}] must be 0/1")
        _check(int(np.sum(m)) >= 1, t, f"{where}: agent {i} has no available action")


def _check_actions(spec: EnvSpec, actions, avail, where: str) -> None:
    t = spec.task
    _check(
        len(actions) == spec.n_agents,
        t,
        f"{where}: sample_actions gave {len(actions)} actions for {spec.n_agents} agents",
    )
    for i, a in enumerate(actions):
        a = np.asarray(a)
        if spec.discrete:
            _check(
                a.shape == () and np.issubdtype(a.dtype, np.integer),
                t,
                f"{where}: discrete action {i} must be an integer scalar, got shape {a.shape} dtype {a.dtype}",
            )
            _check(
                0 <= int(a) < spec.act_dims[i], t, f"{where}: action {i}={int(a)} out of range [0, {spec.act_dims[i]})"
            )
            if avail is not None:
                _check(bool(np.asarray(avail[i])[int(a)]), t, f"{where}: action {i}={int(a)} is not available")
        else:
            _check(
                a.shape == (spec.act_dims[i],),
                t,
                f"{where}: action {i} shape {a.shape}, expected ({spec.act_dims[i]},)",
            )
            _check(bool(np.all(np.isfinite(a))), t, f"{where}: action {i} has non-finite values")
            _check(
                bool(np.all((a >= spec.act_low[i]) & (a <= spec.act_high[i]))),
                t,
                f"{where}: action {i} outside [act_low, act_high]",
            )


def _check_step(spec: EnvSpec, r: StepResult, where: str) -> None:
    t = spec.task
    _check(isinstance(r, StepResult), t, f"{where}: step must return a StepResult, got {type(r).__name__}")
    _check_obs_state(spec, r.obs, r.state, where)
    _check(
        isinstance(r.reward, float) and not isinstance(r.reward, bool),
        t,
        f"{where}: reward must be a float, got {type(r.reward).__name__}",
    )
    _check(math.isfinite(r.reward), t, f"{where}: reward {r.reward} is not finite")
    _check(type(r.terminated) is bool, t, f"{where}: terminated must be a bool, got {type(r.terminated).__name__}")
    _check(type(r.truncated) is bool, t, f"{where}: truncated must be a bool, got {type(r.truncated).__name__}")
    _check(not (r.terminated and r.truncated), t, f"{where}: terminated and truncated are both True")
    _check(isinstance(r.info, dict), t, f"{where}: info must be a dict")
    _check_avail(spec, r.avail_actions, where)


def _rollout(env: MultiAgentEnv, seed: int, n_steps: int, action_seed: int) -> list:
    """Reset with `seed`, take up to `n_steps` random actions; return everything observed."""
    spec = env.spec
    obs, state, avail = env.reset(seed=seed)
    _check_obs_state(spec, obs, state, "reset")
    _check_avail(spec, avail, "reset")
    rng = np.random.default_rng(action_seed)
    record: list[tuple] = [
        ("reset", [o.copy() for o in obs], state.copy(), None if avail is None else [np.array(m) for m in avail])
    ]
    for k in range(n_steps):
        actions = env.sample_actions(rng, avail)
        _check_actions(spec, actions, avail, f"step {k}")
        r = env.step(actions)
        _check_step(spec, r, f"step {k}")
        avail = r.avail_actions
        record.append(
            (
                [np.array(a) for a in actions],
                [o.copy() for o in r.obs],
                r.state.copy(),
                r.reward,
                r.terminated,
                r.truncated,
                None if avail is None else [np.array(m) for m in avail],
            )
        )
        if r.terminated or r.truncated:
            break
    return record


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def check_env_conformance(env: MultiAgentEnv, n_steps: int = 30, seed: int = 0) -> None:
    """Assert that `env` follows the `MultiAgentEnv` contract; raises AssertionError naming the violation.

    Checks: spec consistency; shapes/dtypes of observations, state, rewards, flags and action masks on
    reset and every step; `sample_actions` gives valid, rng-reproducible actions; determinism (the
    same seed and actions give the same trajectory); an episode ends within `spec.episode_limit` steps;
    stepping after the end raises RuntimeError. The last two play one episode to its end, so use a
    short episode limit for fast tests.
    """
    spec = env.spec
    _check_spec(spec)
    t = spec.task

    # sample_actions is reproducible from the rng.
    obs, state, avail = env.reset(seed=seed)
    a1 = env.sample_actions(np.random.default_rng(123), avail)
    a2 = env.sample_actions(np.random.default_rng(123), avail)
    _check_actions(spec, a1, avail, "sample_actions")
    _check(_same(a1, a2), t, "sample_actions is not reproducible from the same rng")

    # Determinism: same seed + same actions -> same trajectory.
    first = _rollout(env, seed, n_steps, action_seed=seed + 1)
    second = _rollout(env, seed, n_steps, action_seed=seed + 1)
    _check(_same(first[0], second[0]), t, f"reset(seed={seed}) twice gave different observations/state")
    _check(len(first) == len(second), t, "identical seeds and actions gave episodes of different lengths")
    for k, (x, y) in enumerate(zip(first[1:], second[1:])):
        _check(_same(x, y), t, f"identical seeds and actions diverged at step {k}")

    # Play one episode to its end: it must end by episode_limit, and stepping after it must raise.
    rng = np.random.default_rng(seed + 2)
    obs, state, avail = env.reset(seed=seed)
    ended = False
    for k in range(spec.episode_limit):
        r = env.step(env.sample_actions(rng, avail))
        _check_step(spec, r, f"episode step {k}")
        avail = r.avail_actions
        if r.terminated or r.truncated:
            if r.truncated:
                _check(
                    k + 1 == spec.episode_limit,
                    t,
                    f"truncated after {k + 1} steps, but spec.episode_limit is {spec.episode_limit}",
                )
            ended = True
            break
    _check(ended, t, f"episode did not end within spec.episode_limit={spec.episode_limit} steps")
    try:
        env.step(env.sample_actions(rng, avail))
    except RuntimeError:
        pass
    except Exception as e:  # noqa: BLE001 - report the wrong exception type
        _fail(t, f"stepping after the episode ended raised {type(e).__name__} ({e}), expected RuntimeError")
    else:
        _fail(t, "stepping after the episode ended did not raise RuntimeError (call reset() first)")

    # And the env is usable again after reset.
    obs, state, avail = env.reset(seed=seed)
    _check_obs_state(spec, obs, state, "reset after episode end")
    _check(
        _same(obs, first[0][1]) and _same(state, first[0][2]),
        t,
        "reset(seed) after a finished episode gave different observations than before",
    )
