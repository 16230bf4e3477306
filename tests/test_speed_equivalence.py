"""The faster code paths compute what the plain formulas compute (issue #5: speed without changing
what is learned). Each test keeps the earlier formula as the reference and checks values and
gradients on random inputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from racemarl.algorithms.matd3 import soft_update, tune_allocator
from racemarl.data.buffer import ReplayBuffer
from racemarl.nets.critics import PeVFA, TwinCritic
from racemarl.nets.layers import GroupedLayerNorm, GroupedMLP
from racemarl.nets.mi import LOG4, jsd_mi_per_sample
from racemarl.nets.policy import ActionLayout
from tests.test_learner_gradients import (
    EMBED,
    STATE_DIM,
    make_batch,
    make_learner,
    make_population,
    make_spec,
    tiny_cfg,
)

torch.set_num_threads(1)


def _grads(out: torch.Tensor, tensors: list[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return list(torch.autograd.grad((out * weight).sum(), tensors))


def test_grouped_layer_norm_equals_plain_layer_norm_then_affine():
    torch.manual_seed(0)
    ln = GroupedLayerNorm(3, 40)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(3, 17, 40, requires_grad=True)
    new = ln(x)
    old = torch.addcmul(ln.bias, F.layer_norm(x, (40,), eps=ln.eps), ln.weight)  # the earlier formula
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    for a, b in zip(_grads(new, [x, ln.weight, ln.bias]), _grads(old, [x, ln.weight, ln.bias])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the identity affine is not part of the saved state
    assert set(ln.state_dict()) == {"weight", "bias"}


def test_first_group_forward_equals_full_forward_first_group():
    torch.manual_seed(1)
    mlp = GroupedMLP(6, [16, 12], 3, groups=2)
    x = torch.randn(9, 6)
    torch.testing.assert_close(mlp.forward_first(x), mlp(x)[:1], rtol=1e-6, atol=1e-6)


def test_twin_critic_first_equals_first_twin_values_and_input_gradients():
    torch.manual_seed(2)
    critic = TwinCritic(STATE_DIM, 5, [32, 24])
    state = torch.randn(11, STATE_DIM)
    action = torch.randn(11, 5, requires_grad=True)
    new = critic.first(state, action)
    old = critic(state, action)[0]
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    (g_new,), (g_old,) = _grads(new, [action]), _grads(old, [action])
    torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_pevfa_first_only_equals_first_twin(k):
    torch.manual_seed(3)
    layout = ActionLayout(make_spec())
    pevfa = PeVFA(STATE_DIM, layout.joint_dim, [32, 24], 3, EMBED + 1, layout.row_mask, embed_width=8)
    gen = torch.Generator().manual_seed(3)
    heads = torch.randn(k, 3, layout.max_act, EMBED + 1, generator=gen)
    state = torch.randn(k, 10, STATE_DIM, generator=gen)
    action = torch.randn(k, 10, layout.joint_dim, generator=gen).requires_grad_(True)
    new = pevfa(state, action, heads, first_only=True)
    old = pevfa(state, action, heads)[0]
    assert new.shape == (k, 10)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    params = list(pevfa.embedding.parameters())
    for a, b in zip(_grads(new, [action, *params]), _grads(old, [action, *params])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _jsd_with_mask(scores: torch.Tensor) -> torch.Tensor:
    """The earlier formula: the marginal term as a masked mean over the off-diagonal pairs."""
    b = scores.shape[-1]
    joint = -F.softplus(-scores.diagonal(dim1=-2, dim2=-1))
    neg_mask = (~torch.eye(b, dtype=torch.bool)).to(scores.dtype)
    marginal = (F.softplus(scores) * neg_mask).sum(-2) / neg_mask.sum(-2).clamp(min=1)
    return joint - marginal + LOG4


@pytest.mark.parametrize("b", [1, 2, 64])
def test_jsd_without_mask_equals_masked_formula(b):
    scores = (torch.randn(3, b, b, generator=torch.Generator().manual_seed(b)) * 3).requires_grad_(True)
    new, old = jsd_mi_per_sample(scores), _jsd_with_mask(scores)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)
    (g_new,), (g_old,) = _grads(new, [scores]), _grads(old, [scores])
    torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-6)


def test_buffer_sample_equals_per_field_gather():
    n_agents, max_obs, state_dim, act_dim = 3, 5, 4, 6
    buf = ReplayBuffer(50, n_agents, max_obs, state_dim, act_dim, seed=7)
    rng = np.random.default_rng(0)
    shapes = {
        "obs": (n_agents, max_obs),
        "state": (state_dim,),
        "action": (act_dim,),
        "reward": (),
        "next_obs": (n_agents, max_obs),
        "next_state": (state_dim,),
        "terminated": (),
    }
    stored = {k: [] for k in shapes}
    for n in (30, 30):  # wraps around the ring
        rows = {k: rng.standard_normal((n, *s)).astype(np.float32) for k, s in shapes.items()}
        buf.add(**rows)
        for k in shapes:
            stored[k].append(rows[k])
    ring = {k: np.concatenate(v) for k, v in stored.items()}
    ring = {k: np.concatenate([v[50:], v[10:50]]) for k, v in ring.items()}  # slot i holds its latest write
    batch = buf.sample(32)
    idx = torch.randint(0, 50, (32,), generator=torch.Generator().manual_seed(7))  # the buffer's draw
    for k in shapes:
        expected = torch.from_numpy(ring[k])[idx]
        got = getattr(batch, k)
        if k in ("obs", "next_obs"):
            got = got.transpose(0, 1)
        assert torch.equal(got, expected), k
    # checkpoint format unchanged: one tensor per field, and a round trip restores the samples
    sd = buf.state_dict()
    assert set(sd["data"]) == set(ReplayBuffer.FIELDS) and sd["data"]["obs"].shape == (50, n_agents, max_obs)
    other = ReplayBuffer(50, n_agents, max_obs, state_dim, act_dim, seed=1)
    other.load_state_dict(sd)
    a, b = buf.sample(8), other.sample(8)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in shapes)


def test_soft_update_equals_per_parameter_lerp():
    torch.manual_seed(4)
    source = GroupedMLP(5, [8], 2, groups=3)
    target = copy.deepcopy(source)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    expected = [t.detach().clone().lerp_(s.detach(), 0.3) for t, s in zip(target.parameters(), source.parameters())]
    soft_update(target, source, 0.3)
    assert all(torch.equal(t, e) for t, e in zip(target.parameters(), expected))


def test_tune_allocator_sets_both_thresholds_once(monkeypatch):
    import racemarl.algorithms.matd3 as matd3

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(matd3, "_ALLOCATOR_TUNED", False)
    monkeypatch.setattr(matd3.ctypes, "CDLL", lambda name: FakeLibc())
    tune_allocator()
    tune_allocator()  # process-wide: the second call does nothing
    assert calls == [(-3, 32 * 2**20), (-1, 256 * 2**20)]  # M_MMAP_THRESHOLD 32 MB, M_TRIM_THRESHOLD 256 MB


def test_conditioned_critic_gradients_equal_concatenated_input():
    """The split first layer (state-action part batched per sample, extra part once per group) gives the
    weight gradients of the plain layer on the concatenated input."""
    torch.manual_seed(5)
    critic = TwinCritic(5, 3, [16, 8], extra_dim=4)
    s, u, e = torch.randn(3, 7, 5), torch.randn(3, 7, 3), torch.randn(3, 4)
    params = list(critic.parameters())
    fast = critic.forward_conditioned(s, u, e)
    x = torch.cat([s, u, e[:, None, :].expand(3, 7, 4)], dim=-1).reshape(21, -1)
    slow = critic.net(x).squeeze(-1).view(2, 3, 7)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(fast, params), _grads(slow, params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["matd3", "race"])
def test_update_targets_is_soft_update_of_every_pair(algo):
    learner = make_learner(tiny_cfg(algo))
    with torch.no_grad():
        for p in learner.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    pairs = [("critic_targ", "critic"), ("encoders_targ", "encoders")] + (
        [("pevfa_targ", "pevfa")] if algo == "race" else []
    )
    expected = {
        t: [
            a.detach().clone().lerp_(b.detach(), learner.lcfg.tau)
            for a, b in zip(getattr(learner, t).parameters(), getattr(learner, s).parameters())
        ]
        for t, s in pairs
    }
    heads = learner.marl_heads_targ.clone().lerp_(learner.marl_heads.detach(), learner.lcfg.tau)
    learner.update_targets()
    for t, _ in pairs:
        assert all(torch.equal(a, b) for a, b in zip(getattr(learner, t).parameters(), expected[t])), t
    assert torch.equal(learner.marl_heads_targ, heads)


def test_critics_trainable_again_after_an_update():
    learner = make_learner(tiny_cfg("race"))
    learner.update(make_batch(0), make_population(learner))
    assert all(p.requires_grad for m in learner.critic_modules() for p in m.parameters())


def test_actor_values_fall_back_to_an_overridden_critic_values():
    """A learner whose critic_values is overridden (e.g. a mixed critic) gets its own first value."""
    learner = make_learner(tiny_cfg("matd3"))
    batch = make_batch(0)
    twin = learner.critic(batch.state, batch.action)[0]
    torch.testing.assert_close(learner.actor_values(learner.critic, batch.obs, batch.state, batch.action), twin)

    class Overridden(type(learner)):
        def critic_values(self, critic, obs, state, action):
            return critic(state, action).flip(0)  # reads the other twin first

    learner.__class__ = Overridden
    other = learner.critic(batch.state, batch.action)[1]
    torch.testing.assert_close(learner.actor_values(learner.critic, batch.obs, batch.state, batch.action), other)
