"""Actors of every team: shared per-agent encoders Z_phi_i and linear team heads W^i_j.

A team's head for agent i is stored as a `[A, d + 1]` matrix (rows = action dimensions, last column
= bias), padded to the widest agent's A. A set of teams is a tensor `[T, N, A, d + 1]`, so all
teams act in one batched product on one encoder pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from racemarl.envs.base import EnvSpec
from racemarl.nets.layers import GroupedLayerNorm, GroupedLinear


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, with tanh's own backward (1 - y^2) on the result."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.mul(x, 2).sigmoid_().mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def cpu_fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh for the encoders on the CPU, about 5x faster than `torch.tanh` there.

    PyTorch's float32 CPU tanh does not use a vectorised kernel on this build (the same 1.3 ms for [6, 256, 400]
    whatever ATEN_CPU_CAPABILITY says, 10x a sigmoid), and the two tanh layers of the encoders were a third of
    an encoder pass. 2 sigmoid(2x) - 1 with vectorised sigmoid: 0.25 ms. Absolute error below 2e-7 (torch.tanh:
    3e-8), so a run's numbers differ from torch.tanh's at float-rounding level only; NaN and inf behave as tanh.
    On other devices: `torch.tanh` (fast there).
    """
    if x.device.type != "cpu":
        return torch.tanh(x)
    return _SigmoidTanh.apply(x)


class AgentEncoders(nn.Module):
    """One encoder per agent: Linear(d_o_i, h)-LayerNorm-tanh-Linear(h, d)-LayerNorm-tanh (`fast_tanh`: the tanh
    computed by `cpu_fast_tanh`).

    Input `[N, B, max_obs]` (zero-padded), output `[N, B, d]`. With `copies > 1` there are
    `copies` independent sets of N encoders (one per team, for the unshared-encoder ablation); the
    input is then `[copies * N, B, max_obs]`, copy-major.
    """

    def __init__(self, obs_dims: Sequence[int], hidden: int, embed_dim: int, copies: int = 1, fast_tanh: bool = False):
        super().__init__()
        self.tanh = cpu_fast_tanh if fast_tanh else torch.tanh
        groups = len(obs_dims) * copies
        self.n_agents = len(obs_dims)
        self.copies = copies
        self.embed_dim = embed_dim
        self.l1 = GroupedLinear(list(obs_dims) * copies, hidden)
        self.n1 = GroupedLayerNorm(groups, hidden)
        self.l2 = GroupedLinear(hidden, embed_dim, groups)
        self.n2 = GroupedLayerNorm(groups, embed_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.tanh(self.n1(self.l1(obs)))
        return self.tanh(self.n2(self.l2(h)))


class ActionLayout(nn.Module):
    """Maps between padded per-agent actions `[N, B, A]` and the flat joint action `[B, sum a_i]`."""

    # buffers (register_buffer), typed for the type checker
    row_mask: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    flat_index: torch.Tensor

    def __init__(self, spec: EnvSpec):
        super().__init__()
        n, a_max = spec.n_agents, max(spec.act_dims)
        self.n_agents, self.max_act = n, a_max
        self.act_dims = tuple(spec.act_dims)
        mask = torch.zeros(n, a_max, dtype=torch.bool)
        scale = torch.ones(n, a_max)
        offset = torch.zeros(n, a_max)
        for i, a in enumerate(spec.act_dims):
            mask[i, :a] = True
            lo, hi = torch.as_tensor(spec.act_low[i]), torch.as_tensor(spec.act_high[i])
            scale[i, :a] = (hi - lo) / 2
            offset[i, :a] = (hi + lo) / 2
        self.register_buffer("row_mask", mask)  # [N, A]: which head rows are real action dims
        self.register_buffer("scale", scale[:, None, :])  # [N, 1, A]
        self.register_buffer("offset", offset[:, None, :])
        self.register_buffer("flat_index", mask.flatten().nonzero().squeeze(1))

    @property
    def joint_dim(self) -> int:
        return int(self.flat_index.numel())

    def squash(self, pre: torch.Tensor) -> torch.Tensor:
        """tanh, scaled to each action dimension's bounds. `pre`: [..., N, B, A]."""
        return torch.tanh(pre) * self.scale + self.offset

    def clamp(self, a: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(a, self.offset + self.scale), self.offset - self.scale)

    def flatten(self, a: torch.Tensor) -> torch.Tensor:
        """[..., N, B, A] -> [..., B, sum a_i]."""
        moved = a.movedim(-3, -2)  # [..., B, N, A]
        return moved.reshape(*moved.shape[:-2], -1)[..., self.flat_index]

    def unflatten(self, flat: torch.Tensor) -> torch.Tensor:
        """[B, sum a_i] -> [N, B, A] (padding rows zero)."""
        b = flat.shape[0]
        out = flat.new_zeros(b, self.n_agents * self.max_act)
        out[:, self.flat_index] = flat
        return out.view(b, self.n_agents, self.max_act).transpose(0, 1)


def init_heads(
    n_teams: int,
    n_agents: int,
    max_act: int,
    embed_dim: int,
    row_mask: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fresh heads `[T, N, A, d + 1]`, nn.Linear's default distribution, padding rows zero."""
    bound = 1.0 / np.sqrt(embed_dim)
    heads = (torch.rand(n_teams, n_agents, max_act, embed_dim + 1, generator=generator) * 2 - 1) * bound
    return heads * row_mask[None, :, :, None]


def heads_forward(z: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """Pre-activation actions of linear heads on representations.

    z `[N, B, d]` with heads `[N, A, d+1]` (one team) -> `[N, B, A]`;
    z `[N, B, d]` with heads `[K, N, A, d+1]` (K teams, same batch) -> `[K, N, B, A]`;
    z `[K, N, B, d]` (each team's own encoders) with heads `[K, N, A, d+1]` -> `[K, N, B, A]`.
    """
    w, b = heads[..., :-1], heads[..., -1]
    if heads.dim() == 3:
        return torch.baddbmm(b[:, None, :], z, w.transpose(1, 2))
    if z.dim() == 4:
        return torch.einsum("knbd,knad->knba", z, w) + b[:, :, None, :]
    return torch.einsum("nbd,knad->knba", z, w) + b[:, :, None, :]


def heads_forward_per_sample(z: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """Each sample b uses its own team's heads: z `[N, B, d]`, heads `[B, N, A, d+1]` -> `[N, B, A]`."""
    w, b = heads[..., :-1], heads[..., -1]
    return torch.einsum("nbd,bnad->nba", z, w) + b.transpose(0, 1)


def pad_obs(obs: Sequence[np.ndarray], max_obs: int, out: np.ndarray | None = None) -> np.ndarray:
    """Per-agent observations of different sizes -> `[N, max_obs]` float32 (zero-padded)."""
    if out is None:
        out = np.zeros((len(obs), max_obs), dtype=np.float32)
    for i, o in enumerate(obs):
        out[i, : o.shape[0]] = o
    return out
