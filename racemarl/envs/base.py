"""The one environment interface every multi-agent task adapter implements.

All arrays are numpy. Agents are indexed 0..N-1 in a fixed order. Observation and action sizes may
differ between agents; the learner pads them itself, adapters never pad.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np


class UnknownTaskError(ValueError):
    """A task name that names no known task; the message (one line) lists the valid choices."""


class MissingDependencyError(ImportError):
    """The simulator package a task family needs is not installed; the message names the pip extra."""


TRACEBACK_ENV = "RACEMARL_TRACEBACK"  # =1: the command line prints the full traceback of a failure as well


class EnvFailure(RuntimeError):
    """The environment itself failed while a run used it: its reset/step/state raised, or it handed out what its
    declared spaces do not allow (an observation of another size, a NaN or infinite reward or observation, an agent
    outside possible_agents). The message (one line) names the task, the call and the episode step; the original
    exception is the cause (`RACEMARL_TRACEBACK=1 racemarl ...` prints it). `detail`: the traceback text of a
    failure in a rollout worker process, where the cause cannot travel."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail

    def __reduce__(self):
        return type(self), (str(self), self.detail)


def env_failure(task: str, call: str, t: int, e: BaseException) -> EnvFailure:
    """The EnvFailure for an exception `e` that the environment's `call` raised at episode step `t`."""
    text = " ".join(str(e).split())[:300]
    return EnvFailure(
        f"{task}: the environment's {call} raised {type(e).__name__}"
        + (f": {text}" if text else "")
        + f" (episode step {t}); the error is in the environment's "
        f"code ({TRACEBACK_ENV}=1 shows the full traceback)"
    )


def check_finite(task: str, t: int, reward: float | None, obs, state, agents=None) -> None:
    """EnvFailure when a reward, an observation or the state holds NaN or inf (they would poison the learner
    without a word)."""
    if reward is not None and not np.isfinite(reward):
        raise EnvFailure(
            f"{task}: the environment returned a reward of {reward} at episode step {t}; rewards must be finite numbers"
        )
    for i, o in enumerate(obs):
        if not np.isfinite(o).all():
            who = agents[i] if agents is not None else i
            raise EnvFailure(
                f"{task}: agent {who}'s observation holds NaN or inf at episode step {t}; observations "
                "must be finite numbers"
            )
    if state is not None and not np.isfinite(state).all():
        raise EnvFailure(f"{task}: the global state holds NaN or inf at episode step {t}; it must be finite")


@dataclass(frozen=True)
class EnvSpec:
    """Static description of a multi-agent task."""

    task: str
    n_agents: int
    obs_dims: tuple[int, ...]
    state_dim: int
    act_dims: tuple[int, ...]  # continuous: action size per agent; discrete: number of actions
    discrete: bool
    episode_limit: int
    act_low: tuple[np.ndarray, ...] = field(default=(), compare=False)  # continuous only
    act_high: tuple[np.ndarray, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if len(self.obs_dims) != self.n_agents or len(self.act_dims) != self.n_agents:
            raise ValueError("obs_dims and act_dims need one entry per agent")
        if not self.discrete and (len(self.act_low) != self.n_agents or len(self.act_high) != self.n_agents):
            raise ValueError("continuous tasks need act_low/act_high per agent")


def unknown_map_error(label: str, family: str, maps, map_name: str) -> str | None:
    """One line explaining why `map_name` is not one of `maps` (listing the valid tasks), or None."""
    if map_name in maps:
        return None
    return f"unknown {label} map {map_name!r}; valid tasks: {', '.join(f'{family}/{m}' for m in maps)}"


def check_step_call(spec: EnvSpec, needs_reset: bool, actions) -> None:
    """The checks every adapter's `step` starts with: an episode is running and there is one action per agent."""
    if needs_reset:
        raise RuntimeError(f"{spec.task}: the episode has ended (or was never started); call reset() first")
    if len(actions) != spec.n_agents:
        raise ValueError(f"{spec.task}: expected {spec.n_agents} actions, got {len(actions)}")


@dataclass
class StepResult:
    """What one environment step returns.

    `terminated` means the episode ended for a reason that is part of the task (no bootstrapping);
    `truncated` means it was cut by a time limit (bootstrap from the next state).
    """

    obs: list[np.ndarray]
    state: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    avail_actions: list[np.ndarray] | None = None
    info: dict = field(default_factory=dict)


class MultiAgentEnv(abc.ABC):
    """A cooperative multi-agent task with a team reward."""

    spec: EnvSpec

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray] | None]:
        """Start an episode. Returns (per-agent observations, global state, available-action masks or None)."""

    @abc.abstractmethod
    def step(self, actions: list[np.ndarray]) -> StepResult:
        """Apply one action per agent (float arrays for continuous tasks, ints for discrete ones)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def sample_actions(
        self, rng: np.random.Generator, avail_actions: list[np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Uniformly random actions, drawn from `rng` so that warm-up is reproducible."""
        spec = self.spec
        if spec.discrete:
            out = []
            for i, n in enumerate(spec.act_dims):
                mask = np.ones(n, dtype=bool) if avail_actions is None else avail_actions[i].astype(bool)
                out.append(np.asarray(rng.choice(np.flatnonzero(mask))))
            return out
        return [rng.uniform(lo, hi).astype(np.float32) for lo, hi in zip(spec.act_low, spec.act_high)]


