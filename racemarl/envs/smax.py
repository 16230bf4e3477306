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

from dataclasses import dataclass
from typing import Any

import numpy as np

from racemarl.envs.base import MultiAgentEnv, StepResult, check_step_call
from racemarl.envs.smax_core import (
    _check_action_values,
    _check_available,
    _core,
    _entropy_seed,
    _rows,
    _smax_kwargs,
    _spec,
    _to_numpy,
    _validate_config,
    seed_to_key,
)

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
            assert self._avail is not None  # set by reset()
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

    def reset(self, seeds=None, indices=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    return {"calls_per_s": n_calls / elapsed, "env_steps_per_s": n_calls * batch_size / elapsed, "compile_s": compile_s}
