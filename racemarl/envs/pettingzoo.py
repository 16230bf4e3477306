"""Adapter for any cooperative PettingZoo ``ParallelEnv`` (https://pettingzoo.farama.org).

`PettingZooEnv` wraps an env built by a factory (``pettingzoo/<module>:<factory>`` tasks, the
built-in ``mpe/*`` tasks from ``mpe2``, and factories registered with `racemarl.envs.register_env`).
Every agent in ``possible_agents`` belongs to our team, in that order.

How the ParallelEnv API maps onto `MultiAgentEnv`:

* **Observations.** Box (any shape, flattened), MultiBinary (flattened) or Discrete (one-hot)
  spaces, as float32. A Dict space with an ``"observation"`` entry and an ``"action_mask"`` entry
  (PettingZoo's convention for masked envs) gives the observation and the mask.
* **Actions.** Either every agent has a Box space with finite bounds (continuous; any shape,
  flattened here and reshaped for the env; actions are clipped to the bounds) or every agent has a
  Discrete space (discrete; the action mask comes from the observation's ``"action_mask"`` or from
  ``infos[agent]["action_mask"]``, else every action is available). An unavailable action raises
  ValueError.
* **Global state.** ``env.state()`` when the env implements it; otherwise (``state()`` raises
  NotImplementedError) the concatenated observations of all agents, in agent order.
* **Team reward.** The mean of the rewards the env hands out on the step; when every agent receives
  the same (shared) reward, that reward itself.
* **terminated / truncated.** The episode is over when every agent that took the step is terminated
  or truncated (or no agent is left). It counts as terminated if any of them terminated, else as
  truncated (bootstrapped). The adapter also truncates at ``max_episode_steps``.
* **Agents that leave early.** An agent that is done while others play on gets zero observations,
  all actions available, and its actions are not sent to the env (it may also be removed from the env, as
  multiwalker's ``remove_on_fall`` does). When ``env.state()`` fails on a step where agents left or the episode
  ended (the env cannot describe a world without them), the last state it gave stands in. An agent that is not in
  ``possible_agents`` (spawned later) is not supported: it stops the run with an `EnvFailure` naming it.
* **The env's own failures.** An exception from the env's ``reset``/``step``/``state``, an observation whose
  size differs from its declared space, and a NaN or infinite reward, observation or state stop the run with an
  `EnvFailure`: one line naming the task, the call and the episode step (``RACEMARL_TRACEBACK=1`` shows the
  traceback).
* **Time limit.** ``max_episode_steps``, or the env's own ``max_cycles`` / ``max_steps`` /
  ``max_episode_steps`` attribute; an env without one needs ``env.max_episode_steps``.
* **Seeding.** ``reset(seed)`` calls ``env.reset(seed=seed)``; determinism is the env's own.
* **Competing teams.** PettingZoo has no standard way to declare teams. An env whose agent names
  mark opponents (``adversary_0``, ``enemy_0``, ``opponent_0``; mpe2's ``eve_0`` of simple_crypto)
  is refused: racemarl controls every agent with one team reward.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from racemarl.envs.base import (
    EnvFailure,
    EnvSpec,
    MultiAgentEnv,
    StepResult,
    check_finite,
    check_step_call,
    env_failure,
)

# Agent-name stems that mark an opposing team (checked on the name without its trailing _<index>).
OPPONENT_NAMES = ("adversary", "adversaries", "enemy", "enemies", "opponent", "opponents", "eve")
_LIMIT_ATTRS = ("max_cycles", "max_steps", "max_episode_steps")


class IncompatibleEnvError(ValueError):
    """An environment racemarl cannot drive (not a ParallelEnv, competing teams, unsupported spaces)."""


def _stem(agent: str) -> str:
    return re.sub(r"[_-]?\d+$", "", str(agent)).lower()


def _space_name(space) -> str:
    return type(space).__name__


def _obs_layout(task: str, agent: str, space) -> tuple[str, int]:
    """(kind, flat size) of an agent's observation space; kind: box, onehot, dict."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict) and "observation" in space.spaces:
        kind, size = _obs_layout(task, agent, space.spaces["observation"])
        if kind != "box":
            raise IncompatibleEnvError(f"{task}: agent {agent}'s Dict observation must hold a Box 'observation'")
        return "dict", size
    if isinstance(space, spaces.Box | spaces.MultiBinary):
        return "box", int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return "onehot", int(space.n)
    raise IncompatibleEnvError(
        f"{task}: agent {agent} has a {_space_name(space)} observation space; supported: Box, MultiBinary, "
        "Discrete, or a Dict with 'observation' (Box) and 'action_mask'"
    )


