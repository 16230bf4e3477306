"""A small cooperative PettingZoo ParallelEnv written in a user's own script (no package), for the tests.

Two agents of different kinds walk on a line towards a goal. The "scout" sees its position and the
goal's (2 numbers), the "runner" also sees the scout's position (3 numbers). Every step both receive
the same team reward: minus the runner's distance to the goal. The episode terminates when the
runner reaches the goal; the scout alone is done earlier (it is "tired" after `scout_steps` steps).

Discrete actions (0 left, 1 stay, 2 right) with action masks in the observation (PettingZoo's
{"observation", "action_mask"} convention; moving off the line is masked), or continuous velocities
in [-1, 1] with `continuous=True`. No `state()`: racemarl concatenates the observations.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

SIZE = 5


class LineWalk(ParallelEnv):
    metadata = {"name": "line_walk_v0"}

    def __init__(self, continuous: bool = False, scout_steps: int = 3, max_cycles: int = 12):
        self.continuous = continuous
        self.scout_steps = scout_steps
        self.max_cycles = max_cycles
        self.possible_agents = ["scout", "runner"]
        self.agents = []
        self._rng = np.random.default_rng()

    def observation_space(self, agent):
        size = 2 if agent == "scout" else 3
        box = spaces.Box(-SIZE, SIZE, (size,), np.float32)
        if self.continuous:
            return box
        return spaces.Dict({"observation": box, "action_mask": spaces.MultiBinary(3)})

    def action_space(self, agent):
        return spaces.Box(-1.0, 1.0, (1,), np.float32) if self.continuous else spaces.Discrete(3)

    def _obs(self):
        out = {}
        for agent in self.agents:
            me = self.pos[agent]
            vec = [me, self.goal] if agent == "scout" else [me, self.goal, self.pos["scout"]]
            o = np.array(vec, np.float32)
            if not self.continuous:
                mask = np.array([me > -SIZE + 1, 1, me < SIZE - 1], np.int8)
                o = {"observation": o, "action_mask": mask}
            out[agent] = o
        return out

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.pos = {a: float(self._rng.integers(-2, 3)) for a in self.agents}
        self.goal = float(self._rng.choice([-3, 3]))
        self.t = 0
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        for agent, a in actions.items():
            move = float(np.clip(a, -1, 1)[0]) if self.continuous else float(int(a) - 1)
            self.pos[agent] = float(np.clip(self.pos[agent] + move, -SIZE + 1, SIZE - 1))
        self.t += 1
        reward = -abs(self.pos["runner"] - self.goal)
        done = abs(self.pos["runner"] - self.goal) < 0.5
        timeout = self.t >= self.max_cycles
        rewards = {a: reward for a in self.agents}
        terms = {a: done or (a == "scout" and self.t >= self.scout_steps) for a in self.agents}
        truncs = {a: timeout for a in self.agents}
        obs, infos = self._obs(), {a: {} for a in self.agents}
        self.agents = [a for a in self.agents if not (terms[a] or truncs[a])]
        return obs, rewards, terms, truncs, infos


def make_env(**kwargs) -> LineWalk:
    return LineWalk(**kwargs)


def not_an_env(**kwargs):
    return {"agents": ["a"]}
