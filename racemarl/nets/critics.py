"""Centralised critics: the MARL twin critic Q_psi(s, u) and the PeVFA Q_theta(s, u, W_j)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from racemarl.nets.layers import GroupedMLP


class TwinCritic(nn.Module):
    """Two independent MLPs on (s, u[, e]) evaluated as one grouped product. Returns `[2, B]`."""

    def __init__(self, state_dim: int, joint_act_dim: int, hidden: Sequence[int], extra_dim: int = 0):
        super().__init__()
        self.net = GroupedMLP(state_dim + joint_act_dim + extra_dim, hidden, 1, groups=2)

    def forward(self, state: torch.Tensor, action: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        parts = [state, action] if extra is None else [state, action, extra]
        return self.net(torch.cat(parts, dim=-1)).squeeze(-1)


class PolicyEmbedding(nn.Module):
    """Embeds a team's linear heads: each head row [w, b] -> MLP (per agent) -> mean over the agent's
    real rows -> e^i; the team embedding is the concatenation of the agents' e^i.

    Input `[K, N, A, d+1]`, output `[K, N * width]`. Callers pass detached heads: the PeVFA must not
    push gradient into the policies it evaluates.
    """

    def __init__(self, n_agents: int, row_dim: int, row_mask: torch.Tensor, width: int = 64):
        super().__init__()
        self.net = GroupedMLP(row_dim, [width, width], width, groups=n_agents, activation=nn.LeakyReLU)
        mask = row_mask.float()
        self.register_buffer("row_weight", (mask / mask.sum(1, keepdim=True))[:, None, :, None])  # [N,1,A,1]
        self.out_dim = n_agents * width

    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        k, n, a, r = heads.shape
        rows = heads.transpose(0, 1).reshape(n, k * a, r)
        emb = self.net(rows).view(n, k, a, -1)
        per_agent = (emb * self.row_weight).sum(2)  # [N, K, width], mean over real rows
        return per_agent.transpose(0, 1).reshape(k, -1)


class PeVFA(nn.Module):
    """Policy-extended twin critic Q_theta(s, u, W_j)."""

    def __init__(self, state_dim: int, joint_act_dim: int, hidden: Sequence[int], n_agents: int,
                 row_dim: int, row_mask: torch.Tensor, embed_width: int = 64):
        super().__init__()
        self.embedding = PolicyEmbedding(n_agents, row_dim, row_mask, embed_width)
        self.critic = TwinCritic(state_dim, joint_act_dim, hidden, self.embedding.out_dim)

    def forward(self, state: torch.Tensor, action: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """state `[K, B, S]`, action `[K, B, U]`, heads `[K, N, A, d+1]` -> `[2, K, B]`."""
        k, b = state.shape[:2]
        e = self.embedding(heads.detach())[:, None, :].expand(k, b, -1)
        q = self.critic(state.reshape(k * b, -1), action.reshape(k * b, -1), e.reshape(k * b, -1))
        return q.view(2, k, b)


class StateValue(nn.Module):
    """V_zeta(s), the value that weights VMM samples."""

    def __init__(self, state_dim: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.net = GroupedMLP(state_dim, hidden, 1, groups=1)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)[0].squeeze(-1)
