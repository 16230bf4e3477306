"""Tests for racemarl.nets.mi: the separable JSD MI bound (VMM) and the value weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from racemarl.nets.mi import LOG4, SeparableCritic, jsd_mi_per_sample, value_weights

torch.set_num_threads(1)


def correlated_pairs(n: int, rho: float, gen: torch.Generator, dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I); y = rho x + sqrt(1 - rho^2) eps: I(x; y) = -dim/2 log(1 - rho^2)."""
    x = torch.randn(n, dim, generator=gen)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, dim, generator=gen)
    return x, y


def trained_estimate(rho: float, steps: int = 300, batch: int = 128, seed: int = 0) -> float:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    critic = SeparableCritic(state_dim=2, embed_dim=2, n_agents=1, hidden=32)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    for _ in range(steps):
        z, s = correlated_pairs(batch, rho, gen)
        loss = -jsd_mi_per_sample(critic(s, z[None])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z, s = correlated_pairs(1024, rho, gen)  # fresh samples
        return jsd_mi_per_sample(critic(s, z[None])).mean().item()


def test_jsd_estimate_grows_with_dependence_and_is_zero_when_independent():
    rhos = [0.0, 0.5, 0.9, 0.99]
    est = [trained_estimate(r) for r in rhos]
    assert abs(est[0]) < 0.1, est
    assert all(b > a + 0.05 for a, b in zip(est, est[1:])), est
    assert est[-1] < LOG4 + 1e-6  # the JSD bound (+ log 4) cannot exceed log 4
    assert est[-1] > 0.8, est


def reference_jsd(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Loop reference for one agent: scores[l, k] = T(s_k, z_l). Returns [B] (NaN for invalid t)."""
    b = scores.shape[-1]
    valid = torch.ones(b, dtype=torch.bool) if valid is None else valid
    out = torch.full((b,), float("nan"))
    for t in range(b):
        if not valid[t]:
            continue
        neg = [F.softplus(scores[k, t]) for k in range(b) if k != t and valid[k]]
        out[t] = -F.softplus(-scores[t, t]) - torch.stack(neg).mean() + LOG4
    return out


def test_jsd_matches_loop_reference_with_and_without_mask():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 7, 7, generator=gen) * 2  # [N, B, B]
    valid = torch.tensor([True, True, False, True, True, False, True])
    full = jsd_mi_per_sample(scores)
    masked = jsd_mi_per_sample(scores, valid)
    assert full.shape == masked.shape == (3, 7)
    for i in range(3):
        torch.testing.assert_close(full[i], reference_jsd(scores[i]))
        torch.testing.assert_close(masked[i][valid], reference_jsd(scores[i], valid)[valid])


def test_negatives_exclude_the_diagonal():
    b = 16
    scores = torch.full((2, b, b), -50.0)
    scores.diagonal(dim1=-2, dim2=-1).fill_(50.0)
    est = jsd_mi_per_sample(scores)
    # perfectly separated joint vs product pairs: the bound is log 4 (a diagonal counted as a
    # negative would subtract softplus(50) / B ~ 3 instead)
    torch.testing.assert_close(est, torch.full((2, b), LOG4), atol=1e-6, rtol=0)
    # indistinguishable pairs (all scores equal): the bound is ~0 at T = 0 ... and exactly
    # -sp(-c) - sp(c) + log 4 <= 0 for any constant c
    for c in (0.0, 1.5, -2.0):
        est = jsd_mi_per_sample(torch.full((1, b, b), c))
        torch.testing.assert_close(
            est, torch.full((1, b), -F.softplus(torch.tensor(-c)).item() - F.softplus(torch.tensor(c)).item() + LOG4)
        )
        assert torch.all(est <= 1e-6)


def test_invalid_samples_are_not_negatives():
    gen = torch.Generator().manual_seed(2)
    b = 10
    valid = torch.tensor([True, False, True, True, False, True, True, True, False, True])
    scores = torch.randn(2, b, b, generator=gen)
    est = jsd_mi_per_sample(scores, valid)
    # change every score that involves an invalid sample (its z as a negative, or its state)
    changed = scores.clone()
    inv = ~valid
    changed[:, inv, :] = 100.0
    changed[:, :, inv] = -100.0
    est2 = jsd_mi_per_sample(changed, valid)
    torch.testing.assert_close(est2[:, valid], est[:, valid], rtol=0, atol=0)
    # equal to the estimate on the valid sub-batch alone
    sub = scores[:, valid][:, :, valid]
    torch.testing.assert_close(est[:, valid], jsd_mi_per_sample(sub))
    # without the mask, the invalid samples do count as negatives
    assert not torch.allclose(jsd_mi_per_sample(changed)[:, valid], est[:, valid])


def test_separable_critic_scores_layout():
    torch.manual_seed(3)
    critic = SeparableCritic(state_dim=4, embed_dim=3, n_agents=2, hidden=8)
    s, z = torch.randn(5, 4), torch.randn(2, 5, 3)
    scores = critic(s, z)
    assert scores.shape == (2, 5, 5)
    # entry [i, l, k] = T(s_k, z_{i,l}): evaluate one pair on its own
    one = critic(s[3:4], z[:, 1:2])
    torch.testing.assert_close(scores[:, 1, 3], one[:, 0, 0])


def test_value_weights_range_and_mask():
    gen = torch.Generator().manual_seed(4)
    values = torch.randn(12, generator=gen) * 5 + 3
    w = value_weights(values)
    assert torch.all((w >= 0) & (w <= 1))
    assert w[values.argmin()] == 0
    torch.testing.assert_close(w[values.argmax()], torch.tensor(1.0), atol=1e-5, rtol=0)
    # monotone in V
    order = values.argsort()
    assert torch.all(w[order].diff() >= 0)

    valid = torch.ones(12, dtype=torch.bool)
    valid[[2, 7]] = False
    masked = values.clone()
    masked[2], masked[7] = 1e4, -1e4  # invalid extremes must not set the min / max
    wm = value_weights(masked, valid)
    wv = wm[valid]
    assert torch.all((wv >= 0) & (wv <= 1))
    vv = masked[valid]
    assert wv[vv.argmin()] == 0
    torch.testing.assert_close(wv[vv.argmax()], torch.tensor(1.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(wv, value_weights(vv))
    # a constant batch gives finite weights (eps guards the division)
    assert torch.all(torch.isfinite(value_weights(torch.full((5,), 2.0))))
