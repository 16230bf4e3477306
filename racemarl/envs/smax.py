"""Adapter for JaxMARL's SMAX (a JAX re-implementation of the SMAC StarCraft micromanagement maps).

jax and jaxmarl are imported lazily (when an environment is built), so importing this module only
needs numpy. Install with ``pip install 'racemarl[smax]'``.

Setup (the one JaxMARL's own SMAX baselines use): ``HeuristicEnemySMAX`` with the map's
``map_name_to_scenario`` scenario, ``see_enemy_actions=True``, ``walls_cause_death=True`` and
``attack_mode="closest"``. We control the allies (``env.agents`` order: ally_0, ally_1, ...); the
enemies are played by JaxMARL's scripted heuristic.

Semantics chosen here (and checked in tests/test_smax.py):

* **Team reward.** SMAX computes one reward per team and hands every ally the same number
  (``compute_reward`` returns ``team_rewards[0]`` for every ally), so the team reward is that
  value, taken from ``ally_0``. It is the enemies' lost health as a fraction of their max health,
  averaged over enemy units, plus ``won_battle_bonus`` (1.0) on the step the battle is won: an
  episode's return is at most 2.0 (SMAC's own scale is 20). Dead allies keep receiving it.
* **terminated** = the battle is over: every ally or every enemy is dead (both at once is a draw,
  ``battle_won`` False). **truncated** = ``max_episode_steps`` reached without the battle ending
  (a battle that ends exactly on the last step counts as terminated). SMAX itself folds the time
  limit into ``done``; the adapter separates the two. ``info["battle_won"]`` (bool) is on every
  step's info and becomes True on the step all enemies die while an ally lives.
* **Time limit.** ``max_episode_steps`` defaults to SMAX's ``max_steps`` (100 steps for every map;
  JaxMARL has no per-map limit, unlike SMAC's 60-400). It is passed to SMAX as ``max_steps``.
* **Actions** (SMAX's layout, not SMAC's): 0-3 move, 4 stop, 5.. attack enemy 0..; dead agents may
  only "stop" (SMAC's dead agents use a no-op action 0 instead). ``avail_actions`` come from
  ``get_avail_actions`` (float32 0/1 arrays). SMAX itself never rejects an action: an unavailable
  attack (target dead or out of range) or a move by a dead unit is silently a no-op (it does not
  even move), though the chosen target still shows up as "last targeted" in others' observations.
  This adapter raises ValueError on an unavailable action (as SMAC does) unless
  ``check_actions=False``, which passes the action through to SMAX unchecked.
* **Observations** are SMAX's ``unit_list`` features (float32); the **global state** is SMAX's world
  state (``get_world_state``, also ``obs["world_state"]``): per unit health, position, cooldown
  and type bits, then every unit's team and type.
* **Seeding.** ``reset(seed)`` makes the key ``[seed >> 32, seed & 0xffffffff]`` (equal to
  ``jax.random.PRNGKey(seed)`` for seeds < 2**32); every reset and step splits it, so the same seed
  and actions give the same episode. ``reset()`` without a seed continues the key chain (the very
  first unseeded reset draws a seed from OS entropy).
* **Compilation.** Reset and step are pure jitted functions shared by every environment with the
  same map and settings (see ``_core``), so only the first environment of a map compiles. The
  enemy-policy state SMAX returns from ``reset`` holds weakly typed integers that ``step`` returns
  strongly typed, which would make the jitted step compile a second time; every state is
  normalised to strong dtypes inside the jitted functions.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from racemarl.envs.base import (
    EnvSpec,
    MultiAgentEnv,
    StepResult,
    check_step_call,
    unknown_map_error,
)

# Every map JaxMARL's SMAX offers (jaxmarl 0.2: `smax_env.MAP_NAME_TO_SCENARIO`). The smacv2_* maps
# draw unit types and start positions at random each episode (SMACv2 style).
SMAX_MAPS: tuple[str, ...] = (
    "3m",
    "8m",
    "25m",
    "5m_vs_6m",
    "10m_vs_11m",
    "27m_vs_30m",
    "2s3z",
    "3s5z",
    "3s5z_vs_3s6z",
    "3s_vs_5z",
    "6h_vs_8z",
    "smacv2_5_units",
    "smacv2_10_units",
    "smacv2_20_units",
)

# Unit mixes: SMAX builds any mix of its six unit types. A map name in SMAC's style, "<allies>_vs_<enemies>"
# or "<units>" (the same units on both sides), each side a sequence of <count><unit>, e.g. 3s_vs_3z,
# 2s3z, 1M2m_vs_4zg. Unit letters follow SMAC's map names; the numbers are SMAX's unit type indices
# (jaxmarl 0.2 `SMAX.unit_type_names`: marine, marauder, stalker, zealot, zergling, hydralisk).
SMAX_UNITS: dict[str, tuple[int, str]] = {
    "m": (0, "marine"),
    "M": (1, "marauder"),
    "s": (2, "stalker"),
    "z": (3, "zealot"),
    "zg": (4, "zergling"),
    "h": (5, "hydralisk"),
}
# The paper's SMAC maps that SMAX can build but does not list itself.
SMAX_EXTRA_MAPS: tuple[str, ...] = ("3s_vs_3z",)
# The paper's SMAC maps SMAX cannot build, and the units it lacks.
SMAX_UNBUILDABLE_PAPER_MAPS: dict[str, str] = {
    "2s_vs_1sc": "spine crawler",
    "2c_vs_64zg": "colossus",
    "MMM": "medivac",
    "MMM2": "medivac",
    "so_many_baneling": "baneling",
}
_SIDE_TOKEN = re.compile(r"(\d+)(zg|[mMszh])")

SMAX_DEFAULT_EPISODE_LIMIT = 100  # SMAX(max_steps=100), the same for every map

# HeuristicEnemySMAX settings JaxMARL's SMAX baselines use (baselines/*/config/*smax*.yaml).
SMAX_BASELINE_KWARGS: dict[str, Any] = {
    "see_enemy_actions": True,
    "walls_cause_death": True,
    "attack_mode": "closest",
}

_SEED_MASK = 0xFFFFFFFF


def smax_task_name(map_name: str) -> str:
    return f"smax/{map_name}"


def _parse_side(text: str) -> list[int] | None:
    """'2s3z' -> SMAX unit types [2, 2, 3, 3, 3]; None if `text` is not a sequence of <count><unit>."""
    units, end = [], 0
    for m in _SIDE_TOKEN.finditer(text):
        if m.start() != end or int(m.group(1)) < 1:
            return None
        units += [SMAX_UNITS[m.group(2)][0]] * int(m.group(1))
        end = m.end()
    return units if units and end == len(text) else None


def parse_unit_mix(map_name: str) -> tuple[list[int], list[int]] | None:
    """(ally unit types, enemy unit types) of a unit-mix map name like '3s_vs_3z' or '2s3z'; None if it is not one."""
    allies_text, sep, enemies_text = map_name.partition("_vs_")
    allies = _parse_side(allies_text)
    enemies = _parse_side(enemies_text) if sep else allies
    if allies is None or enemies is None:
        return None
    return allies, enemies


def smax_map_names() -> tuple[str, ...]:
    """The listed SMAX maps: SMAX's own and the paper's maps built from unit mixes."""
    return SMAX_MAPS + SMAX_EXTRA_MAPS


def smax_config_error(map_name: str) -> str | None:
    """A one-line explanation of why `map_name` is not a SMAX map, or None if it is."""
    if map_name in SMAX_MAPS or parse_unit_mix(map_name) is not None:
        return None
    units = ", ".join(f"{k}={name}" for k, (_, name) in SMAX_UNITS.items())
    why = ""
    if map_name in SMAX_UNBUILDABLE_PAPER_MAPS:
        why = f" (SMAX has no {SMAX_UNBUILDABLE_PAPER_MAPS[map_name]} units; use smac/{map_name} with StarCraft II)"
    return (unknown_map_error("SMAX", "smax", smax_map_names(), map_name) + why
            + f"; or a unit mix '<allies>_vs_<enemies>' / '<units>' of <count><unit> with units {units} "
            "(e.g. smax/3s_vs_3z, smax/1M2m_vs_4zg)")


def _scenario(smax, map_name: str):
    """SMAX's scenario for a map it lists, else the one of a unit mix."""
    if map_name in SMAX_MAPS:
        return smax.map_name_to_scenario(map_name)
    from jaxmarl.environments.smax.smax_env import Scenario
    import jax.numpy as jnp

    allies, enemies = parse_unit_mix(map_name)
    return Scenario(unit_types=jnp.array(allies + enemies, dtype=jnp.uint8), num_allies=len(allies),
                    num_enemies=len(enemies), smacv2_position_generation=False, smacv2_unit_type_generation=False)


