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

    def sample_actions(self, rng: np.random.Generator, avail_actions: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Uniformly random actions, drawn from `rng` so that warm-up is reproducible."""
        spec = self.spec
        if spec.discrete:
            out = []
            for i, n in enumerate(spec.act_dims):
                mask = np.ones(n, dtype=bool) if avail_actions is None else avail_actions[i].astype(bool)
                out.append(np.asarray(rng.choice(np.flatnonzero(mask))))
            return out
        return [rng.uniform(lo, hi).astype(np.float32) for lo, hi in zip(spec.act_low, spec.act_high)]
