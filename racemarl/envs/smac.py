"""Thin adapter for the real SMAC (StarCraft II; https://github.com/oxwhirl/smac).

SMAC is not on PyPI (``pip install smac`` installs an unrelated package): install StarCraft II and
the SMAC maps, then ``pip install git+https://github.com/oxwhirl/smac.git`` (it brings pysc2), and
set ``SC2PATH`` to the StarCraft II folder. ``smac.env.StarCraft2Env`` is imported lazily, when an
environment is built, so importing this module only needs numpy.

How SMAC's API maps onto `MultiAgentEnv`:

* spec from ``get_env_info()`` (n_agents, n_actions, obs_shape, state_shape, episode_limit);
  observations ``get_obs()``, state ``get_state()`` and masks ``get_avail_actions()`` as float32
  numpy arrays. Actions are SMAC's: 0 no-op (dead agents only), 1 stop, 2-5 move N/S/E/W,
  6.. attack (or heal, for Medivacs) unit 0...
* ``step(actions) -> (reward, terminated, info)``: the reward is SMAC's team reward (scaled by
  default so that an episode's return is at most about 20). SMAC also sets ``terminated=True``
  when the map's time limit is hit, and flags that with ``info["episode_limit"]=True`` -- but only
  when built with ``continuing_episode=True``, so the adapter always builds it that way (the flag
  is the only thing that option changes). Flagged steps become ``truncated=True,
  terminated=False``; a battle won or lost on the last step stays terminated.
  ``info["battle_won"]`` is always a bool; SMAC's other info keys are passed through.
* the time limit is the map's ``episode_limit`` (60 for 3m ... 400 for corridor); a smaller
  ``max_episode_steps`` makes the adapter truncate earlier; a larger one cannot be honoured (the
  game itself ends the episode), so it is lowered to the map's limit with a warning.
* unavailable actions raise ValueError (SMAC itself would fail an assert).
* **Seeding.** SMAC seeds StarCraft II once, when the game is launched (the constructor's
  ``seed``; the game starts at the first ``reset()``). ``reset(seed)`` therefore behaves as follows:
  before the game has started, it rebuilds the (not yet launched) env with that seed; afterwards,
  with ``reseed="first"`` (default) the seed is ignored -- later episodes continue the game's own
  random stream, since relaunching StarCraft II takes seconds -- and with ``reseed="recreate"``
  the game is closed and relaunched with that seed (even the same one, so that ``reset(seed)``
  repeats an episode). ``reset()`` never relaunches. StarCraft II is not bit-for-bit
  deterministic even with a fixed seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from racemarl.envs.base import (
    EnvSpec,
    MultiAgentEnv,
    StepResult,
    check_step_call,
    unknown_map_error,
)

# The SMAC maps (smac/env/starcraft2/maps/smac_maps.py) and their episode limits.
SMAC_MAPS: dict[str, int] = {
    "3m": 60,
    "8m": 120,
    "25m": 150,
    "5m_vs_6m": 70,
    "8m_vs_9m": 120,
    "10m_vs_11m": 150,
    "27m_vs_30m": 180,
    "MMM": 150,
    "MMM2": 180,
    "2s3z": 120,
    "3s5z": 150,
    "3s5z_vs_3s6z": 170,
    "3s_vs_3z": 150,
    "3s_vs_4z": 200,
    "3s_vs_5z": 250,
    "1c3s5z": 180,
    "2m_vs_1z": 150,
    "corridor": 400,
    "6h_vs_8z": 150,
    "2s_vs_1sc": 300,
    "so_many_baneling": 100,
    "bane_vs_bane": 200,
    "2c_vs_64zg": 400,
}

SMAC_INSTALL_HINT = (
    "install StarCraft II and the SMAC maps, then `pip install git+https://github.com/oxwhirl/smac.git` "
    "and set SC2PATH to the StarCraft II folder (PyPI's `smac` is an unrelated package)"
)


def smac_task_name(map_name: str) -> str:
    return f"smac/{map_name}"


def smac_config_error(map_name: str) -> str | None:
    """A one-line explanation of why `map_name` is not a SMAC map, or None if it is."""
    return unknown_map_error("SMAC", "smac", SMAC_MAPS, map_name)


def import_starcraft2env() -> Callable[..., Any]:
    """`smac.env.StarCraft2Env`; ImportError (naming the install steps) if SMAC is not installed."""
    try:
        from smac.env import StarCraft2Env
    except ImportError as e:
        raise ImportError(f"SMAC tasks need StarCraft II and SMAC ({e}): {SMAC_INSTALL_HINT}") from e
    return StarCraft2Env


class SmacEnv(MultiAgentEnv):
    """A SMAC map as a `MultiAgentEnv` (discrete actions, team reward, action masks).

    Args:
        map_name: e.g. "3m" (see `SMAC_MAPS`; the map file must be installed).
        max_episode_steps: time limit; None = the map's episode_limit (it cannot be exceeded).
        seed: StarCraft II's random seed, used when the game is launched (None = SC2 chooses).
        reseed: what `reset(seed)` does once the game runs: "first" (ignore the seed) or "recreate"
            (relaunch the game with it); see the module docstring.
        env_factory: builds the SMAC env from keyword arguments (default: `smac.env.StarCraft2Env`);
            tests pass a fake here.
        **smac_kwargs: passed to StarCraft2Env (e.g. difficulty="7", reward_sparse=True).
    """

    def __init__(
        self,
        map_name: str,
        max_episode_steps: int | None = None,
        seed: int | None = None,
        reseed: str = "first",
        env_factory: Callable[..., Any] | None = None,
        **smac_kwargs: Any,
    ) -> None:
        if reseed not in ("first", "recreate"):
            raise ValueError(f"reseed must be 'first' or 'recreate', got {reseed!r}")
        for k in ("map_name", "seed", "continuing_episode"):
            if k in smac_kwargs:
                raise ValueError(f"{k!r} is set by the adapter, not through smac_kwargs")
        if env_factory is None:
            if map_name not in SMAC_MAPS:  # the real SMAC only knows its own maps
                raise ValueError(smac_config_error(map_name))
            env_factory = import_starcraft2env()
        self.map_name = map_name
        self.reseed = reseed
        self._factory = env_factory
        self._smac_kwargs = dict(smac_kwargs)
        self._seed = None if seed is None else int(seed)
        self._env = self._make(self._seed)
        self._launched = False  # StarCraft II starts at the env's first reset()

        info = self._env.get_env_info()
        n_agents = int(info["n_agents"])
        map_limit = int(info["episode_limit"])
        if max_episode_steps is None:
            limit = map_limit
        else:
            limit = int(max_episode_steps)
            if limit < 1:
                raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
            if limit > map_limit:
                warnings.warn(
                    f"smac/{map_name}: the map ends episodes after {map_limit} steps; "
                    f"max_episode_steps={limit} lowered to {map_limit}",
                    stacklevel=2,
                )
                limit = map_limit
        self.max_episode_steps = limit
        self.spec = EnvSpec(
            task=smac_task_name(map_name),
            n_agents=n_agents,
            obs_dims=(int(info["obs_shape"]),) * n_agents,
            state_dim=int(info["state_shape"]),
            act_dims=(int(info["n_actions"]),) * n_agents,
            discrete=True,
            episode_limit=limit,
        )
        self._t = 0
        self._avail: list[np.ndarray] | None = None
        self._needs_reset = True
        self._closed = False

    def _make(self, seed: int | None):
        return self._factory(map_name=self.map_name, seed=seed, continuing_episode=True, **self._smac_kwargs)

    # ------------------------------------------------------------------ helpers
    def _obs(self) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32).reshape(-1) for o in self._env.get_obs()]

    def _state(self) -> np.ndarray:
        return np.asarray(self._env.get_state(), dtype=np.float32).reshape(-1)

    def _avail_actions(self) -> list[np.ndarray]:
        return [np.asarray(m, dtype=np.float32).reshape(-1) for m in self._env.get_avail_actions()]

    # ------------------------------------------------------------------ API
    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
        if self._closed:
            raise RuntimeError(f"{self.spec.task}: environment is closed")
        if seed is not None and (
            (not self._launched and int(seed) != self._seed) or (self._launched and self.reseed == "recreate")
        ):
            self._env.close()
            self._seed = int(seed)
            self._env = self._make(self._seed)
            self._launched = False
        self._env.reset()
        self._launched = True
        self._t = 0
        self._needs_reset = False
        self._avail = self._avail_actions()
        return self._obs(), self._state(), [m.copy() for m in self._avail]

    def step(self, actions) -> StepResult:
        check_step_call(self.spec, self._needs_reset, actions)
        task = self.spec.task
        acts = []
        assert self._avail is not None  # set by reset()
        for i, a in enumerate(actions):
            a = np.asarray(a).reshape(-1)
            if a.shape != (1,) or not np.issubdtype(a.dtype, np.number) or a[0] != np.floor(a[0]):
                raise ValueError(f"{task}: action of agent {i} must be one integer, got {actions[i]!r}")
            a = int(a[0])
            if not 0 <= a < self.spec.act_dims[i]:
                raise ValueError(f"{task}: action {a} of agent {i} out of range [0, {self.spec.act_dims[i]})")
            if not self._avail[i][a]:
                raise ValueError(
                    f"{task}: agent {i} chose unavailable action {a} "
                    f"(available: {np.flatnonzero(self._avail[i]).tolist()})"
                )
            acts.append(a)

        reward, done, smac_info = self._env.step(acts)
        self._t += 1
        info = dict(smac_info or {})
        time_limit = bool(info.get("episode_limit", False))
        terminated = bool(done) and not time_limit
        truncated = not terminated and (time_limit or self._t >= self.max_episode_steps)
        info["battle_won"] = bool(info.get("battle_won", False))
        info["episode_step"] = self._t
        if terminated or truncated:
            self._needs_reset = True
        self._avail = self._avail_actions()
        return StepResult(
            obs=self._obs(),
            state=self._state(),
            reward=float(reward),
            terminated=terminated,
            truncated=truncated,
            avail_actions=[m.copy() for m in self._avail],
            info=info,
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._needs_reset = True
            self._env.close()