def _action_layout(task: str, agents: list[str], action_spaces: list) -> bool:
    """True if the agents' action spaces are all Discrete, False if all bounded Box; else an error."""
    from gymnasium import spaces

    kinds = set()
    for agent, space in zip(agents, action_spaces):
        if isinstance(space, spaces.Discrete):
            if int(space.start) != 0:
                raise IncompatibleEnvError(
                    f"{task}: agent {agent}'s Discrete action space starts at {space.start}, not 0"
                )
            kinds.add("discrete")
        elif isinstance(space, spaces.Box):
            if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
                raise IncompatibleEnvError(
                    f"{task}: agent {agent}'s Box action space has infinite bounds; "
                    "continuous actions need finite bounds"
                )
            kinds.add("continuous")
        else:
            raise IncompatibleEnvError(
                f"{task}: agent {agent} has a {_space_name(space)} action space; "
                "supported: Discrete or Box (all agents the same kind)"
            )
    if len(kinds) > 1:
        raise IncompatibleEnvError(
            f"{task}: agents mix Discrete and Box action spaces; supported: all Discrete or all Box"
        )
    return kinds == {"discrete"}


def _time_limit(env) -> int | None:
    for obj in (env, getattr(env, "unwrapped", None), getattr(env, "aec_env", None)):
        for attr in _LIMIT_ATTRS:
            value = getattr(obj, attr, None) if obj is not None else None
            if isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0:
                return int(value)
    return None


def check_parallel_env(task: str, env: Any) -> None:
    """Raise IncompatibleEnvError unless `env` is a PettingZoo ParallelEnv whose agents form one team."""
    from pettingzoo import AECEnv, ParallelEnv

    if isinstance(env, AECEnv):
        raise IncompatibleEnvError(
            f"{task}: the factory returned an AECEnv ({type(env).__name__}); racemarl needs a "
            "ParallelEnv (PettingZoo envs usually offer `parallel_env`, or wrap it with "
            "pettingzoo.utils.conversions.aec_to_parallel)"
        )
    if not isinstance(env, ParallelEnv):
        raise IncompatibleEnvError(
            f"{task}: the factory returned a {type(env).__name__}, not a PettingZoo ParallelEnv "
            "(or a racemarl MultiAgentEnv)"
        )
    agents = list(getattr(env, "possible_agents", None) or [])
    if not agents:
        raise IncompatibleEnvError(f"{task}: the env has no possible_agents; racemarl needs a fixed list of agents")
    rivals = [a for a in agents if _stem(a) in OPPONENT_NAMES]
    if rivals:
        raise IncompatibleEnvError(
            f"{task}: the env has competing teams (agents {', '.join(map(str, rivals))} play against the others); "
            "supported: cooperative envs whose agents all belong to one team with a shared goal"
        )