_IMPORT_NOISE = frozenset({
    "Importing submoduled environments...",
    "Submoduled environments not found. Skipping import.",
    "Submoduled environments imported successfully.",
})


@contextlib.contextmanager
def _capture_fd1() -> Iterator[io.BytesIO]:
    """Capture what is written to file descriptor 1 (not just `sys.stdout`) into the yielded buffer."""
    out = io.BytesIO()
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
    except (AttributeError, OSError, ValueError):  # no real stdout (e.g. pythonw): nothing to capture
        yield out
        return
    with tempfile.TemporaryFile() as tmp:
        _flush_std()
        saved = os.dup(fd)
        os.dup2(tmp.fileno(), fd)
        try:
            yield out
        finally:
            _flush_std()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            out.write(tmp.read())


def _flush_std() -> None:
    for stream in (sys.stdout, sys.__stdout__):
        with contextlib.suppress(Exception):
            stream.flush()


def _import_smax():
    """Import jaxmarl's SMAX quietly and without letting it clobber `sys.stdout`/`sys.stderr`.

    Importing any part of jaxmarl 0.2 imports all its environments: the package prints
    "Importing submoduled environments..." on stdout, and its MABrax module sets `sys.stdout` and
    `sys.stderr` back to `sys.__stdout__`/`sys.__stderr__` (undoing any redirection, e.g. pytest's)
    before that print. So: capture file descriptor 1 while importing, restore both stream objects,
    and pass on whatever was printed except those notices.
    """
    if "jaxmarl.environments.smax" in sys.modules:
        from jaxmarl.environments import smax

        return smax
    stdout, stderr = sys.stdout, sys.stderr
    buf, raw = io.StringIO(), io.BytesIO()
    try:
        with _capture_fd1() as raw, contextlib.redirect_stdout(buf):
            from jaxmarl.environments import smax
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        text = buf.getvalue() + raw.getvalue().decode(errors="replace")
        kept = [ln for ln in text.splitlines() if ln.strip() and ln.strip() not in _IMPORT_NOISE]
        if kept:
            sys.stdout.write("\n".join(kept) + "\n")
    return smax


