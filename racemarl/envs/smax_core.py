"""SMAX's jitted core: the quiet import of jaxmarl, PRNG keys from integer seeds, and one compiled pair of pure
reset/step functions per map and settings, shared by the single and the batched adapters (`racemarl.envs.smax`)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, cast

import numpy as np

from racemarl.envs.base import EnvSpec
from racemarl.envs.smax_maps import (
    SMAX_BASELINE_KWARGS,
    SMAX_DEFAULT_EPISODE_LIMIT,
    _scenario,
    smax_config_error,
    smax_task_name,
)

_SEED_MASK = 0xFFFFFFFF


_IMPORT_NOISE = frozenset(
    {
        "Importing submoduled environments...",
        "Submoduled environments not found. Skipping import.",
        "Submoduled environments imported successfully.",
    }
)


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
            if stream is not None:
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
    return int(cast(int, np.random.SeedSequence().entropy)) % 2**64


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
        return (
            obs_arr,
            world,
            avail,
            jnp.asarray(reward, jnp.float32),
            battle_over,
            won,
            step,
            dead_allies,
            dead_enemies,
        )

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
