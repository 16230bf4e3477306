"""Tests for racemarl.nets: grouped layers, encoders, linear team heads, action layout, PeVFA.

The central check is that every batched action path (one team, K teams, one team per sample, and
MATD3.act with one observation per team) equals a plain per-agent, per-team python-loop reference
`tanh(z_i @ W_i^T + b_i)` scaled to each action dimension's own bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from racemarl.algorithms.matd3 import MATD3
from racemarl.config import Config, NetConfig
from racemarl.envs.base import EnvSpec
from racemarl.nets.critics import PeVFA, PolicyEmbedding, TwinCritic
from racemarl.nets.layers import GroupedLinear
from racemarl.nets.policy import (
    ActionLayout,
    AgentEncoders,
    heads_forward,
    heads_forward_per_sample,
    init_heads,
    pad_obs,
)

torch.set_num_threads(1)

OBS_DIMS = (5, 7, 4)
ACT_DIMS = (1, 2, 2)
STATE_DIM = 9
EMBED = 8
# Different bounds per agent: symmetric +-1, symmetric +-0.4, and an asymmetric box (offset != 0).
ACT_LOW = (np.array([-1.0], np.float32), np.array([-0.4, -0.4], np.float32), np.array([-1.0, 0.0], np.float32))
ACT_HIGH = (np.array([1.0], np.float32), np.array([0.4, 0.4], np.float32), np.array([1.0, 2.0], np.float32))


def make_spec() -> EnvSpec:
    return EnvSpec(
        task="test/handmade",
        n_agents=3,
        obs_dims=OBS_DIMS,
        state_dim=STATE_DIM,
        act_dims=ACT_DIMS,
        discrete=False,
        episode_limit=10,
        act_low=ACT_LOW,
        act_high=ACT_HIGH,
    )


def tiny_cfg() -> Config:
    cfg = Config(algo="matd3")
    cfg.net = NetConfig(encoder_hidden=16, embed_dim=EMBED, critic_hidden=[16, 16], policy_embed_dim=8)
    cfg.learner.batch_size = 16
    return cfg


def random_padded_obs(batch: int, gen: torch.Generator) -> torch.Tensor:
    """`[N, B, max_obs]`, each agent's real features random, padding exactly zero."""
    obs = torch.zeros(len(OBS_DIMS), batch, max(OBS_DIMS))
    for i, o in enumerate(OBS_DIMS):
        obs[i, :, :o] = torch.randn(batch, o, generator=gen)
    return obs


