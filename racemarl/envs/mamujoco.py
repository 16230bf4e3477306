"""Adapter for Multi-Agent MuJoCo (`gymnasium_robotics.mamujoco_v1`).

gymnasium-robotics and mujoco are imported lazily (inside `MaMuJoCoEnv.__init__`), so importing this
module only needs numpy.

Library behaviour this adapter relies on / papers over (gymnasium-robotics 1.4.x):

* every agent gets the same (team) reward, termination and truncation flag;
* observations are rebuilt from the simulator after every step, so the final step of an episode
  still returns a full observation for every agent (needed to bootstrap on truncation);
* after an episode ends the library empties `env.agents` but keeps stepping the simulator if asked
  to; this adapter refuses instead (RuntimeError) until `reset()` is called;
* the time limit is gymnasium's `TimeLimit`, configured through the `max_episode_steps` keyword that
  the library forwards to `gymnasium.make`; the adapter also counts steps itself, so truncation
  happens at `max_episode_steps` whatever the library does;
* ManySegment* scenarios write a temporary XML into the installed package's assets folder while
  being built (and delete it): processes building the same NxM at the same moment could collide.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import warnings
from collections.abc import Iterator

import numpy as np

from racemarl.envs.base import EnvSpec, MultiAgentEnv, StepResult

# Every scenario and partition gymnasium-robotics' mamujoco_v1 offers; None = the whole robot is one
# agent (not available for the ManySegment* scenarios, whose partition sets the number of segments).
MAMUJOCO_PARTITIONS: dict[str, tuple[str | None, ...]] = {
    "Ant": (None, "2x4", "2x4d", "4x2"),
    "HalfCheetah": (None, "2x3", "6x1"),
    "Hopper": (None, "3x1"),
    "Humanoid": (None, "9|8"),
    "HumanoidStandup": (None, "9|8"),
    "Reacher": (None, "2x1"),
    "Swimmer": (None, "2x1"),
    "Pusher": (None, "3p"),
    "Walker2d": (None, "2x3"),
    "InvertedPendulum": (None,),
    "InvertedDoublePendulum": (None,),
    # "CoupledHalfCheetah" (None, "1p1") is left out: with MuJoCo >= 3 `data.ten_J` is sparse and the
    # library's observation code crashes (IndexError) when building the env (gymnasium-robotics 1.4.2).
    # If it is ever re-added: the library ignores max_episode_steps for it (fixed TimeLimit(1000)).
    # Any "NxM" (N agents with M segments each) works for these; a sample is listed.
    "ManySegmentSwimmer": ("2x3", "4x2", "6x1", "10x2"),
    "ManySegmentAnt": ("2x3", "3x2", "6x1"),
}

# Scenarios that accept any "NxM" partition, not only the listed ones.
MAMUJOCO_ANY_NXM: frozenset[str] = frozenset({"ManySegmentSwimmer", "ManySegmentAnt"})

_NXM = re.compile(r"^([1-9][0-9]*)x([1-9][0-9]*)$")


def mamujoco_task_name(scenario: str, partition: str | None) -> str:
    return f"mamujoco/{scenario}" if partition is None else f"mamujoco/{scenario}-{partition}"


def mamujoco_config_error(scenario: str, partition: str | None) -> str | None:
    """A one-line explanation of why (scenario, partition) is not a valid MaMuJoCo task, or None if it is."""
    if scenario not in MAMUJOCO_PARTITIONS:
        return f"unknown MaMuJoCo scenario {scenario!r}; valid scenarios: {', '.join(MAMUJOCO_PARTITIONS)}"
    valid = MAMUJOCO_PARTITIONS[scenario]
    if partition in valid:
        return None
    if scenario in MAMUJOCO_ANY_NXM and partition is not None and _NXM.match(partition):
        return None
    choices = ", ".join(mamujoco_task_name(scenario, p) for p in valid)
    if scenario in MAMUJOCO_ANY_NXM:
        choices += f" (any mamujoco/{scenario}-NxM with N agents of M segments each)"
    what = "needs a partition" if partition is None else f"has no partition {partition!r}"
    return f"MaMuJoCo scenario {scenario!r} {what}; valid tasks: {choices}"


def _import_mamujoco():
    """Import `gymnasium_robotics.mamujoco_v1` without the unrelated Farama notice it prints on stderr."""
    if "gymnasium_robotics" in sys.modules:
        from gymnasium_robotics import mamujoco_v1

        return mamujoco_v1
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            import gymnasium_robotics
            from gymnasium_robotics import mamujoco_v1
    finally:
        text = buf.getvalue()
        if text:
            with contextlib.suppress(Exception):
                from farama_notifications import notifications

                notice = notifications.get("gymnasium_robotics", {}).get(gymnasium_robotics.__version__)
                if notice:
                    text = text.replace(notice + "\n", "").replace(notice, "")
            if text.strip():
                sys.stderr.write(text)
    return mamujoco_v1


@contextlib.contextmanager
def _quiet_mujoco_model_warnings() -> Iterator[None]:
    """Drop MuJoCo's "'settotalmass' is deprecated" compiler warning (HalfCheetah and friends' XML).

    MuJoCo's C library prints it straight to stderr (and MUJOCO_LOG.TXT); while a model is compiled,
    a user warning handler is installed that discards that message and turns any other one into a
    Python warning.
    """
    try:
        import mujoco
    except ImportError:  # pragma: no cover - the caller imports it right after
        yield
        return

    def handler(msg: str) -> None:
        if "settotalmass" not in msg:
            warnings.warn(f"MuJoCo: {msg}", RuntimeWarning, stacklevel=2)

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class MaMuJoCoEnv(MultiAgentEnv):
    """A MaMuJoCo task as a `MultiAgentEnv` (continuous actions, shared team reward).

    Args:
        scenario: e.g. "HalfCheetah" (see `MAMUJOCO_PARTITIONS`).
        partition: e.g. "6x1", or None for a single agent controlling the whole robot.
        agent_obsk: how many joints away each agent observes (0 = only its own joints, plus globals);
            ignored when partition is None (the single agent sees the full observation).
        max_episode_steps: time limit; reaching it gives truncated=True.
        render_mode: passed to MuJoCo, e.g. "rgb_array".
    """

    def __init__(
        self,
        scenario: str,
        partition: str | None,
        agent_obsk: int = 0,
        max_episode_steps: int = 1000,
        render_mode: str | None = None,
    ) -> None:
        error = mamujoco_config_error(scenario, partition)
        if error is not None:
            raise ValueError(error)
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if agent_obsk < 0:
            raise ValueError(f"agent_obsk must be >= 0, got {agent_obsk}")
        self.scenario = scenario
        self.partition = partition
        self.agent_obsk = agent_obsk
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = render_mode

        mamujoco_v1 = _import_mamujoco()
        with _quiet_mujoco_model_warnings():
            env = mamujoco_v1.parallel_env(
                scenario,
                partition,
                agent_obsk=agent_obsk,
                render_mode=render_mode,
                max_episode_steps=self.max_episode_steps,  # forwarded to gymnasium.make
            )
        self._env = env
        self.agent_names: tuple[str, ...] = tuple(env.possible_agents)

        act_low, act_high, act_dims, obs_dims = [], [], [], []
        for name in self.agent_names:
            space = env.action_space(name)
            act_dims.append(int(space.shape[0]))
            act_low.append(np.asarray(space.low, dtype=np.float32).reshape(-1).copy())
            act_high.append(np.asarray(space.high, dtype=np.float32).reshape(-1).copy())
            obs_dims.append(int(env.observation_space(name).shape[0]))
        state_dim = int(np.asarray(env.state()).reshape(-1).shape[0])
        self.spec = EnvSpec(
            task=mamujoco_task_name(scenario, partition),
            n_agents=len(self.agent_names),
            obs_dims=tuple(obs_dims),
            state_dim=state_dim,
            act_dims=tuple(act_dims),
            discrete=False,
            episode_limit=self.max_episode_steps,
            act_low=tuple(act_low),
            act_high=tuple(act_high),
        )
        self._t = 0
        self._needs_reset = True
        self._closed = False

    # ------------------------------------------------------------------ helpers
    def _obs_list(self, obs: dict) -> list[np.ndarray]:
        if not all(name in obs and np.size(obs[name]) > 0 for name in self.agent_names):
            # Defensive: should the library ever return empty observations at the end of an
            # episode, rebuild them from the simulator state.
            obs = self._env.map_global_state_to_local_observations(self._env.state())
        return [np.asarray(obs[name], dtype=np.float32).reshape(-1) for name in self.agent_names]

    def _state(self) -> np.ndarray:
        return np.asarray(self._env.state(), dtype=np.float32).reshape(-1)

    # ------------------------------------------------------------------ API
    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray, None]:
        if self._closed:
            raise RuntimeError(f"{self.spec.task}: environment is closed")
        obs, _ = self._env.reset(seed=None if seed is None else int(seed))
        self._t = 0
        self._needs_reset = False
        return self._obs_list(obs), self._state(), None

    def step(self, actions: list[np.ndarray]) -> StepResult:
        if self._needs_reset:
            raise RuntimeError(f"{self.spec.task}: the episode has ended (or was never started); call reset() first")
        if len(actions) != self.spec.n_agents:
            raise ValueError(f"{self.spec.task}: expected {self.spec.n_agents} actions, got {len(actions)}")
        action_dict = {}
        for i, name in enumerate(self.agent_names):
            a = np.asarray(actions[i], dtype=np.float64).reshape(-1)
            if a.shape[0] != self.spec.act_dims[i]:
                raise ValueError(
                    f"{self.spec.task}: action of agent {i} has size {a.shape[0]}, expected {self.spec.act_dims[i]}"
                )
            action_dict[name] = np.clip(a, self.spec.act_low[i], self.spec.act_high[i])

        obs, rewards, terms, truncs, infos = self._env.step(action_dict)
        self._t += 1
        first = self.agent_names[0]
        terminated = any(bool(terms.get(name, False)) for name in self.agent_names)
        truncated = any(bool(truncs.get(name, False)) for name in self.agent_names)
        truncated = (truncated or self._t >= self.max_episode_steps) and not terminated
        if terminated or truncated:
            self._needs_reset = True
        info = dict(infos.get(first, {}))
        info["episode_step"] = self._t
        return StepResult(
            obs=self._obs_list(obs),
            state=self._state(),
            reward=float(rewards[first]),
            terminated=terminated,
            truncated=truncated,
            avail_actions=None,
            info=info,
        )

    def render(self):
        """The current frame (an HxWx3 uint8 array with render_mode="rgb_array"), or None."""
        if self.render_mode is None:
            return None
        if (
            self.render_mode != "human"
            and sys.platform.startswith("linux")
            and "MUJOCO_GL" not in os.environ
            and not os.environ.get("DISPLAY")
            and not os.environ.get("WAYLAND_DISPLAY")
        ):
            # Headless: gymnasium would try GLFW first and fail; use EGL for off-screen rendering.
            os.environ["MUJOCO_GL"] = "egl"
        return self._env.render()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._needs_reset = True
            self._env.close()
