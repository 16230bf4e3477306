"""Recurrent observation encoders of discrete tasks: Linear(obs + last action + agent id, h)-ReLU-GRU(h).

The representation z_i the linear team heads read is the GRU's hidden state. Its input at step t
is agent i's observation, its own action at t - 1 (one-hot, zeros at t = 0) and its one-hot id.
During learning the whole input sequence is known from the buffer, so one `nn.GRU` call unrolls
every episode of the batch; during rollouts `step` advances one time step.

`shared=True` (the official code) uses one encoder for every agent (the agent id tells them
apart); `shared=False` gives each agent its own encoder (the poster's drawing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Encoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
        """x `[B, T, in]`, h0 `[B, h]` or None -> hidden states `[B, T, h]`."""
        out, _ = self.gru(F.relu(self.fc(x)), None if h0 is None else h0[None].contiguous())
        return out


class RecurrentEncoders(nn.Module):
    # buffers (register_buffer), typed for the type checker
    agent_ids: torch.Tensor

    def __init__(self, n_agents: int, obs_dim: int, n_actions: int, hidden: int = 64, shared: bool = True):
        super().__init__()
        self.n_agents, self.obs_dim, self.n_actions, self.hidden, self.shared = (
            n_agents,
            obs_dim,
            n_actions,
            hidden,
            shared,
        )
        in_dim = obs_dim + n_actions + n_agents
        self.nets = nn.ModuleList([_Encoder(in_dim, hidden) for _ in range(1 if shared else n_agents)])
        self.register_buffer("agent_ids", torch.eye(n_agents))

    @property
    def embed_dim(self) -> int:
        return self.hidden

    def inputs(self, obs: torch.Tensor, last_actions: torch.Tensor) -> torch.Tensor:
        """obs `[..., N, O]`, last actions as one-hot `[..., N, A]` -> encoder input `[..., N, O + A + N]`."""
        ids = self.agent_ids.expand(*obs.shape[:-1], self.n_agents)
        return torch.cat([obs, last_actions, ids], dim=-1)

    def forward(self, obs: torch.Tensor, last_actions: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """Unroll over time: obs `[B, T, N, O]`, last actions one-hot `[B, T, N, A]`, h0 `[B, N, h]`
        (None = zeros) -> hidden states `[B, T, N, h]`."""
        x = self.inputs(obs, last_actions)
        b, t, n, _ = x.shape
        if self.shared:  # agents become extra batch rows of the one encoder
            flat = x.transpose(1, 2).reshape(b * n, t, -1)
            h = None if h0 is None else h0.reshape(b * n, -1)
            return self.nets[0](flat, h).view(b, n, t, -1).transpose(1, 2)
        outs = [net(x[:, :, i], None if h0 is None else h0[:, i]) for i, net in enumerate(self.nets)]
        return torch.stack(outs, dim=2)

    def step(self, obs: torch.Tensor, last_actions: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step for a batch of envs: obs `[B, N, O]`, last actions `[B, N, A]`, h `[B, N, h]` -> new h."""
        return self.forward(obs[:, None], last_actions[:, None], h)[:, 0]

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.n_agents, self.hidden)
