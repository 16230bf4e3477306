"""The shared replay buffer every team writes into (a ring buffer of torch tensors on the training device)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from racemarl.device import to_device


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

    def __init__(
        self,
        capacity: int,
        n_agents: int,
        max_obs: int,
        state_dim: int,
        joint_act_dim: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.capacity = capacity
        self.device = torch.device(device)
        shapes = {
            "obs": (n_agents, max_obs),
            "state": (state_dim,),
            "action": (joint_act_dim,),
            "reward": (),
            "next_obs": (n_agents, max_obs),
            "next_state": (state_dim,),
            "terminated": (),
        }
        # All fields side by side in one [capacity, width] table, so a sample is a single row gather;
        # `data[name]` are views of it with the field's own shape.
        self.shapes = shapes
        self.columns: dict[str, slice] = {}
        width = 0
        for name in self.FIELDS:
            n = math.prod(shapes[name])
            self.columns[name] = slice(width, width + n)
            width += n
        self.table = torch.zeros(capacity, width, device=self.device)
        self.data = {name: self._field(self.table, name) for name in self.FIELDS}
        self.size = 0
        self.pos = 0
        self.generator = torch.Generator().manual_seed(seed)

    def _field(self, rows: torch.Tensor, name: str) -> torch.Tensor:
        """The view of field `name` in a block of table rows `[k, width]` -> `[k, *shape]`."""
        return rows[:, self.columns[name]].view(rows.shape[0], *self.shapes[name])

    def __len__(self) -> int:
        return self.size

    def add(self, **rows: np.ndarray) -> None:
        """Append a block of transitions; each field is an array with a leading batch dimension."""
        n = len(rows["reward"])
        idx = (self.pos + np.arange(n)) % self.capacity
        idx_t = torch.from_numpy(idx).to(self.device)
        for name in self.FIELDS:
            self.data[name][idx_t] = torch.as_tensor(rows[name], dtype=torch.float32).to(self.device)
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        """Indices from the CPU generator (the same draws on every device), sent to the device without a host
        wait; one gather there."""
        idx = to_device(torch.randint(0, self.size, (batch_size,), generator=self.generator), self.device)
        block = self.table[idx]  # one gather of every field; the batch's tensors are views of it
        f = {name: self._field(block, name) for name in self.FIELDS}
        return Batch(
            obs=f["obs"].transpose(0, 1),
            state=f["state"],
            action=f["action"],
            reward=f["reward"],
            next_obs=f["next_obs"].transpose(0, 1),
            next_state=f["next_state"],
            terminated=f["terminated"],
        )

    def state_dict(self) -> dict:
        filled = {k: v[: self.size].clone() for k, v in self.data.items()}
        return {"data": filled, "size": self.size, "pos": self.pos, "rng": self.generator.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        size = int(sd["size"])
        if size > self.capacity:
            raise ValueError(f"checkpoint buffer holds {size} transitions, capacity is {self.capacity}")
        for k, v in sd["data"].items():
            self.data[k][:size] = v.to(self.device)
        self.size, self.pos = size, int(sd["pos"])
        self.generator.set_state(sd["rng"])
