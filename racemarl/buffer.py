"""The shared replay buffer every team writes into (a ring buffer of torch tensors on the CPU)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    obs: torch.Tensor  # [N, B, max_obs]
    state: torch.Tensor  # [B, S]
    action: torch.Tensor  # [B, U] flat joint action
    reward: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [N, B, max_obs]
    next_state: torch.Tensor  # [B, S]
    terminated: torch.Tensor  # [B] 1.0 where the episode ended by termination (no bootstrap)


class ReplayBuffer:
    FIELDS = ("obs", "state", "action", "reward", "next_obs", "next_state", "terminated")

    def __init__(self, capacity: int, n_agents: int, max_obs: int, state_dim: int, joint_act_dim: int, seed: int = 0):
        self.capacity = capacity
        self.data = {
            "obs": torch.zeros(capacity, n_agents, max_obs),
            "state": torch.zeros(capacity, state_dim),
            "action": torch.zeros(capacity, joint_act_dim),
            "reward": torch.zeros(capacity),
            "next_obs": torch.zeros(capacity, n_agents, max_obs),
            "next_state": torch.zeros(capacity, state_dim),
            "terminated": torch.zeros(capacity),
        }
        self.size = 0
        self.pos = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, **rows: np.ndarray) -> None:
        """Append a block of transitions; each field is an array with a leading batch dimension."""
        n = len(rows["reward"])
        idx = (self.pos + np.arange(n)) % self.capacity
        idx_t = torch.from_numpy(idx)
        for name in self.FIELDS:
            self.data[name][idx_t] = torch.as_tensor(rows[name], dtype=torch.float32)
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        idx = torch.randint(0, self.size, (batch_size,), generator=self.generator)
        d = self.data
        return Batch(
            obs=d["obs"][idx].transpose(0, 1),
            state=d["state"][idx],
            action=d["action"][idx],
            reward=d["reward"][idx],
            next_obs=d["next_obs"][idx].transpose(0, 1),
            next_state=d["next_state"][idx],
            terminated=d["terminated"][idx],
        )

    def state_dict(self) -> dict:
        filled = {k: v[: self.size].clone() for k, v in self.data.items()}
        return {"data": filled, "size": self.size, "pos": self.pos, "rng": self.generator.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        size = int(sd["size"])
        if size > self.capacity:
            raise ValueError(f"checkpoint buffer holds {size} transitions, capacity is {self.capacity}")
        for k, v in sd["data"].items():
            self.data[k][:size] = v
        self.size, self.pos = size, int(sd["pos"])
        self.generator.set_state(sd["rng"])