class PettingZooEnv(MultiAgentEnv):
    """A cooperative PettingZoo ParallelEnv as a `MultiAgentEnv` (see the module docstring).

    Args:
        env: the ParallelEnv (closed by `close`).
        task: the task name it is known under (for messages and `spec.task`).
        max_episode_steps: time limit; None = the env's own (`max_cycles` and the like).
    """

    def __init__(self, env: Any, task: str, max_episode_steps: int | None = None) -> None:
        check_parallel_env(task, env)
        self._env = env
        self.agents: list[str] = list(env.possible_agents)
        obs_spaces = [env.observation_space(a) for a in self.agents]
        act_spaces = [env.action_space(a) for a in self.agents]
        self._obs_kinds, obs_dims = zip(*(_obs_layout(task, a, s) for a, s in zip(self.agents, obs_spaces)))
        self._act_spaces = act_spaces
        discrete = _action_layout(task, self.agents, act_spaces)
        limit = max_episode_steps if max_episode_steps is not None else _time_limit(env)
        if limit is None:
            raise IncompatibleEnvError(
                f"{task}: the env has no time limit racemarl can read (max_cycles, max_steps "
                "or max_episode_steps); set one with --set env.max_episode_steps=N"
            )
        self._t, self._gone = 0, False
        self._last_state: np.ndarray | None = None
        self._has_state = self._probe_state(task)
        self.obs_dims = tuple(int(d) for d in obs_dims)
        state_dim = self._state_size() if self._has_state else sum(self.obs_dims)
        low: tuple[np.ndarray, ...]
        high: tuple[np.ndarray, ...]
        if discrete:
            act_dims = tuple(int(s.n) for s in act_spaces)
            low = high = ()
        else:
            act_dims = tuple(int(np.prod(s.shape)) for s in act_spaces)
            low = tuple(np.asarray(s.low, np.float32).reshape(-1).copy() for s in act_spaces)
            high = tuple(np.asarray(s.high, np.float32).reshape(-1).copy() for s in act_spaces)
        self.spec = EnvSpec(
            task=task,
            n_agents=len(self.agents),
            obs_dims=self.obs_dims,
            state_dim=state_dim,
            act_dims=act_dims,
            discrete=discrete,
            episode_limit=int(limit),
            act_low=low,
            act_high=high,
        )
        self._t = 0
        self._needs_reset = True
        self._live: set[str] = set()
        self._last_obs: list[np.ndarray] = []
        self._last_avail: list[np.ndarray] | None = None

    # ---------------------------------------------------------------- conversions
    def _probe_state(self, task: str) -> bool:
        try:
            self._env.reset(seed=0)
        except Exception as e:
            raise env_failure(task, "reset()", 0, e) from e
        try:
            self._env.state()
        except (NotImplementedError, AttributeError):
            return False
        except Exception as e:
            raise env_failure(task, "state()", 0, e) from e
        return True

    def _state_size(self) -> int:
        space = getattr(self._env, "state_space", None)
        if space is not None and getattr(space, "shape", None):
            return int(np.prod(space.shape))
        return int(np.asarray(self._env.state()).size)

    def _flat_obs(self, i: int, raw) -> tuple[np.ndarray, np.ndarray | None]:
        kind = self._obs_kinds[i]
        mask = None
        if kind == "dict":
            mask = raw.get("action_mask")
            raw = raw["observation"]
        try:
            if kind == "onehot":
                out = np.zeros(self.obs_dims[i], np.float32)
                out[int(raw)] = 1.0
            else:
                out = np.asarray(raw, np.float32).reshape(-1)
        except (TypeError, ValueError, IndexError) as e:
            raise EnvFailure(
                f"{self.spec.task}: agent {self.agents[i]}'s observation at episode step {self._t} does "
                f"not fit its observation space ({type(e).__name__}: {e})"
            ) from e
        if out.size != self.obs_dims[i]:
            raise EnvFailure(
                f"{self.spec.task}: agent {self.agents[i]}'s observation at episode step {self._t} has "
                f"{out.size} numbers; its observation space declares {self.obs_dims[i]}"
            )
        return out, mask

    def _check_agents(self, obs: dict, call: str, *per_agent: dict) -> None:
        """An agent the env hands out that is not in possible_agents: EnvFailure naming it."""
        known = set(self.agents)
        strangers = {a for d in (obs, *per_agent) if isinstance(d, dict) for a in d if a not in known}
        strangers |= {a for a in (getattr(self._env, "agents", None) or []) if a not in known}
        if strangers:
            raise EnvFailure(
                f"{self.spec.task}: the environment's {call} at episode step {self._t} has agents "
                f"{', '.join(sorted(map(str, strangers)))} that are not in possible_agents; racemarl "
                "needs a fixed team (list every agent in possible_agents)"
            )

    def _state(self, ending: bool) -> np.ndarray:
        """`env.state()`; once an agent has left the episode (or on its last step), the last state it gave when it
        fails then (an env that destroys a fallen agent may not describe the world without it)."""
        try:
            state = np.asarray(self._env.state(), np.float32).reshape(-1)
        except Exception as e:
            last: np.ndarray | None = getattr(self, "_last_state", None)
            if ending and last is not None:
                return last
            raise env_failure(self.spec.task, "state()", self._t, e) from e
        if state.size != self.spec.state_dim:
            raise EnvFailure(
                f"{self.spec.task}: the environment's state() has {state.size} numbers at episode step "
                f"{self._t}, {self.spec.state_dim} at the first reset"
            )
        self._last_state = state
        return state

    def _observe(
        self, obs: dict, infos: dict, ending: bool = False
    ) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray] | None]:
        flat, avail = [], []
        for i, agent in enumerate(self.agents):
            if agent in obs and agent in self._live:
                o, mask = self._flat_obs(i, obs[agent])
                if mask is None and isinstance(infos.get(agent), dict):
                    mask = infos[agent].get("action_mask")
            else:
                o, mask = np.zeros(self.obs_dims[i], np.float32), None
            flat.append(o)
            if self.spec.discrete:
                m = (
                    np.ones(self.spec.act_dims[i], np.float32)
                    if mask is None
                    else np.asarray(mask, np.float32).reshape(-1)
                )
                if agent in self._live and not m.any():
                    raise RuntimeError(f"{self.spec.task}: agent {agent} has no available action")
                avail.append(m)
        state = self._state(ending) if self._has_state else np.concatenate(flat)
        self._last_obs, self._last_avail = flat, (avail if self.spec.discrete else None)
        return flat, state, self._last_avail

    def _env_action(self, i: int, action) -> Any:
        space = self._act_spaces[i]
        if self.spec.discrete:
            a = int(np.asarray(action).reshape(-1)[0])
            if not 0 <= a < self.spec.act_dims[i]:
                raise ValueError(
                    f"{self.spec.task}: action {a} of agent {self.agents[i]} is out of range "
                    f"[0, {self.spec.act_dims[i]})"
                )
            if self._last_avail is not None and not self._last_avail[i][a]:
                raise ValueError(f"{self.spec.task}: action {a} of agent {self.agents[i]} is not available")
            return a
        clipped = np.clip(np.asarray(action, np.float32).reshape(-1), self.spec.act_low[i], self.spec.act_high[i])
        return clipped.reshape(space.shape).astype(space.dtype, copy=False)

    # ---------------------------------------------------------------- MultiAgentEnv
    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray] | None]:
        task = self.spec.task
        try:
            obs, infos = self._env.reset(seed=None if seed is None else int(seed))
        except Exception as e:
            raise env_failure(task, "reset()", 0, e) from e
        self._t = 0
        self._check_agents(obs, "reset()")
        self._live = set(self._env.agents)
        self._gone = False
        self._needs_reset = False
        out = self._observe(obs, infos or {}, ending=False)
        check_finite(task, 0, None, out[0], out[1], self.agents)
        return out

    def step(self, actions) -> StepResult:
        check_step_call(self.spec, self._needs_reset, actions)
        acting = [a for a in self.agents if a in self._live]
        joint = {a: self._env_action(i, actions[i]) for i, a in enumerate(self.agents) if a in self._live}
        task = self.spec.task
        self._t += 1
        try:
            obs, rewards, terms, truncs, infos = self._env.step(joint)
        except Exception as e:
            raise env_failure(task, "step()", self._t, e) from e
        self._check_agents(obs, "step()", rewards, terms, truncs)
        try:
            values = [float(rewards[a]) for a in acting if a in rewards]
        except (TypeError, ValueError) as e:
            raise EnvFailure(
                f"{task}: the environment's rewards are not numbers at episode step {self._t} ({type(e).__name__}: {e})"
            ) from e
        for a, v in zip([a for a in acting if a in rewards], values):
            if not np.isfinite(v):
                raise EnvFailure(
                    f"{task}: the environment gave agent {a} a reward of {v} at episode step {self._t}; "
                    "rewards must be finite numbers"
                )
        reward = float(np.mean(values)) if values else 0.0
        ended = {a for a in acting if terms.get(a, False) or truncs.get(a, False)}
        over = not self._env.agents or ended == set(acting)
        terminated = over and any(terms.get(a, False) for a in acting)
        truncated = (over and not terminated) or (not over and self._t >= self.spec.episode_limit)
        self._live = set(self._env.agents) - ended
        self._gone = self._gone or len(self._live) < len(self.agents)  # an agent has left this episode
        out_obs, state, avail = self._observe(obs, infos or {}, ending=bool(over or self._gone))
        check_finite(task, self._t, None, out_obs, state, self.agents)
        self._needs_reset = terminated or truncated
        return StepResult(
            obs=out_obs,
            state=state,
            reward=reward,
            terminated=bool(terminated),
            truncated=bool(truncated),
            avail_actions=avail,
        )

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if close is not None:
            close()