def seed_to_key(seed: int) -> np.ndarray:
    """The raw uint32[2] PRNG key for `seed` (equals `jax.random.PRNGKey(seed)` for seed < 2**32)."""
    seed = int(seed)
    if seed < 0 or seed >= 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return np.array([(seed >> 32) & _SEED_MASK, seed & _SEED_MASK], dtype=np.uint32)


def _entropy_seed() -> int:
    return int(np.random.SeedSequence().entropy) % 2**64


# --------------------------------------------------------------------------- shared jitted core


class _SmaxCore:
    """One HeuristicEnemySMAX configuration and its jitted pure functions.

    reset(key) -> (key, env_state, out); step(key, env_state, actions int32[N]) -> (key, env_state, out),
    where out = (obs f32[N, D], state f32[S], avail f32[N, A], reward f32, battle_over bool,
    battle_won bool, step int32, dead_allies int32, dead_enemies int32). `key` is the next key of
    the env's chain. The batched versions vmap these over a leading env axis and only commit the
    new key/state where a boolean mask is set.
    """

    def __init__(self, map_name: str, max_steps: int, kwargs: dict[str, Any]) -> None:
        smax = _import_smax()
        import jax

        self.map_name = map_name
        self.max_steps = int(max_steps)
        env = smax.HeuristicEnemySMAX(scenario=_scenario(smax, map_name), max_steps=self.max_steps, **kwargs)
        if env.action_type != "discrete":
            raise ValueError("only SMAX's discrete actions are supported (action_type='discrete')")
        self.env = env
        self.agents: tuple[str, ...] = tuple(env.agents)
        self.n_agents = int(env.num_allies)
        self.n_enemies = int(env.num_enemies)
        self.obs_dim = int(env.obs_size)
        self.state_dim = int(env.state_size)
        self.n_actions = int(env.num_ally_actions)
        self.n_movement_actions = int(env.num_movement_actions)

        self.reset = jax.jit(self._reset)
        self.step = jax.jit(self._step)
        self.reset_batch = jax.jit(self._reset_batch)
        self.step_batch = jax.jit(self._step_batch)

    # -- pure functions (traced by jax) --
    @staticmethod
    def _strong(tree):
        import jax

        # Same dtypes, never weakly typed: reset's and step's states then share one jit signature.
        return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)

    def _outputs(self, obs: dict, env_state, reward):
        import jax.numpy as jnp

        env = self.env
        n = self.n_agents
        obs_arr = jnp.stack([obs[a] for a in self.agents]).astype(jnp.float32)
        world = obs["world_state"].astype(jnp.float32)
        avail_d = env.get_avail_actions(env_state)
        avail = jnp.stack([avail_d[a] for a in self.agents]).astype(jnp.float32)
        alive = env_state.state.unit_alive
        allies_alive = jnp.any(alive[:n])
        enemies_alive = jnp.any(alive[n:])
        battle_over = jnp.logical_not(allies_alive & enemies_alive)
        won = allies_alive & jnp.logical_not(enemies_alive)
        dead_allies = jnp.sum(jnp.logical_not(alive[:n])).astype(jnp.int32)
        dead_enemies = jnp.sum(jnp.logical_not(alive[n:])).astype(jnp.int32)
        step = env_state.state.step.astype(jnp.int32)
        return (obs_arr, world, avail, jnp.asarray(reward, jnp.float32), battle_over, won, step,
                dead_allies, dead_enemies)

    def _reset(self, key):
        import jax

        key, sub = jax.random.split(key)
        obs, env_state = self.env.reset(sub)
        env_state = self._strong(env_state)
        return key, env_state, self._outputs(obs, env_state, 0.0)

    def _step(self, key, env_state, actions):
        import jax

        key, sub = jax.random.split(key)
        act = {a: actions[i] for i, a in enumerate(self.agents)}
        obs, env_state, rewards, _dones, _infos = self.env.step_env(sub, env_state, act)
        env_state = self._strong(env_state)
        # Every ally gets the same team reward (see the module docstring).
        return key, env_state, self._outputs(obs, env_state, rewards[self.agents[0]])

    @staticmethod
    def _select(mask, new, old):
        import jax
        import jax.numpy as jnp

        def pick(a, b):
            m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
            return jnp.where(m, a, b)

        return jax.tree.map(pick, new, old)

    def _reset_batch(self, keys, mask, old_keys, old_states):
        import jax

        new_keys, new_states, out = jax.vmap(self._reset)(keys)
        return self._select(mask, new_keys, old_keys), self._select(mask, new_states, old_states), out

    def blank_batch(self, batch_size: int):
        """Zero keys and env states of the shapes/dtypes `reset_batch` takes (nothing is compiled)."""
        import jax
        import jax.numpy as jnp

        keys = jax.ShapeDtypeStruct((batch_size, 2), jnp.uint32)
        new_keys, new_states, _ = jax.eval_shape(jax.vmap(self._reset), keys)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (new_keys, new_states))

    def _step_batch(self, keys, states, actions, active):
        import jax

        new_keys, new_states, out = jax.vmap(self._step)(keys, states, actions)
        return self._select(active, new_keys, keys), self._select(active, new_states, states), out