class GuardedEnv(MultiAgentEnv):
    """A user's own `MultiAgentEnv` (returned by a pettingzoo/registered factory) with the checks `PettingZooEnv`
    makes: its exceptions become an `EnvFailure` naming the call and the episode step, and observations of another
    size than `spec.obs_dims` or NaN/inf rewards, observations and states are refused where they enter. Every other
    attribute is the env's own."""

    def __init__(self, env: MultiAgentEnv):
        self.env, self.spec, self._t, self._needs_reset = env, env.spec, 0, True

    def __getattr__(self, name: str):
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def _check_obs(self, obs, state) -> None:
        task = self.spec.task
        if len(obs) != self.spec.n_agents:
            raise EnvFailure(
                f"{task}: the environment returned {len(obs)} observations at episode step {self._t}, "
                f"for {self.spec.n_agents} agents"
            )
        for i, (o, d) in enumerate(zip(obs, self.spec.obs_dims)):
            if np.size(o) != d:
                raise EnvFailure(
                    f"{task}: agent {i}'s observation at episode step {self._t} has {np.size(o)} "
                    f"numbers; the env's spec declares {d}"
                )
        if np.size(state) != self.spec.state_dim:
            raise EnvFailure(
                f"{task}: the state at episode step {self._t} has {np.size(state)} numbers; the env's "
                f"spec declares {self.spec.state_dim}"
            )

    def reset(self, seed: int | None = None):
        self._t = 0
        try:
            obs, state, avail = self.env.reset(seed)
        except EnvFailure:
            raise
        except Exception as e:
            raise env_failure(self.spec.task, "reset()", 0, e) from e
        self._check_obs(obs, state)
        check_finite(self.spec.task, 0, None, [np.asarray(o, np.float32) for o in obs], np.asarray(state, np.float32))
        self._needs_reset = False
        return obs, state, avail

    def step(self, actions) -> StepResult:
        check_step_call(self.spec, self._needs_reset, actions)  # racemarl's own call mistakes stay what they are
        self._t += 1
        try:
            r = self.env.step(actions)
        except EnvFailure:
            raise
        except Exception as e:
            raise env_failure(self.spec.task, "step()", self._t, e) from e
        self._check_obs(r.obs, r.state)
        try:
            reward = float(r.reward)
        except (TypeError, ValueError) as e:
            raise EnvFailure(f"{self.spec.task}: the reward at episode step {self._t} is not a number ({e})") from e
        check_finite(
            self.spec.task, self._t, reward, [np.asarray(o, np.float32) for o in r.obs], np.asarray(r.state, np.float32)
        )
        self._needs_reset = bool(r.terminated or r.truncated)
        return r

    def sample_actions(self, rng, avail_actions=None):
        return self.env.sample_actions(rng, avail_actions)

    def close(self) -> None:
        self.env.close()
