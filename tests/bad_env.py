"""Environments with the faults of users' own code, for tests/test_edges.py: `make_env(fault=...)` is
tests/user_env.py's LineWalk (continuous) with one fault from episode step `at_step` on, in the episodes after the
first `from_episode` resets of the env instance (the construction's own probe reset counts).

- "step_raises": step() raises ZeroDivisionError.
- "bad_obs": the runner's observation has 4 numbers, its space declares 3.
- "nan_reward" / "inf_obs": a NaN team reward / an infinite observation.
- "stranger": an agent outside possible_agents appears.
- "remove_on_fall": like multiwalker_v9 with remove_on_fall=True: the scout "falls" at `at_step`; it is
  terminated and removed from `agents`, and state() fails for a world without it; with `end_on_fall` (multiwalker's
  terminate_on_fall) the episode ends there for everyone, else the runner plays on.
- no fault, `delay` seconds per step: a slow simulator.
"""

from __future__ import annotations

import time

import numpy as np
from user_env import LineWalk  # a sibling file: racemarl puts the env file's folder on sys.path


class Faulty(LineWalk):
    def __init__(
        self,
        fault: str = "",
        at_step: int = 3,
        with_state: bool = False,
        end_on_fall: bool = False,
        from_episode: int = 0,
        delay: float = 0.0,
        **kwargs,
    ):
        super().__init__(continuous=True, scout_steps=10_000, **kwargs)
        self.fault, self.at_step, self.with_state, self.end_on_fall = fault, at_step, with_state, end_on_fall
        self.from_episode, self.episodes, self.delay = from_episode, 0, delay
        self.fallen = False

    def reset(self, seed=None, options=None):
        self.fallen = False
        self.episodes += 1
        return super().reset(seed, options)

    def state(self):
        if not self.with_state and self.fault != "remove_on_fall":
            raise NotImplementedError
        if self.fallen:
            raise AttributeError("'NoneType' object has no attribute 'position'")  # the destroyed walker's body
        return np.array([self.pos["scout"], self.pos["runner"], self.goal], np.float32)

    def step(self, actions):
        if self.delay:
            time.sleep(self.delay)  # a slow simulator (tests/test_slurm.py stops a run in the middle)
        due = self.t + 1 >= self.at_step and self.episodes > self.from_episode
        if due and self.fault == "step_raises":
            raise ZeroDivisionError("division by zero in the user's reward")
        obs, rewards, terms, truncs, infos = super().step(actions)
        if not due:
            return obs, rewards, terms, truncs, infos
        if self.fault == "bad_obs" and "runner" in obs:
            obs["runner"] = np.zeros(4, np.float32)
        elif self.fault == "nan_reward":
            rewards = {a: float("nan") for a in rewards}
        elif self.fault == "inf_obs" and "runner" in obs:
            obs["runner"] = np.array([np.inf, 0, 0], np.float32)
        elif self.fault == "stranger":
            obs["ghost"] = np.zeros(3, np.float32)
            rewards["ghost"] = 0.0
        elif self.fault == "remove_on_fall" and not self.fallen and "scout" in self.agents:
            self.fallen = True
            terms["scout"] = True
            if self.end_on_fall:
                terms = {a: True for a in terms}
            self.agents = [a for a in self.agents if not terms[a]]
        return obs, rewards, terms, truncs, infos


def make_env(**kwargs) -> Faulty:
    return Faulty(**kwargs)
