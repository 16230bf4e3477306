"""The TD targets of the continuous learners, checked by number on hand-built batches: the target networks are
replaced by functions with known values, so each target is the formula of the paper (and of TD3 and ERL-Re2) and
nothing else. Also the sign of VFM: a step against its gradient raises the PeVFA's value of the drawn team."""

from __future__ import annotations

import copy

import pytest
import torch

from racemarl.nets.policy import heads_forward
from tests.test_learner_gradients import B, make_batch, make_learner, make_population, tiny_cfg

torch.set_num_threads(1)


def hand_built_batch():
    batch = make_batch(3)
    batch.reward = torch.arange(B, dtype=torch.float32) - 5.0
    batch.terminated = (torch.arange(B) % 3 == 0).float()  # every third transition ends its episode
    return batch


def move_online_away_from_targets(learner) -> None:
    """After this the online encoders and heads differ from their targets (a target computed with the online
    networks would not match the expected numbers)."""
    with torch.no_grad():
        for p in learner.encoders.parameters():
            p.mul_(1.5).add_(0.05)
        learner.marl_heads.mul_(-1.3)


def record_first_output(module, seen: dict, key: str):
    def hook(_module, _inputs, out) -> None:  # returns None: the output itself is left as it is
        seen.setdefault(key, out.detach().clone())

    return module.register_forward_hook(hook)


def test_td3_target_is_reward_plus_discounted_min_of_target_twins_at_the_smoothed_target_action():
    cfg = tiny_cfg("matd3")
    cfg.learner.gamma, cfg.learner.policy_noise, cfg.learner.noise_clip = 0.5, 0.3, 0.1
    learner = make_learner(cfg)
    move_online_away_from_targets(learner)
    batch = hand_built_batch()
    seen: dict = {}

    def target_twins(state, action):  # known values: twin 2 is always the smaller
        seen["state"], seen["action"] = state.clone(), action.clone()
        return torch.stack([action.sum(-1) + 1.0, action.sum(-1) - 2.0])

    learner.critic_targ.forward = target_twins
    record_first_output(learner.critic, seen, "q")  # the online twins of the critic loss
    enc_targ, heads_targ = copy.deepcopy(learner.encoders_targ), learner.marl_heads_targ.clone()
    noise_gen = torch.Generator().set_state(learner.generator.get_state())
    losses = learner.update(batch)

    lay = learner.layout
    a = lay.squash(heads_forward(enc_targ(batch.next_obs), heads_targ))  # the target policy on the target encoders
    noise = (torch.randn(a.shape, generator=noise_gen) * 0.3).clamp(-0.1, 0.1) * lay.scale
    assert (noise.abs() == 0.1 * lay.scale).any()  # some of the noise is clipped: the clip is exercised
    a_next = lay.flatten(lay.clamp(a + noise))
    torch.testing.assert_close(seen["state"], batch.next_state)
    torch.testing.assert_close(seen["action"], a_next)
    y = batch.reward + 0.5 * (1.0 - batch.terminated) * (a_next.sum(-1) - 2.0)
    expected = (seen["q"] - y).pow(2).mean(1).sum()  # both online twins regress the same target
    assert float(losses["critic"]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("encoder", ["online", "target"])
def test_pevfa_and_value_targets_on_a_hand_built_batch(encoder):
    cfg = tiny_cfg("race", pevfa_target_encoder=encoder)
    cfg.learner.gamma, cfg.learner.policy_noise = 0.5, 0.0  # no smoothing noise: the MARL target action is exact
    learner = make_learner(cfg)
    move_online_away_from_targets(learner)
    population = make_population(learner)
    batch = hand_built_batch()
    seen: dict = {}

    def marl_target_twins(state, action):
        return torch.stack([action.sum(-1) + 1.0, action.sum(-1) - 2.0])

    def pevfa_target_twins(state, action, heads, first_only=False):  # per team: sum of actions + sum of its heads
        seen["pevfa_state"], seen["pevfa_action"] = state.clone(), action.clone()
        q1 = action.sum(-1) + heads.sum((1, 2, 3))[:, None]
        return torch.stack([q1 + 0.5, q1])  # twin 2 is the smaller

    learner.critic_targ.forward = marl_target_twins
    learner.pevfa_targ.forward = pevfa_target_twins
    record_first_output(learner.pevfa, seen, "qt")  # the online PeVFA of the PeVFA loss
    record_first_output(learner.value, seen, "v")  # V_zeta(s) of the value loss
    draw = learner.draw_teams
    learner.draw_teams = lambda pop: seen.setdefault("teams", draw(pop))
    enc, enc_targ = copy.deepcopy(learner.encoders), copy.deepcopy(learner.encoders_targ)
    heads_targ = learner.marl_heads_targ.clone()
    losses = learner.update(batch, population)

    torch.set_grad_enabled(False)  # the expected values need no graph
    try:
        check_race_targets(learner, batch, seen, losses, enc if encoder == "online" else enc_targ, enc_targ, heads_targ)
    finally:
        torch.set_grad_enabled(True)


def check_race_targets(learner, batch, seen, losses, next_encoder, enc_targ, heads_targ) -> None:
    teams = seen["teams"][0]  # [K, N, A, d+1]: drawn from the population and the MARL team
    k, gamma, not_done = teams.shape[0], 0.5, 1.0 - batch.terminated
    z_next = next_encoder(batch.next_obs)
    a_teams = learner.policy(z_next, teams)  # [K, B, U]: each team's greedy next action, no smoothing (ERL-Re2)
    torch.testing.assert_close(seen["pevfa_action"], a_teams)
    torch.testing.assert_close(seen["pevfa_state"], batch.next_state.expand(k, B, -1))
    qt_next = a_teams.sum(-1) + teams.sum((1, 2, 3))[:, None]  # [K, B], min of the twins
    y = batch.reward + gamma * not_done * qt_next
    assert float(losses["pevfa"]) == pytest.approx(float((seen["qt"] - y).pow(2).mean((1, 2)).sum()), rel=1e-5)
    # F(s) = r + gamma * max(MARL critic's target value, best team's PeVFA target value) (value_target_factor: gamma)
    a_marl = learner.layout.flatten(learner.layout.squash(heads_forward(enc_targ(batch.next_obs), heads_targ)))
    q_next_marl = a_marl.sum(-1) - 2.0
    f = batch.reward + gamma * not_done * torch.maximum(q_next_marl, qt_next.max(0).values)
    assert float(losses["value"]) == pytest.approx(float((seen["v"] - f).pow(2).mean()), rel=1e-5)


def test_vfm_is_minus_the_pevfa_value_and_a_step_against_its_gradient_raises_that_value():
    learner = make_learner(tiny_cfg("race", vmm_beta=0.0))
    population = make_population(learner)
    batch = make_batch(4)
    learner._teams = teams = population[:2].detach()
    states = batch.state.expand(2, B, -1)

    def team_value() -> torch.Tensor:
        z = learner.encoders(batch.obs)
        return learner.pevfa(states, learner.policy(z, teams), teams, first_only=True).mean()

    vfm = learner.extra_encoder_losses(batch, learner.encoders(batch.obs), population)["vfm"]
    before = team_value()
    assert float(vfm.detach()) == pytest.approx(-float(before.detach()), rel=1e-6)
    params = list(learner.encoders.parameters())
    grads = torch.autograd.grad(vfm, params)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(1e-3 * g / norm)  # a small step of gradient descent on L_VFM
        after = team_value()
    assert float(after) > float(before.detach())