def reference_action(z_i: torch.Tensor, head_i: torch.Tensor, agent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-agent reference: z_i `[B, d]`, head `[A, d+1]` -> (pre-activation, bounded action), each `[B, a_i]`.

    Uses the spec's bounds directly, not ActionLayout, so it is independent of the code under test.
    """
    a = ACT_DIMS[agent]
    w, b = head_i[:a, :-1], head_i[:a, -1]
    pre = z_i @ w.T + b
    lo = torch.as_tensor(ACT_LOW[agent])
    hi = torch.as_tensor(ACT_HIGH[agent])
    return pre, lo + (torch.tanh(pre) + 1) * (hi - lo) / 2


def random_heads(teams: int, gen: torch.Generator, layout: ActionLayout) -> torch.Tensor:
    return init_heads(teams, 3, layout.max_act, EMBED, layout.row_mask, generator=gen) * 3  # *3: reach tanh's bend


# ----------------------------------------------------------------------------- GroupedLinear


def test_grouped_linear_equals_separate_linears_and_padding_gets_no_grad():
    torch.manual_seed(0)
    gl = GroupedLinear(list(OBS_DIMS), 6)
    b = 11
    xs = [torch.randn(b, o) for o in OBS_DIMS]
    x = torch.zeros(3, b, max(OBS_DIMS))
    for g, xg in enumerate(xs):
        x[g, :, : OBS_DIMS[g]] = xg

    refs = []
    for g, o in enumerate(OBS_DIMS):
        lin = nn.Linear(o, 6)
        with torch.no_grad():
            lin.weight.copy_(gl.weight[g, :o].T)
            lin.bias.copy_(gl.bias[g, 0])
        refs.append(lin)

    out = gl(x)
    assert out.shape == (3, b, 6)
    upstream = torch.randn(3, b, 6)
    (out * upstream).sum().backward()
    for g, (lin, o) in enumerate(zip(refs, OBS_DIMS)):
        ref = lin(xs[g])
        torch.testing.assert_close(out[g], ref, rtol=1e-5, atol=1e-6)
        (ref * upstream[g]).sum().backward()
        torch.testing.assert_close(gl.weight.grad[g, :o], lin.weight.grad.T, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gl.bias.grad[g, 0], lin.bias.grad, rtol=1e-5, atol=1e-6)
        # padded weight rows: exactly zero, and exactly zero gradient
        assert torch.count_nonzero(gl.weight[g, o:]) == 0
        assert torch.count_nonzero(gl.weight.grad[g, o:]) == 0


def test_grouped_linear_init_uses_each_groups_own_fan_in():
    torch.manual_seed(1)
    gl = GroupedLinear([4, 64], 256)
    small = gl.weight[0, :4]
    # nn.Linear(4, .) draws from U(-1/2, 1/2); a shared fan-in of 64 would give U(-1/8, 1/8).
    assert small.abs().max() <= 0.5
    assert small.abs().max() > 0.4
    assert gl.weight[1, :64].abs().max() <= 1 / 8
    assert gl.bias[0].abs().max() > 0.4 and gl.bias[1].abs().max() <= 1 / 8


def test_grouped_linear_shared_2d_input_is_broadcast_to_every_group():
    torch.manual_seed(2)
    gl = GroupedLinear(5, 3, groups=4)
    x = torch.randn(7, 5)
    out = gl(x)
    assert out.shape == (4, 7, 3)
    for g in range(4):
        torch.testing.assert_close(out[g], x @ gl.weight[g] + gl.bias[g, 0])


# ----------------------------------------------------------------------------- encoders


def test_agent_encoders_shape_range_and_independence():
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    enc = AgentEncoders(OBS_DIMS, hidden=16, embed_dim=EMBED)
    obs = random_padded_obs(13, gen) * 10  # large inputs: LayerNorm + tanh must still bound the output
    z = enc(obs)
    assert z.shape == (3, 13, EMBED)
    assert torch.all(z.abs() < 1)
    # agent i's representation depends only on agent i's observation
    obs2 = obs.clone()
    obs2[0] = random_padded_obs(13, gen)[0]
    z2 = enc(obs2)
    assert not torch.allclose(z2[0], z[0])
    torch.testing.assert_close(z2[1:], z[1:], rtol=0, atol=0)


def test_pad_obs_zero_pads_each_agent():
    obs = [np.arange(o, dtype=np.float32) + 1 for o in OBS_DIMS]
    out = pad_obs(obs, max(OBS_DIMS))
    assert out.shape == (3, 7) and out.dtype == np.float32
    for i, o in enumerate(OBS_DIMS):
        np.testing.assert_array_equal(out[i, :o], obs[i])
        assert np.all(out[i, o:] == 0)


# ----------------------------------------------------------------------------- action layout


def test_action_layout_flatten_unflatten_roundtrip_and_order():
    layout = ActionLayout(make_spec())
    assert layout.joint_dim == sum(ACT_DIMS) == 5
    assert layout.max_act == 2
    assert layout.row_mask.tolist() == [[True, False], [True, True], [True, True]]
    gen = torch.Generator().manual_seed(4)
    flat = torch.randn(6, 5, generator=gen)
    padded = layout.unflatten(flat)
    assert padded.shape == (3, 6, 2)
    assert torch.all(padded[0, :, 1] == 0)  # agent 0 has one action dim: its second row is padding
    # agent order in the flat joint action: [a_0 (1), a_1 (2), a_2 (2)]
    torch.testing.assert_close(padded[0, :, :1], flat[:, 0:1], rtol=0, atol=0)
    torch.testing.assert_close(padded[1], flat[:, 1:3], rtol=0, atol=0)
    torch.testing.assert_close(padded[2], flat[:, 3:5], rtol=0, atol=0)
    torch.testing.assert_close(layout.flatten(padded), flat, rtol=0, atol=0)
    # flatten ignores whatever is in the padding rows, and works with a leading team dim
    junk = padded.clone()
    junk[0, :, 1] = 123.0
    torch.testing.assert_close(layout.flatten(junk), flat, rtol=0, atol=0)
    stacked = torch.stack([padded, 2 * padded])
    out = layout.flatten(stacked)
    assert out.shape == (2, 6, 5)
    torch.testing.assert_close(out[1], 2 * flat, rtol=0, atol=0)


def test_action_layout_squash_and_clamp_respect_each_agents_bounds():
    layout = ActionLayout(make_spec())
    gen = torch.Generator().manual_seed(5)
    pre = torch.randn(3, 200, 2, generator=gen) * 5
    a = layout.squash(pre)
    for i, ad in enumerate(ACT_DIMS):
        lo, hi = torch.as_tensor(ACT_LOW[i]), torch.as_tensor(ACT_HIGH[i])
        assert torch.all(a[i, :, :ad] >= lo) and torch.all(a[i, :, :ad] <= hi)
        # saturated pre-activations map to the bounds themselves; zero maps to the box's centre
        sat = layout.squash(torch.full((3, 1, 2), 100.0))[i, 0, :ad]
        torch.testing.assert_close(sat, hi)
        sat = layout.squash(torch.full((3, 1, 2), -100.0))[i, 0, :ad]
        torch.testing.assert_close(sat, lo)
        torch.testing.assert_close(layout.squash(torch.zeros(3, 1, 2))[i, 0, :ad], (lo + hi) / 2)
    # agent 1's range is +-0.4: the full range is used (not clipped at +-0.4 out of +-1)
    assert a[1].max() > 0.35 and a[1].min() < -0.35
    # clamp: within bounds unchanged, outside -> bound
    big = torch.full((3, 1, 2), 10.0)
    torch.testing.assert_close(layout.clamp(big)[2, 0], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(layout.clamp(-big)[1, 0], torch.tensor([-0.4, -0.4]))
    torch.testing.assert_close(layout.clamp(a), a)


# ----------------------------------------------------------------------------- heads vs reference


def test_heads_forward_one_team_equals_per_agent_reference():
    layout = ActionLayout(make_spec())
    gen = torch.Generator().manual_seed(6)
    z = torch.rand(3, 10, EMBED, generator=gen) * 2 - 1
    heads = random_heads(1, gen, layout)[0]
    pre = heads_forward(z, heads)
    assert pre.shape == (3, 10, 2)
    act = layout.squash(pre)
    for i in range(3):
        ref_pre, ref_act = reference_action(z[i], heads[i], i)
        torch.testing.assert_close(pre[i, :, : ACT_DIMS[i]], ref_pre)
        torch.testing.assert_close(act[i, :, : ACT_DIMS[i]], ref_act)
    assert torch.all(pre[0, :, 1] == 0)  # padding rows of the heads are zero -> zero pre-activation


def test_heads_forward_k_teams_equals_per_team_reference():
    layout = ActionLayout(make_spec())
    gen = torch.Generator().manual_seed(7)
    z = torch.rand(3, 10, EMBED, generator=gen) * 2 - 1
    heads = random_heads(4, gen, layout)
    pre = heads_forward(z, heads)
    assert pre.shape == (4, 3, 10, 2)
    act = layout.squash(pre)
    flat = layout.flatten(act)
    assert flat.shape == (4, 10, 5)
    for k in range(4):
        refs = []
        for i in range(3):
            ref_pre, ref_act = reference_action(z[i], heads[k, i], i)
            torch.testing.assert_close(pre[k, i, :, : ACT_DIMS[i]], ref_pre)
            torch.testing.assert_close(act[k, i, :, : ACT_DIMS[i]], ref_act)
            refs.append(ref_act)
        torch.testing.assert_close(flat[k], torch.cat(refs, dim=1))


def test_heads_forward_per_sample_equals_reference():
    layout = ActionLayout(make_spec())
    gen = torch.Generator().manual_seed(8)
    b = 6
    z = torch.rand(3, b, EMBED, generator=gen) * 2 - 1
    heads = random_heads(b, gen, layout)  # sample s uses team s
    pre = heads_forward_per_sample(z, heads)
    assert pre.shape == (3, b, 2)
    for s in range(b):
        for i in range(3):
            ref_pre, _ = reference_action(z[i, s : s + 1], heads[s, i], i)
            torch.testing.assert_close(pre[i, s : s + 1, : ACT_DIMS[i]], ref_pre)


def test_matd3_act_and_policy_equal_per_agent_per_team_reference():
    torch.manual_seed(9)
    spec = make_spec()
    learner = MATD3(spec, tiny_cfg(), torch.Generator().manual_seed(9))
    layout = learner.layout
    gen = torch.Generator().manual_seed(10)
    t = 5
    obs = random_padded_obs(t, gen).transpose(0, 1).contiguous()  # [T, N, max_obs]: team t sees obs[t]
    heads = random_heads(t, gen, layout)
    act = learner.act(obs, heads)
    assert act.shape == (t, 3, 2)
    for team in range(t):
        z = learner.encoders(obs[team][:, None, :])  # this team's obs alone: [N, 1, d]
        for i in range(3):
            _, ref = reference_action(z[i], heads[team, i], i)
            torch.testing.assert_close(act[team, i, : ACT_DIMS[i]], ref[0])
            lo, hi = ACT_LOW[i], ACT_HIGH[i]
            assert np.all(act[team, i, : ACT_DIMS[i]].numpy() >= lo) and np.all(
                act[team, i, : ACT_DIMS[i]].numpy() <= hi
            )
    # MATD3.policy: the flat joint action of one team on a batch
    obs_b = random_padded_obs(7, gen)
    z = learner.encoders(obs_b)
    flat = learner.policy(z, heads[2])
    assert flat.shape == (7, 5)
    ref = torch.cat([reference_action(z[i], heads[2, i], i)[1] for i in range(3)], dim=1)
    torch.testing.assert_close(flat, ref)


# ----------------------------------------------------------------------------- PeVFA


def test_policy_embedding_ignores_padding_rows_and_has_right_shape():
    torch.manual_seed(11)
    layout = ActionLayout(make_spec())
    emb = PolicyEmbedding(3, EMBED + 1, layout.row_mask, width=8)
    gen = torch.Generator().manual_seed(11)
    heads = random_heads(4, gen, layout)
    out = emb(heads)
    assert out.shape == (4, 3 * 8)
    assert emb.out_dim == 24
    junk = heads.clone()
    junk[:, 0, 1] = torch.randn(4, EMBED + 1, generator=gen) * 10  # agent 0's padding row
    torch.testing.assert_close(emb(junk), out, rtol=1e-6, atol=1e-6)
    # a real row does matter, and only for its own agent's slice
    changed = heads.clone()
    changed[:, 1, 1] += 1.0
    out2 = emb(changed)
    assert not torch.allclose(out2[:, 8:16], out[:, 8:16])
    torch.testing.assert_close(out2[:, :8], out[:, :8], rtol=0, atol=0)
    torch.testing.assert_close(out2[:, 16:], out[:, 16:], rtol=0, atol=0)
    # mean over an agent's real rows: order of the rows does not matter
    swapped = heads.clone()
    swapped[:, 2] = heads[:, 2].flip(1)
    torch.testing.assert_close(emb(swapped), out, rtol=1e-5, atol=1e-6)
    # each team is embedded on its own
    torch.testing.assert_close(emb(heads[1:2]), out[1:2], rtol=1e-5, atol=1e-6)


def test_pevfa_does_not_backpropagate_into_heads():
    torch.manual_seed(12)
    layout = ActionLayout(make_spec())
    pevfa = PeVFA(STATE_DIM, layout.joint_dim, [16, 16], 3, EMBED + 1, layout.row_mask, embed_width=8)
    gen = torch.Generator().manual_seed(12)
    k, b = 3, 5
    heads = random_heads(k, gen, layout).requires_grad_(True)
    state = torch.randn(k, b, STATE_DIM, generator=gen)
    action = torch.randn(k, b, layout.joint_dim, generator=gen)
    q = pevfa(state, action, heads)
    assert q.shape == (2, k, b)
    q.sum().backward()
    assert heads.grad is None or torch.count_nonzero(heads.grad) == 0
    # ... while the PeVFA itself (incl. its policy embedding) does get gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pevfa.embedding.parameters())
    # and the heads do change its output
    q2 = pevfa(state, action, heads.detach() + 0.5)
    assert not torch.allclose(q, q2)


def test_twin_critic_groups_are_independent():
    torch.manual_seed(13)
    critic = TwinCritic(STATE_DIM, 5, [16, 16])
    s, a = torch.randn(4, STATE_DIM), torch.randn(4, 5)
    q = critic(s, a)
    assert q.shape == (2, 4)
    assert not torch.allclose(q[0], q[1])
    q[0].sum().backward()
    for layer in critic.net.net:
        if isinstance(layer, GroupedLinear):
            assert torch.count_nonzero(layer.weight.grad[1]) == 0
            assert torch.count_nonzero(layer.weight.grad[0]) > 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))


def test_conditioned_critic_equals_concatenated_input():
    from racemarl.nets.critics import TwinCritic

    torch.manual_seed(0)
    critic = TwinCritic(5, 3, [16, 8], extra_dim=4)
    s, u, e = torch.randn(2, 7, 5), torch.randn(2, 7, 3), torch.randn(2, 4)
    fast = critic.forward_conditioned(s, u, e)
    x = torch.cat([s, u, e[:, None, :].expand(2, 7, 4)], dim=-1).reshape(14, -1)
    slow = critic.net(x).squeeze(-1).view(2, 2, 7)
    torch.testing.assert_close(fast, slow)
