"""FACMAC's critic: per-agent utilities Q_i(o_i, u_i) mixed by a monotonic QMIX network on the state.

    Q_tot(s, u) = elu(q @ |W1(s)| + b1(s)) @ |w2(s)| + V(s)

with W1, b1, w2, V produced by hypernetworks of the state, so dQ_tot/dQ_i >= 0. For the PeVFA, an
extra conditioning vector (the team's policy embedding) is appended to every agent critic's input
and to the mixer's state input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from racemarl.precision import full_precision


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class QMixer(nn.Module):
    """Monotonic mixing of N agent values conditioned on the state (and an optional extra vector)."""

    def __init__(self, n_agents: int, state_dim: int, embed: int = 32, hypernet_hidden: int = 64, extra_dim: int = 0):
        super().__init__()
        self.n_agents, self.embed = n_agents, embed
        cond = state_dim + extra_dim
        self.hyper_w1 = _mlp([cond, hypernet_hidden, n_agents * embed])
        self.hyper_b1 = nn.Linear(cond, embed)
        self.hyper_w2 = _mlp([cond, hypernet_hidden, embed])
        self.hyper_v = _mlp([cond, embed, 1])

    def forward(self, q: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """q `[..., N]`, cond (state, or state + extra) `[..., C]` -> Q_tot `[...]`."""
        w1 = self.hyper_w1(cond).abs().view(*q.shape[:-1], self.n_agents, self.embed)
        hidden = F.elu((q.unsqueeze(-2) @ w1).squeeze(-2) + self.hyper_b1(cond))
        w2 = self.hyper_w2(cond).abs()
        return (hidden * w2).sum(-1) + self.hyper_v(cond).squeeze(-1)


class MixedCritic(nn.Module):
    """Q_tot(s, o, u[, e]): a per-agent critic MLP on (o_i, u_i, one-hot id[, e]) shared by all agents,
    mixed by `QMixer` on (s[, e]).

    Inputs have any leading shape: obs `[..., N, O]`, actions `[..., N, A]` (one-hot for discrete
    tasks, padded values for continuous ones), state `[..., S]`, extra `[..., E]`. Output `[...]`.
    """

    # buffers (register_buffer), typed for the type checker
    agent_ids: torch.Tensor

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        act_dim: int,
        state_dim: int,
        hidden: Sequence[int],
        mixer_embed: int = 32,
        hypernet_hidden: int = 64,
        extra_dim: int = 0,
    ):
        super().__init__()
        self.n_agents, self.extra_dim = n_agents, extra_dim
        self.agent_q = _mlp([obs_dim + act_dim + n_agents + extra_dim, *hidden, 1])
        self.mixer = QMixer(n_agents, state_dim, mixer_embed, hypernet_hidden, extra_dim)
        self.register_buffer("agent_ids", torch.eye(n_agents))

    def agent_values(self, obs: torch.Tensor, actions: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        parts = [obs, actions, self.agent_ids.expand(*obs.shape[:-1], self.n_agents)]
        if extra is not None:
            parts.append(extra.unsqueeze(-2).expand(*obs.shape[:-1], extra.shape[-1]))
        hidden = self.agent_q[:-1](torch.cat(parts, dim=-1))
        with full_precision(hidden.device.type):  # the values enter the losses: float32 (racemarl.precision)
            return self.agent_q[-1](hidden.float()).squeeze(-1)

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, state: torch.Tensor, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self.agent_values(obs, actions, extra)
        cond = state if extra is None else torch.cat([state, extra], dim=-1)
        with full_precision(q.device.type):  # the mixer (small hypernetworks) and Q_tot in float32
            return self.mixer(q, cond.float())
