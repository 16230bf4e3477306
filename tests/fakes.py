"""Test doubles. Nothing here simulates a real task: they only mimic an API."""

from __future__ import annotations

import numpy as np


class FakeStarCraft2Env:
    """A FAKE of SMAC's `smac.env.StarCraft2Env` (no StarCraft II): same methods and step/reset
    semantics, a toy battle underneath.

    Mimicked from SMAC: `get_env_info()` keys; actions 0 no-op (dead agents only), 1 stop, 2-5 move
    N/S/E/W, 6+j attack enemy j (alive and within range); `step` asserts that actions are available,
    returns `(reward, terminated, info)` with `info["battle_won"]`, checks the battle's end before
    the time limit, and sets `info["episode_limit"] = True` on the time limit only when built with
    `continuing_episode=True`; the RNG is seeded once, when the "game" launches at the first
    `reset()`; the reward is damage + 10 per kill + 200 for a win, scaled to a max return of 20.

    Toy battle: units on a line, allies start at 0 and enemies at `enemy_x` (stationary); an ally
    attack deals 1 damage; each living enemy hits a random living ally for 1 with probability
    `enemy_hit_prob`.
    """

    n_actions_no_attack = 6

    def __init__(
        self,
        map_name: str = "fake3m",
        seed: int | None = None,
        continuing_episode: bool = False,
        n_agents: int = 3,
        n_enemies: int = 3,
        episode_limit: int = 20,
        ally_health: int = 100,
        enemy_health: int = 3,
        enemy_hit_prob: float = 0.3,
        enemy_x: float = 3.0,
        shoot_range: float = 6.0,
        **other_smac_kwargs,  # accepted and recorded, like the real env's many options
    ) -> None:
        self.other_smac_kwargs = other_smac_kwargs
        self.map_name = map_name
        self._seed = seed
        self.continuing_episode = continuing_episode
        self.n_agents = n_agents
        self.n_enemies = n_enemies
        self.episode_limit = episode_limit
        self.ally_health_max = ally_health
        self.enemy_health_max = enemy_health
        self.enemy_hit_prob = enemy_hit_prob
        self.enemy_x = enemy_x
        self.shoot_range = shoot_range
        self.n_actions = self.n_actions_no_attack + n_enemies
        self.max_reward = n_enemies * 10 + 200 + n_enemies * enemy_health
        self.n_launches = 0
        self.n_closes = 0
        self._rng: np.random.RandomState | None = None
        self._episode_steps = 0

    # -- SMAC API
    def get_env_info(self) -> dict:
        return {
            "state_shape": self.get_state_size(),
            "obs_shape": self.get_obs_size(),
            "n_actions": self.n_actions,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
        }

    def get_obs_size(self) -> int:
        return 3 + 2 * self.n_enemies

    def get_state_size(self) -> int:
        return 2 * self.n_agents + self.n_enemies

    def reset(self):
        if self._rng is None:  # the game "launches" here, seeded once
            self.n_launches += 1
            self._rng = np.random.RandomState(self._seed)
        self._episode_steps = 0
        self.ally_hp = np.full(self.n_agents, float(self.ally_health_max))
        self.ally_pos = self._rng.uniform(-0.5, 0.5, (self.n_agents, 2))
        self.enemy_hp = np.full(self.n_enemies, float(self.enemy_health_max))
        self.enemy_pos = np.column_stack(
            [np.full(self.n_enemies, self.enemy_x), self._rng.uniform(-1, 1, self.n_enemies)]
        )
        return self.get_obs(), self.get_state()

    def _in_range(self, i: int, j: int) -> bool:
        return bool(np.linalg.norm(self.ally_pos[i] - self.enemy_pos[j]) <= self.shoot_range)

    def get_avail_agent_actions(self, i: int) -> list[int]:
        avail = [0] * self.n_actions
        if self.ally_hp[i] <= 0:
            avail[0] = 1
            return avail
        avail[1:6] = [1] * 5
        for j in range(self.n_enemies):
            if self.enemy_hp[j] > 0 and self._in_range(i, j):
                avail[self.n_actions_no_attack + j] = 1
        return avail

    def get_avail_actions(self) -> list[list[int]]:
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def get_obs_agent(self, i: int) -> np.ndarray:
        own = [self.ally_hp[i] / self.ally_health_max, *self.ally_pos[i]]
        rel = (self.enemy_pos - self.ally_pos[i]) / 10.0 * (self.ally_hp[i] > 0)
        return np.concatenate([own, self.enemy_hp / self.enemy_health_max, rel[:, 0]]).astype(np.float32)

    def get_obs(self) -> list[np.ndarray]:
        return [self.get_obs_agent(i) for i in range(self.n_agents)]

    def get_state(self) -> np.ndarray:
        return np.concatenate(
            [self.ally_hp / self.ally_health_max, self.ally_pos[:, 0], self.enemy_hp / self.enemy_health_max]
        ).astype(np.float32)

    def step(self, actions):
        actions = [int(a) for a in actions]
        damage = np.zeros(self.n_enemies)
        moves = {2: (0, 1), 3: (0, -1), 4: (1, 0), 5: (-1, 0)}
        for i, a in enumerate(actions):
            assert self.get_avail_agent_actions(i)[a] == 1, f"Agent {i} cannot perform action {a}"
            if a in moves:
                self.ally_pos[i] += moves[a]
            elif a >= self.n_actions_no_attack:
                damage[a - self.n_actions_no_attack] += 1
        before = self.enemy_hp.copy()
        self.enemy_hp = np.maximum(self.enemy_hp - damage, 0)
        reward = float(np.sum(before - self.enemy_hp)) + 10.0 * int(np.sum((before > 0) & (self.enemy_hp <= 0)))
        for _ in range(int(np.sum(self.enemy_hp > 0))):
            alive = np.flatnonzero(self.ally_hp > 0)
            if alive.size and self._rng.rand() < self.enemy_hit_prob:
                self.ally_hp[self._rng.choice(alive)] -= 1
        self.ally_hp = np.maximum(self.ally_hp, 0)
        self._episode_steps += 1

        terminated = False
        info = {"battle_won": False}
        if not np.any(self.enemy_hp > 0) and np.any(self.ally_hp > 0):
            terminated = True
            info["battle_won"] = True
            reward += 200
        elif not np.any(self.ally_hp > 0):
            terminated = True
        elif self._episode_steps >= self.episode_limit:
            terminated = True
            if self.continuing_episode:
                info["episode_limit"] = True
        if terminated:
            info["dead_allies"] = int(np.sum(self.ally_hp <= 0))
            info["dead_enemies"] = int(np.sum(self.enemy_hp <= 0))
        return reward / (self.max_reward / 20), terminated, info

    def close(self) -> None:
        self.n_closes += 1


def focus_fire_actions(avail: list[np.ndarray]) -> list[int]:
    """Every living agent attacks the lowest-numbered attackable enemy, else stops (no-op if dead)."""
    out = []
    for m in avail:
        attack = np.flatnonzero(np.asarray(m)[6:])
        out.append(6 + int(attack[0]) if attack.size else (1 if m[1] else 0))
    return out