_CORES: dict[tuple, _SmaxCore] = {}


def _core(map_name: str, max_steps: int, kwargs: dict[str, Any]) -> _SmaxCore:
    """The shared core for this configuration (built once per process; unhashable kwargs: not shared)."""
    try:
        cache_key = (map_name, int(max_steps), tuple(sorted(kwargs.items())))
        hash(cache_key)
    except TypeError:
        return _SmaxCore(map_name, max_steps, kwargs)
    core = _CORES.get(cache_key)
    if core is None:
        core = _CORES[cache_key] = _SmaxCore(map_name, max_steps, kwargs)
    return core


def _validate_config(map_name: str, max_episode_steps: int | None) -> int:
    error = smax_config_error(map_name)
    if error is not None:
        raise ValueError(error)
    limit = SMAX_DEFAULT_EPISODE_LIMIT if max_episode_steps is None else int(max_episode_steps)
    if limit < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    return limit


def _smax_kwargs(attack_mode: str, smax_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(SMAX_BASELINE_KWARGS)
    kwargs["attack_mode"] = attack_mode
    for k, v in (smax_kwargs or {}).items():
        if k in ("scenario", "max_steps"):
            raise ValueError(f"smax_kwargs may not set {k!r} (use the map name / max_episode_steps)")
        kwargs[k] = v
    return kwargs


def _spec(core: _SmaxCore, limit: int) -> EnvSpec:
    n = core.n_agents
    return EnvSpec(
        task=smax_task_name(core.map_name),
        n_agents=n,
        obs_dims=(core.obs_dim,) * n,
        state_dim=core.state_dim,
        act_dims=(core.n_actions,) * n,
        discrete=True,
        episode_limit=limit,
    )


def _check_action_values(task: str, actions: np.ndarray, n_actions: int) -> None:
    bad = (actions < 0) | (actions >= n_actions)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{task}: action {int(actions[idx])} at {idx} out of range [0, {n_actions})")


def _check_available(task: str, actions: np.ndarray, avail: np.ndarray, rows: np.ndarray | None = None) -> None:
    """actions int[..., N], avail f32[..., N, A]; raise on the first unavailable one."""
    ok = np.take_along_axis(avail, actions[..., None].astype(np.int64), axis=-1)[..., 0] > 0
    if rows is not None:
        ok = ok | ~rows[:, None]
    if not np.all(ok):
        where = tuple(int(i) for i in np.argwhere(~ok)[0])
        agent = where[-1]
        prefix = f"env {where[0]}, " if len(where) > 1 else ""
        raise ValueError(
            f"{task}: {prefix}agent {agent} chose unavailable action {int(actions[where])} "
            f"(available: {np.flatnonzero(avail[where]).tolist()})"
        )


def _to_numpy(tree):
    """Host copies of device arrays (read-only numpy views on CPU)."""
    import jax

    return jax.device_get(tree)


def _rows(a: np.ndarray) -> list[np.ndarray]:
    """One independent, writable array per agent."""
    return [np.array(r) for r in a]


# --------------------------------------------------------------------------- single environment


class SmaxEnv(MultiAgentEnv):
    """One SMAX map as a `MultiAgentEnv` (discrete actions, team reward, action masks).

    Args:
        map_name: e.g. "3m", "2s3z" (see `SMAX_MAPS`).
        max_episode_steps: time limit (default: SMAX's 100); reaching it gives truncated=True.
        attack_mode: the enemy heuristic's targeting, "closest" (baselines) or "random".
        check_actions: raise ValueError on an unavailable action (SMAX would treat it as a no-op).
        smax_kwargs: extra HeuristicEnemySMAX/SMAX keyword arguments (e.g. won_battle_bonus).
    """

    def __init__(
        self,
        map_name: str,
        max_episode_steps: int | None = None,
        attack_mode: str = "closest",
        check_actions: bool = True,
        smax_kwargs: dict[str, Any] | None = None,
    ) -> None:
        limit = _validate_config(map_name, max_episode_steps)
        self.map_name = map_name
        self.max_episode_steps = limit
        self.check_actions = bool(check_actions)
        self._core = _core(map_name, limit, _smax_kwargs(attack_mode, smax_kwargs))
        self.agent_names: tuple[str, ...] = self._core.agents
        self.spec = _spec(self._core, limit)
        self._key = None  # next key of this env's chain (device array)
        self._state = None
        self._avail: np.ndarray | None = None
        self._needs_reset = True
        self._closed = False

    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
        if self._closed:
            raise RuntimeError(f"{self.spec.task}: environment is closed")
        if seed is not None:
            key = seed_to_key(seed)
        elif self._key is None:
            key = seed_to_key(_entropy_seed())
        else:
            key = np.asarray(self._key)  # continue the chain (numpy like a seed key: one jit cache entry)
        self._key, self._state, out = self._core.reset(key)
        obs, state, avail = _to_numpy(out)[:3]
        self._avail = avail
        self._needs_reset = False
        return _rows(obs), np.array(state), _rows(avail)

    def step(self, actions) -> StepResult:
        check_step_call(self.spec, self._needs_reset, actions)
        task, n = self.spec.task, self.spec.n_agents
        acts = np.empty(n, dtype=np.int32)
        for i, a in enumerate(actions):
            a = np.asarray(a).reshape(-1)
            if a.shape != (1,) or not np.issubdtype(a.dtype, np.number) or a[0] != np.floor(a[0]):
                raise ValueError(f"{task}: action of agent {i} must be one integer, got {actions[i]!r}")
            acts[i] = int(a[0])
        _check_action_values(task, acts, self._core.n_actions)
        if self.check_actions:
            _check_available(task, acts, self._avail)

        self._key, self._state, out = self._core.step(self._key, self._state, acts)
        obs, state, avail, reward, battle_over, won, t, dead_allies, dead_enemies = _to_numpy(out)
        self._avail = avail
        terminated = bool(battle_over)
        truncated = (not terminated) and int(t) >= self.max_episode_steps
        if terminated or truncated:
            self._needs_reset = True
        info = {
            "battle_won": bool(won),
            "episode_step": int(t),
            "dead_allies": int(dead_allies),
            "dead_enemies": int(dead_enemies),
        }
        return StepResult(
            obs=_rows(obs),
            state=np.array(state),
            reward=float(reward),
            terminated=terminated,
            truncated=truncated,
            avail_actions=_rows(avail),
            info=info,
        )

    def close(self) -> None:
        self._closed = True
        self._needs_reset = True
        self._state = None


# --------------------------------------------------------------------------- batched (vmap)


@dataclass
class SmaxBatchStep:
    """What `SmaxBatch.step` returns; arrays have a leading env axis of size B.

    Envs that were not stepped (`stepped[b]` False: finished and not reset yet) keep their last
    obs/state/avail and report reward 0 and all flags False.
    """

    obs: np.ndarray  # float32 [B, N, obs_dim]
    state: np.ndarray  # float32 [B, state_dim]
    avail_actions: np.ndarray  # float32 [B, N, n_actions]
    reward: np.ndarray  # float32 [B] (team reward)
    terminated: np.ndarray  # bool [B]
    truncated: np.ndarray  # bool [B]
    battle_won: np.ndarray  # bool [B]
    episode_step: np.ndarray  # int32 [B]
    stepped: np.ndarray  # bool [B]: which envs this call advanced


class SmaxBatch:
    """B copies of one SMAX map stepped together with `jax.vmap` (one jitted call per step).

    Meant for lockstep rollouts of several teams: row b is its own episode (its own key chain and
    seed), e.g. driven by team b. Nothing is reset automatically: an env whose episode ended is
    frozen (later steps leave it as it is and ignore its actions, reporting `stepped[b]` False) until
    `reset(seeds, indices=[b, ...])` starts a new episode in it. Row b behaves exactly like a
    `SmaxEnv` of the same map given the same seeds and actions (see tests/test_smax.py).

    Args:
        map_name, max_episode_steps, attack_mode, check_actions, smax_kwargs: as for `SmaxEnv`.
        batch_size: B.
    """

    def __init__(
        self,
        map_name: str,
        batch_size: int,
        max_episode_steps: int | None = None,
        attack_mode: str = "closest",
        check_actions: bool = True,
        smax_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        limit = _validate_config(map_name, max_episode_steps)
        self.map_name = map_name
        self.batch_size = int(batch_size)
        self.max_episode_steps = limit
        self.check_actions = bool(check_actions)
        self._core = _core(map_name, limit, _smax_kwargs(attack_mode, smax_kwargs))
        self.agent_names: tuple[str, ...] = self._core.agents
        self.spec = _spec(self._core, limit)
        B, N = self.batch_size, self.spec.n_agents
        self._keys = None  # device uint32[B, 2]
        self._states = None  # device pytree with leading axis B
        self._obs = np.zeros((B, N, self._core.obs_dim), np.float32)
        self._state_np = np.zeros((B, self._core.state_dim), np.float32)
        self._avail = np.zeros((B, N, self._core.n_actions), np.float32)
        self._t = np.zeros(B, np.int32)
        self.active = np.zeros(B, dtype=bool)  # running an episode (reset and not ended)

    @property
    def needs_reset(self) -> np.ndarray:
        """bool [B]: envs whose episode has ended (or never started)."""
        return ~self.active

    def reset(
        self, seeds=None, indices=None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start new episodes in envs `indices` (default: all) with `seeds` (one per index, or None).

        A None seed continues that env's key chain. The first call must reset every env.
        Returns the whole batch's (obs [B, N, D], state [B, S], avail [B, N, A]) as copies.
        """
        B = self.batch_size
        idx = np.arange(B) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= B):
            raise IndexError(f"{self.spec.task}: env indices must be in [0, {B}), got {idx.tolist()}")
        if len(set(idx.tolist())) != idx.size:
            raise ValueError(f"{self.spec.task}: repeated env index in {idx.tolist()}")
        if seeds is None:
            seed_list = [None] * idx.size
        elif np.isscalar(seeds):
            raise ValueError(f"{self.spec.task}: seeds must be a sequence with one seed (or None) per env index")
        else:
            seed_list = list(seeds)
            if len(seed_list) != idx.size:
                raise ValueError(f"{self.spec.task}: got {len(seed_list)} seeds for {idx.size} envs")
        first = self._states is None
        if first and idx.size != B:
            raise RuntimeError(f"{self.spec.task}: the first reset must reset all {B} envs")

        # New keys for the seeded envs; the others keep their chain's next key (reset splits it).
        keys = np.zeros((B, 2), np.uint32) if first else np.array(_to_numpy(self._keys))
        for b, s in zip(idx.tolist(), seed_list):
            if s is not None:
                keys[b] = seed_to_key(s)
            elif first:
                keys[b] = seed_to_key(_entropy_seed())
        mask = np.zeros(B, dtype=bool)
        mask[idx] = True
        if first:
            # Placeholders of the right shapes, all replaced (mask is all True): one compiled reset.
            self._keys, self._states = self._core.blank_batch(B)
        self._keys, self._states, out = self._core.reset_batch(keys, mask, self._keys, self._states)
        obs, state, avail = _to_numpy(out[:3])
        self._obs[mask] = obs[mask]
        self._state_np[mask] = state[mask]
        self._avail[mask] = avail[mask]
        self._t[mask] = 0
        self.active[mask] = True
        return self._obs.copy(), self._state_np.copy(), self._avail.copy()

    def step(self, actions) -> SmaxBatchStep:
        """Step every active env; `actions` int [B, N] (rows of finished envs are ignored)."""
        task, B, N = self.spec.task, self.batch_size, self.spec.n_agents
        if self._states is None:
            raise RuntimeError(f"{task}: call reset() first")
        acts = np.asarray(actions)
        if acts.shape != (B, N):
            raise ValueError(f"{task}: actions must have shape ({B}, {N}), got {acts.shape}")
        if not np.issubdtype(acts.dtype, np.integer) and not (
            np.issubdtype(acts.dtype, np.number) and np.all(np.isfinite(acts)) and np.all(acts == np.round(acts))
        ):
            raise ValueError(f"{task}: actions must be integers")
        acts = acts.astype(np.int32)
        running = self.active.copy()
        acts = np.where(running[:, None], acts, self._core.n_movement_actions - 1)  # "stop" for frozen envs
        _check_action_values(task, acts, self._core.n_actions)
        if self.check_actions:
            _check_available(task, acts, self._avail, rows=running)

        self._keys, self._states, out = self._core.step_batch(self._keys, self._states, acts, running)
        obs, state, avail, reward, battle_over, won, t, _dead_allies, _dead_enemies = _to_numpy(out)
        self._obs[running] = obs[running]
        self._state_np[running] = state[running]
        self._avail[running] = avail[running]
        self._t[running] = t[running]
        terminated = running & battle_over
        truncated = running & ~battle_over & (t >= self.max_episode_steps)
        battle_won = running & won
        self.active &= ~(terminated | truncated)
        return SmaxBatchStep(
            obs=self._obs.copy(),
            state=self._state_np.copy(),
            avail_actions=self._avail.copy(),
            reward=np.where(running, reward, 0.0).astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            battle_won=battle_won,
            episode_step=self._t.copy(),
            stepped=running,
        )

    def sample_actions(self, rng: np.random.Generator, avail_actions: np.ndarray | None = None) -> np.ndarray:
        """Uniformly random available actions int32 [B, N] drawn from `rng`."""
        avail = self._avail if avail_actions is None else np.asarray(avail_actions)
        u = rng.random(avail.shape)
        return np.argmax(np.where(avail > 0, u, -1.0), axis=-1).astype(np.int32)

    def close(self) -> None:
        self._states = None
        self.active[:] = False


# --------------------------------------------------------------------------- throughput check


def benchmark(map_name: str, batch_size: int, n_calls: int = 500, seed: int = 0) -> dict[str, float]:
    """Time `SmaxBatch.step` with random available actions (finished envs reset by index, counted in).

    Returns calls/s and env steps/s (= batch_size * calls/s) after compilation, plus the compile time.
    """
    import time

    rng = np.random.default_rng(seed)
    batch = SmaxBatch(map_name, batch_size)
    t0 = time.perf_counter()
    batch.reset(list(range(batch_size)))
    batch.step(batch.sample_actions(rng))
    compile_s = time.perf_counter() - t0
    next_seed = batch_size
    t0 = time.perf_counter()
    for _ in range(n_calls):
        r = batch.step(batch.sample_actions(rng))
        done = np.flatnonzero(r.terminated | r.truncated | ~r.stepped)
        if done.size:
            batch.reset(list(range(next_seed, next_seed + done.size)), indices=done)
            next_seed += done.size
    elapsed = time.perf_counter() - t0
    return {"calls_per_s": n_calls / elapsed, "env_steps_per_s": n_calls * batch_size / elapsed,
            "compile_s": compile_s}

