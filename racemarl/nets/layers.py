"""Grouped layers: G independent small networks evaluated as one batched matrix product.

Tensors are group-major, `[G, B, features]`. Groups whose input is narrower than the widest one
are zero-padded on the input side; their padded weight rows start at zero and, because the padded
inputs are always zero, never receive gradient, so each group behaves exactly like its own
`nn.Linear(in_g, out)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class GroupedLinear(nn.Module):
    """G independent `nn.Linear`s as one batched product. `full_precision`: under bfloat16 autocast this layer
    still computes in float32 (the last layer of a value network whose output enters a loss, see
    `racemarl.precision`)."""

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int,
        groups: int | None = None,
        full_precision: bool = False,
    ):
        super().__init__()
        self.full_precision = full_precision
        if isinstance(in_features, int):
            if groups is None:
                raise ValueError("groups is required when in_features is an int")
            in_features = [in_features] * groups
        self.in_features = list(in_features)
        self.groups = len(self.in_features)
        self.out_features = out_features
        max_in = max(self.in_features)
        self.weight = nn.Parameter(torch.zeros(self.groups, max_in, out_features))
        self.bias = nn.Parameter(torch.zeros(self.groups, 1, out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # The same distribution as nn.Linear's default, with each group's own fan-in.
        for g, fan_in in enumerate(self.in_features):
            bound = 1.0 / math.sqrt(fan_in)
            self.weight[g, :fan_in].uniform_(-bound, bound)
            self.weight[g, fan_in:].zero_()
            self.bias[g].uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # one input shared by every group
            x = x.expand(self.groups, *x.shape)
        return self._product(self.bias, x, self.weight)

    def forward_first(self, x: torch.Tensor) -> torch.Tensor:
        """Group 0 alone: x `[B, in]` or `[1, B, in]` -> `[1, B, out]` (equals `forward(x)[:1]`)."""
        if x.dim() == 2:
            x = x[None]
        return self._product(self.bias[:1], x, self.weight[:1])

    def _product(self, bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.full_precision and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                x = x.float()
                if weight.shape[-1] == 1 and x.device.type == "cpu":
                    # one output (a value): one matrix-vector product per group, 4-5x faster on the CPU than a
                    # float32 bmm with a single column (about 40 vs 190 us for [2, 256, 300])
                    return torch.stack([torch.addmv(bias[g, 0], x[g], weight[g, :, 0]) for g in range(len(x))])[
                        ..., None
                    ]
                return torch.baddbmm(bias, x, weight)
        return torch.baddbmm(bias, x, weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class GroupedLayerNorm(nn.Module):
    """LayerNorm over the feature dimension with a separate affine transform per group."""

    # buffers (register_buffer), typed for the type checker
    _one: torch.Tensor
    _zero: torch.Tensor

    def __init__(self, groups: int, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(groups, 1, features))
        self.bias = nn.Parameter(torch.zeros(groups, 1, features))
        # An identity affine for F.layer_norm: the same values as no affine, but PyTorch's CPU kernel is
        # faster with one (about 0.6 vs 0.9 ms for [6, 256, 400]). Not saved in checkpoints.
        self.register_buffer("_one", torch.ones(features), persistent=False)
        self.register_buffer("_zero", torch.zeros(features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x, x.shape[-1:], self._one, self._zero, eps=self.eps)
        return torch.addcmul(self.bias.to(normed.dtype), normed, self.weight.to(normed.dtype))

    def forward_first(self, x: torch.Tensor) -> torch.Tensor:
        """Group 0 alone: x `[1, B, features]` -> `[1, B, features]` (equals `forward(x)[:1]` for group 0's input)."""
        normed = F.layer_norm(x, x.shape[-1:], self._one, self._zero, eps=self.eps)
        return torch.addcmul(self.bias[:1].to(normed.dtype), normed, self.weight[:1].to(normed.dtype))


class GroupedMLP(nn.Module):
    """G independent MLPs: Linear-act-...-Linear, with no activation after the last layer. With `layer_norm`
    every hidden layer is Linear-LayerNorm-act (ERL-Re2's `use_ln` critics). `full_precision_out`: the last
    layer computes in float32 under bfloat16 autocast (value networks, see `racemarl.precision`)."""

    def __init__(
        self,
        in_features: int | Sequence[int],
        hidden: Sequence[int],
        out_features: int,
        groups: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
        layer_norm: bool = False,
        full_precision_out: bool = False,
    ):
        super().__init__()
        sizes = list(hidden) + [out_features]
        layers: list[nn.Module] = []
        prev: int | Sequence[int] = in_features
        for i, width in enumerate(sizes):
            linear = GroupedLinear(prev, width, groups, full_precision=full_precision_out and i == len(sizes) - 1)
            layers.append(linear)
            groups = linear.groups
            if i < len(sizes) - 1:
                if layer_norm:
                    layers.append(GroupedLayerNorm(groups, width))
                layers.append(activation())
            prev = width
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_first(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The first group's MLP alone, `[1, B, out]` (equals `forward(x)[:1]` at half the work for two groups).
        `start` skips the first layers (x is then that layer's input)."""
        for layer in list(self.net)[start:]:
            x = layer.forward_first(x) if isinstance(layer, (GroupedLinear, GroupedLayerNorm)) else layer(x)
        return x
