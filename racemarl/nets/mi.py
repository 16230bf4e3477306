"""Value-aware mutual information (VMM): a separable JSD lower bound on I(z_i; s)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from racemarl.nets.layers import GroupedMLP
from racemarl.precision import full_precision

LOG4 = math.log(4.0)


class SeparableCritic(nn.Module):
    """T_omega(s, z_i) = g(s) . f_i(z_i). Returns all pair scores `[N, B, B]`, entry [i, l, k] =
    T(s_k, z_{i,l}), so the diagonal holds the joint (same-sample) pairs."""

    def __init__(self, state_dim: int, embed_dim: int, n_agents: int, hidden: int = 128):
        super().__init__()
        self.g = GroupedMLP(state_dim, [hidden], hidden, groups=1)
        self.f = GroupedMLP(embed_dim, [hidden], hidden, groups=n_agents)

    def forward(self, state: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gs = self.g(state)[0]  # [B, h]
        fz = self.f(z)  # [N, B, h]
        with full_precision(
            fz.device.type
        ):  # the scores enter the bound's softplus terms: float32 (see racemarl.precision)
            return fz.float() @ gs.float().T


def jsd_mi_per_sample(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample JSD bound I_t = -sp(-T(s_t, z_t)) - mean_{k != t} sp(T(s_t, z_k)) + log 4.

    The constant log 4 (no effect on gradients) makes independent variables score about 0; the
    bound then lies in [0, log 4] and grows with the dependence between z and s.

    `scores[..., l, k] = T(s_k, z_l)`; negatives for sample t pair its state with the
    representations of *other valid samples* only. Returns `[..., B]`.
    """
    b = scores.shape[-1]
    joint = -F.softplus(-scores.diagonal(dim1=-2, dim2=-1))
    if valid is None:  # every sample valid: all pairs minus the diagonal (no [B, B] mask to build and multiply)
        sp = F.softplus(scores)
        marginal = (sp.sum(-2) - sp.diagonal(dim1=-2, dim2=-1)) / max(b - 1, 1)
        return joint - marginal + LOG4
    neg_mask = ~torch.eye(b, dtype=torch.bool, device=scores.device)
    if valid is not None:
        neg_mask = neg_mask & valid[:, None] & valid[None, :]
    neg_mask = neg_mask.to(scores.dtype)
    marginal = (F.softplus(scores) * neg_mask).sum(-2) / neg_mask.sum(-2).clamp(min=1)
    return joint - marginal + LOG4


def value_weights(values: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """w(s) = (V(s) - min V) / (max V - min V + eps) over the valid samples of the batch."""
    if valid is None:
        lo, hi = values.min(), values.max()
    else:
        lo = values.masked_fill(~valid, float("inf")).min()
        hi = values.masked_fill(~valid, float("-inf")).max()
    return (values - lo) / (hi - lo + eps)
