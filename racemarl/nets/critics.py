"""Centralised critics: the MARL twin critic Q_psi(s, u) and the PeVFA Q_theta(s, u, W_j)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from racemarl.nets.layers import GroupedLinear, GroupedMLP


class TwinCritic(nn.Module):
    """Two independent MLPs on (s, u[, e]) evaluated as one grouped product."""

    def __init__(
        self, state_dim: int, joint_act_dim: int, hidden: Sequence[int], extra_dim: int = 0, layer_norm: bool = False
    ):
        super().__init__()
        self.in_dim = state_dim + joint_act_dim
        self.net = GroupedMLP(
            self.in_dim + extra_dim, hidden, 1, groups=2, layer_norm=layer_norm, full_precision_out=True
        )

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """state `[B, S]`, action `[B, U]` -> `[2, B]`."""
        return self.net(torch.cat([state, action], dim=-1)).squeeze(-1)

    def first(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q_1 alone: `forward(state, action)[0]`, `[B]`, at half the work (the actor loss reads only Q_1)."""
        return self.net.forward_first(torch.cat([state, action], dim=-1))[0, :, 0]

    def forward_conditioned(
        self, state: torch.Tensor, action: torch.Tensor, extra: torch.Tensor, first_only: bool = False
    ) -> torch.Tensor:
        """K groups of samples, each conditioned on one extra vector: state `[K, B, S]`, action `[K, B, U]`,
        extra `[K, E]` (both twins read the same vector) or `[2, K, E]` (one per twin) -> `[2, K, B]`. The extra
        input's share of the first layer is computed once per group instead of once per sample (same result as
        concatenating it to every sample). `first_only`: Q_1 alone, `[K, B]` (equals `[0]` of the full output)."""
        k, b = state.shape[:2]
        g = 1 if first_only else 2
        extra = extra[:g] if extra.dim() == 3 else extra.expand(g, *extra.shape)
        first = cast(GroupedLinear, self.net.net[0])
        weight, bias = (first.weight[:1], first.bias[:1]) if first_only else (first.weight, first.bias)
        # one split (its backward is one concatenation) instead of two slices (two zero-filled full-size grads)
        w_x, w_extra = weight.split([self.in_dim, weight.shape[1] - self.in_dim], dim=1)
        x = torch.cat([state, action], dim=-1).reshape(k * b, -1)
        h = torch.baddbmm(bias, x.expand(g, *x.shape), w_x)
        # per-group extra term [g, K, H]: a batched product reading the weight in place (einsum copied it)
        h = h.view(g, k, b, -1) + torch.matmul(extra, w_extra)[:, :, None]
        h = h.view(g, k * b, -1)
        if first_only:
            return self.net.forward_first(h, start=1).view(k, b)
        return self.net.net[1:](h).view(2, k, b)


class PolicyEmbedding(nn.Module):
    """Embeds a team's linear heads: each head row [w, b] -> MLP (per agent) -> mean over the agent's
    real rows -> e^i; the team embedding is the concatenation of the agents' e^i (`combine="concat"`,
    continuous tasks) or their sum (`combine="sum"`, discrete tasks, as in the official code).

    Input `[K, N, A, d+1]`, output `[K, N * width]` (concat) or `[K, width]` (sum). Callers pass
    detached heads: the PeVFA must not push gradient into the policies it evaluates.
    """

    # buffers (register_buffer), typed for the type checker
    row_weight: torch.Tensor

    def __init__(self, n_agents: int, row_dim: int, row_mask: torch.Tensor, width: int = 64, combine: str = "concat"):
        super().__init__()
        if combine not in ("concat", "sum"):
            raise ValueError(f"combine must be 'concat' or 'sum', got {combine!r}")
        self.combine = combine
        self.net = GroupedMLP(row_dim, [width, width], width, groups=n_agents, activation=nn.LeakyReLU)
        mask = row_mask.float()
        self.register_buffer("row_weight", (mask / mask.sum(1, keepdim=True))[:, None, :, None])  # [N,1,A,1]
        self.out_dim = n_agents * width if combine == "concat" else width

    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        k, n, a, r = heads.shape
        rows = heads.transpose(0, 1).reshape(n, k * a, r)
        emb = self.net(rows).view(n, k, a, -1)
        per_agent = (emb * self.row_weight).sum(2)  # [N, K, width], mean over real rows
        if self.combine == "sum":
            return per_agent.sum(0)
        return per_agent.transpose(0, 1).reshape(k, -1)


class PeVFA(nn.Module):
    """Policy-extended twin critic Q_theta(s, u, W_j). `twin_embeddings`: each twin embeds the heads with its own
    `PolicyEmbedding` (ERL-Re2); else both twins read one embedding."""

    def __init__(
        self,
        state_dim: int,
        joint_act_dim: int,
        hidden: Sequence[int],
        n_agents: int,
        row_dim: int,
        row_mask: torch.Tensor,
        embed_width: int = 64,
        layer_norm: bool = False,
        twin_embeddings: bool = False,
    ):
        super().__init__()
        self.embedding = PolicyEmbedding(n_agents, row_dim, row_mask, embed_width)
        self.embedding_2 = PolicyEmbedding(n_agents, row_dim, row_mask, embed_width) if twin_embeddings else None
        self.critic = TwinCritic(state_dim, joint_act_dim, hidden, self.embedding.out_dim, layer_norm)

    def forward(
        self, state: torch.Tensor, action: torch.Tensor, heads: torch.Tensor, first_only: bool = False
    ) -> torch.Tensor:
        """state `[K, B, S]`, action `[K, B, U]`, heads `[K, N, A, d+1]` -> `[2, K, B]` (`[K, B]`, Q_1 alone,
        with `first_only`)."""
        heads = heads.detach()
        extra = self.embedding(heads)
        if self.embedding_2 is not None and not first_only:
            extra = torch.stack([extra, self.embedding_2(heads)])  # [2, K, E]: one embedding per twin
        return self.critic.forward_conditioned(state, action, extra, first_only)


class StateValue(nn.Module):
    """V_zeta(s), the value that weights VMM samples."""

    def __init__(self, state_dim: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.net = GroupedMLP(state_dim, hidden, 1, groups=1, full_precision_out=True)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)[0].squeeze(-1)
