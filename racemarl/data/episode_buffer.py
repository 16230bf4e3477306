"""The shared episode replay buffer of discrete tasks (whole episodes, padded to the time limit).

Episode e of length L stores L + 1 observations, states and action masks (the last one is where the
episode ended, used to bootstrap truncated episodes) and L actions, rewards and termination flags.
A sampled batch is cut to the longest episode in it; `mask[b, t]` marks real steps. Each episode is tagged with
whether the MARL team played it, so that a batch can be drawn from those alone (`sample(n, marl_only=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from racemarl.device import to_device


@dataclass
class EpisodeBatch:
    obs: torch.Tensor  # [B, T+1, N, O]
    state: torch.Tensor  # [B, T+1, S]
    avail: torch.Tensor  # [B, T+1, N, A] 1.0 = available
    actions: torch.Tensor  # [B, T, N] int64
    reward: torch.Tensor  # [B, T]
    terminated: torch.Tensor  # [B, T] 1.0 on the step the episode terminated (no bootstrap)
    mask: torch.Tensor  # [B, T] 1.0 on real steps
    real: torch.Tensor | None = None  # flat indices (into [B * T]) of the real steps, ascending; None = from mask

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None]


class EpisodeBuffer:
    FIELDS = ("obs", "state", "avail", "actions", "reward", "terminated")

    def __init__(
        self,
        capacity: int,
        episode_limit: int,
        n_agents: int,
        obs_dim: int,
        state_dim: int,
        n_actions: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.capacity, self.limit = capacity, episode_limit
        self.device = torch.device(device)
        t = episode_limit
        dev: dict[str, Any] = {"device": self.device}
        self.data = {  # on the training device; the sampling indices and lengths stay on the host
            "obs": torch.zeros(capacity, t + 1, n_agents, obs_dim, **dev),
            "state": torch.zeros(capacity, t + 1, state_dim, **dev),
            "avail": torch.zeros(capacity, t + 1, n_agents, n_actions, dtype=torch.bool, **dev),
            "actions": torch.zeros(capacity, t, n_agents, dtype=torch.int64, **dev),
            "reward": torch.zeros(capacity, t, **dev),
            "terminated": torch.zeros(capacity, t, **dev),
        }
        self.lengths = torch.zeros(capacity, dtype=torch.int64)  # host: a batch's time extent without a device read
        self.marl = torch.zeros(capacity, dtype=torch.bool)  # host: the MARL team played this episode
        self.size = 0
        self.pos = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, episode: dict[str, np.ndarray], marl: bool = False) -> None:
        """Store one episode: obs/state/avail with L + 1 rows, actions/reward/terminated with L rows; `marl`: the
        MARL team played it."""
        length = len(episode["reward"])
        if not 1 <= length <= self.limit:
            raise ValueError(f"episode length {length} outside [1, {self.limit}]")
        e = self.pos
        for name in self.FIELDS:
            target = self.data[name][e]
            target.zero_()
            value = torch.as_tensor(episode[name])
            target[: value.shape[0]] = value.to(self.device, target.dtype)
        self.lengths[e] = length
        self.marl[e] = marl
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_episodes: int, marl_only: bool = False) -> EpisodeBatch:
        """`batch_episodes` stored episodes drawn uniformly with replacement; `marl_only`: from the episodes the
        MARL team played (ValueError when there is none)."""
        if not marl_only:
            return self.batch(torch.randint(0, self.size, (batch_episodes,), generator=self.generator))
        own = self.marl[: self.size].nonzero().squeeze(1)
        if not len(own):
            raise ValueError("the buffer holds no episode of the MARL team")
        return self.batch(own[torch.randint(0, len(own), (batch_episodes,), generator=self.generator)])

    def marl_episodes(self) -> int:
        """Stored episodes the MARL team played."""
        return int(self.marl[: self.size].sum())

    def batch(self, idx: torch.Tensor) -> EpisodeBatch:
        """The stored episodes `idx` (a CPU index tensor) as one batch, cut to the longest of them. Lengths, the mask
        and the real steps' indices are made on the host and sent to the device; the episodes are gathered there."""
        lengths = self.lengths[idx]
        t = int(lengths.max())
        mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
        real = mask.flatten().nonzero().squeeze(1)
        d, dev = self.data, self.device
        idx, mask, real = to_device(idx, dev), to_device(mask, dev), to_device(real, dev)
        return EpisodeBatch(
            obs=d["obs"][idx, : t + 1],
            state=d["state"][idx, : t + 1],
            avail=d["avail"][idx, : t + 1].float(),
            actions=d["actions"][idx, :t],
            reward=d["reward"][idx, :t],
            terminated=d["terminated"][idx, :t],
            mask=mask,
            real=real,
        )

    def state_dict(self) -> dict:
        return {
            "data": {k: v[: self.size].clone() for k, v in self.data.items()},
            "lengths": self.lengths[: self.size].clone(),
            "marl": self.marl[: self.size].clone(),
            "size": self.size,
            "pos": self.pos,
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, sd: dict) -> None:
        size = int(sd["size"])
        if size > self.capacity:
            raise ValueError(f"checkpoint buffer holds {size} episodes, capacity is {self.capacity}")
        for k, v in sd["data"].items():
            self.data[k][:size] = v.to(self.device)
        self.lengths[:size] = sd["lengths"]
        self.marl[:size] = sd.get("marl", torch.zeros(size, dtype=torch.bool))  # none before the tags existed
        self.size, self.pos = size, int(sd["pos"])
        self.generator.set_state(sd["rng"])
