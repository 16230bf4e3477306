"""Gradient-flow tests for the MATD3 and RACE learners.

What must hold (RACE, ICML 2023):
- evolved heads W_j never receive an optimiser step and never get gradient (PeVFA and VFM read them detached);
- the VMM term (beta * value-weighted JSD MI) trains the encoders and the MI critic, never a critic;
- critics are only trained by their own TD losses;
- MATD3 targets move by tau; a non-finite batch or loss steps nothing (decided on the device) and
  `raise_if_non_finite` reports it with NonFiniteLossError.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from racemarl.algorithms.matd3 import MATD3, NonFiniteLossError, frozen
from racemarl.algorithms.race import RaceLearner
from racemarl.config import Config, NetConfig
from racemarl.data.buffer import Batch
from racemarl.envs.base import EnvSpec
from racemarl.nets.mi import jsd_mi_per_sample, value_weights
from racemarl.nets.policy import ActionLayout, init_heads

torch.set_num_threads(1)

OBS_DIMS = (5, 7, 4)
ACT_DIMS = (1, 2, 2)
STATE_DIM = 9
EMBED = 8
B = 16
POP = 4


def make_spec() -> EnvSpec:
    low = (np.array([-1.0], np.float32), np.array([-0.4, -0.4], np.float32), np.array([-1.0, -1.0], np.float32))
    high = tuple(-x for x in low)
    return EnvSpec(
        task="test/handmade",
        n_agents=3,
        obs_dims=OBS_DIMS,
        state_dim=STATE_DIM,
        act_dims=ACT_DIMS,
        discrete=False,
        episode_limit=10,
        act_low=low,
        act_high=high,
    )


def tiny_cfg(algo: str = "race", **race) -> Config:
    cfg = Config(algo=algo)
    cfg.net = NetConfig(encoder_hidden=16, embed_dim=EMBED, critic_hidden=[16, 16], policy_embed_dim=8)
    cfg.learner.batch_size = B
    cfg.learner.policy_delay = 1
    cfg.race.pop_size = POP
    cfg.race.mi_hidden = 16
    cfg.race.vmm_beta = 0.5
    cfg.race.pevfa_teams_per_update = 2
    for k, v in race.items():
        setattr(cfg.race, k, v)
    return cfg.validate()


def make_learner(cfg: Config, seed: int = 0) -> MATD3:
    torch.manual_seed(seed)  # parameter init
    cls = RaceLearner if cfg.algo == "race" else MATD3
    return cls(make_spec(), cfg, torch.Generator().manual_seed(seed))


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)

    def obs() -> torch.Tensor:
        o = torch.zeros(3, B, max(OBS_DIMS))
        for i, d in enumerate(OBS_DIMS):
            o[i, :, :d] = torch.randn(B, d, generator=g)
        return o

    return Batch(
        obs=obs(),
        state=torch.randn(B, STATE_DIM, generator=g),
        action=torch.rand(B, sum(ACT_DIMS), generator=g) * 0.8 - 0.4,
        reward=torch.randn(B, generator=g),
        next_obs=obs(),
        next_state=torch.randn(B, STATE_DIM, generator=g),
        terminated=(torch.rand(B, generator=g) < 0.2).float(),
    )


def make_population(learner: MATD3, seed: int = 1) -> torch.Tensor:
    lay: ActionLayout = learner.layout
    return init_heads(POP, 3, lay.max_act, EMBED, lay.row_mask, generator=torch.Generator().manual_seed(seed))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def params_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, f"no parameters under {prefix!r}"
    return all(torch.equal(a[k], b[k]) for k in keys)


def all_params_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    """Every tensor under `prefix` changed (catches a module that is only partly optimised)."""
    keys = [k for k in a if k.startswith(prefix) and not k.endswith("row_weight")]
    assert keys, f"no parameters under {prefix!r}"
    return all(not torch.equal(a[k], b[k]) for k in keys)


def no_grad(module: torch.nn.Module) -> bool:
    return all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in module.parameters())


def has_grad_everywhere(module: torch.nn.Module) -> bool:
    return all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in module.parameters())


def next_state_values(learner: RaceLearner, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """z_next and q_next exactly as MATD3.update computes them for the critic step."""
    with torch.no_grad():
        z_next = learner.encoders_targ(batch.next_obs)
        a_next = learner.smoothed_policy(z_next, learner.marl_heads_targ)
        q_next = learner.critic_targ(batch.next_state, a_next).min(0).values
    return z_next, q_next


# ----------------------------------------------------------------------------- RACE: population untouched


def test_race_update_never_steps_population_but_trains_marl_heads_and_encoders():
    learner = make_learner(tiny_cfg())
    pop = make_population(learner).requires_grad_(True)  # so that a gradient reaching it would show in pop.grad
    pop_before = pop.detach().clone()
    before = snapshot(learner)
    losses = learner.update(make_batch(), pop)
    after = snapshot(learner)

    assert torch.equal(pop, pop_before)  # bit-identical: EA heads never receive optimiser steps
    assert pop.grad is None
    assert set(losses) == {"critic", "pevfa", "value", "actor", "vfm", "vmm", "mi"}
    assert all(np.isfinite(v) for v in losses.values())
    for prefix in ("marl_heads", "encoders.", "critic.", "pevfa.", "value.", "mi_critic."):
        assert all_params_differ(before, after, prefix), prefix
    # targets moved too (policy_delay=1), but only part of the way
    for prefix in ("encoders_targ.", "critic_targ.", "pevfa_targ.", "marl_heads_targ"):
        assert not params_equal(before, after, prefix), prefix
    # marl head padding rows stay zero (agent 0 has one action dim)
    assert torch.count_nonzero(learner.marl_heads[0, 1]) == 0


def test_pevfa_loss_gives_no_gradient_to_any_team_heads():
    learner = make_learner(tiny_cfg())
    pop = make_population(learner).requires_grad_(True)
    batch = make_batch()
    z_next, q_next = next_state_values(learner, batch)
    losses = learner.extra_critic_losses(batch, z_next, q_next, pop)
    assert set(losses) == {"pevfa", "value"}
    teams = learner._teams
    assert teams.shape == (2, 3, 2, EMBED + 1)
    losses["pevfa"].backward()
    assert pop.grad is None or torch.count_nonzero(pop.grad) == 0
    assert learner.marl_heads.grad is None
    assert has_grad_everywhere(learner.pevfa.critic)
    assert no_grad(learner.encoders) and no_grad(learner.critic)


def test_vfm_term_trains_encoders_only_not_marl_heads():
    learner = make_learner(tiny_cfg(vmm_beta=0.0))
    batch = make_batch()
    # only the MARL team in the pool (population None): the VFM must still not touch its heads
    z = learner.encoders(batch.obs)
    losses = learner.extra_encoder_losses(batch, z, None)
    assert set(losses) == {"vfm"}
    with frozen(learner.critic_modules()):
        losses["vfm"].backward()
    assert learner.marl_heads.grad is None
    assert has_grad_everywhere(learner.encoders)
    assert no_grad(learner.pevfa) and no_grad(learner.critic)


def test_vfm_term_never_backpropagates_into_population_heads():
    """Even a population tensor that requires grad gets no gradient from the VFM term."""
    learner = make_learner(tiny_cfg(vmm_beta=0.0, pevfa_teams_per_update=8))
    pop = make_population(learner).requires_grad_(True)
    batch = make_batch()
    z = learner.encoders(batch.obs)
    losses = learner.extra_encoder_losses(batch, z, pop)
    losses["vfm"].backward()
    leaked = 0 if pop.grad is None else int(torch.count_nonzero(pop.grad))
    assert leaked == 0, f"VFM loss put gradient on {leaked} population head entries"


# ----------------------------------------------------------------------------- VMM


def test_vmm_term_trains_encoders_and_mi_critic_only():
    learner = make_learner(tiny_cfg(vfm_pevfa=False, vmm_beta=0.5))
    pop = make_population(learner)
    batch = make_batch()
    z = learner.encoders(batch.obs)
    losses = learner.extra_encoder_losses(batch, z, pop)
    assert set(losses) == {"vmm"}
    with torch.no_grad():  # L = -beta * mean_{i,t} w(s_t) I_t(z_i; s), w from V_zeta over the batch
        mi = jsd_mi_per_sample(learner.mi_critic(batch.state, z))
        w = value_weights(learner.value(batch.state))
    torch.testing.assert_close(losses["vmm"].detach(), -0.5 * (w[None, :] * mi).mean())
    losses["vmm"].backward()
    assert has_grad_everywhere(learner.encoders)
    assert has_grad_everywhere(learner.mi_critic)
    assert no_grad(learner.critic) and no_grad(learner.pevfa) and no_grad(learner.value)
    assert learner.marl_heads.grad is None
    # and it scales with beta (the loss is beta * L_VMM)
    learner.rcfg.vmm_beta = 1.0
    loss1 = learner.extra_encoder_losses(batch, learner.encoders(batch.obs), pop)["vmm"]
    torch.testing.assert_close(loss1 * 0.5, losses["vmm"])


def test_no_extra_encoder_losses_when_vfm_off_and_beta_zero():
    learner = make_learner(tiny_cfg(vfm_pevfa=False, vmm_beta=0.0))
    batch = make_batch()
    assert learner.extra_encoder_losses(batch, learner.encoders(batch.obs), None) == {}
    losses = learner.update(batch, make_population(learner))
    assert set(losses) == {"critic", "pevfa", "value", "actor"}


def test_vmm_changes_encoder_but_not_critics_in_full_update():
    """Same seed, beta = 0 vs beta > 0: the critics (trained in the critic step, before the encoder
    step) and the MARL heads (whose only loss is the actor loss) end bit-identical; the encoders differ."""
    batch, results = make_batch(3), {}
    for beta in (0.0, 0.5):
        learner = make_learner(tiny_cfg(vmm_beta=beta), seed=5)
        pop = make_population(learner)
        before = snapshot(learner)
        learner.update(batch, pop)
        results[beta] = (before, snapshot(learner))
    (b0, a0), (b1, a1) = results[0.0], results[0.5]
    assert all(torch.equal(b0[k], b1[k]) for k in b0)  # same start
    for prefix in ("critic.", "critic_targ.", "pevfa.", "pevfa_targ.", "value.", "marl_heads"):
        assert params_equal(a0, a1, prefix), prefix
    assert all_params_differ(a0, a1, "encoders.")
    assert not params_equal(a0, a1, "encoders_targ.")
    # the MI critic only moves when the VMM term is on
    assert params_equal(b0, a0, "mi_critic.")
    assert all_params_differ(b1, a1, "mi_critic.")


# ----------------------------------------------------------------------------- MATD3


def test_matd3_update_losses_and_soft_targets():
    cfg = tiny_cfg("matd3")
    cfg.learner.tau = 0.3  # large enough to tell tau from 1 - tau, 0 or 1
    learner = make_learner(cfg)
    assert not hasattr(learner, "pevfa")
    before = snapshot(learner)
    losses = learner.update(make_batch())
    after = snapshot(learner)
    assert set(losses) == {"critic", "actor"}
    assert all(np.isfinite(v) for v in losses.values())
    tau = cfg.learner.tau
    pairs = [("critic_targ.", "critic."), ("encoders_targ.", "encoders."), ("marl_heads_targ", "marl_heads")]
    for targ, online in pairs:
        keys = [k for k in before if k.startswith(targ)]
        assert keys
        for k in keys:
            src = online + k[len(targ) :]
            assert not torch.equal(before[src], after[src]), src  # online net was trained
            expected = before[k] + tau * (after[src] - before[k])
            torch.testing.assert_close(after[k], expected, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(after[k], after[src])


def test_matd3_policy_delay_skips_actor_encoder_and_targets():
    cfg = tiny_cfg("matd3")
    cfg.learner.policy_delay = 2
    learner = make_learner(cfg)
    before = snapshot(learner)
    losses = learner.update(make_batch(0))
    mid = snapshot(learner)
    assert set(losses) == {"critic"}
    assert not params_equal(before, mid, "critic.")
    for prefix in ("marl_heads", "encoders.", "critic_targ.", "encoders_targ.", "marl_heads_targ"):
        assert params_equal(before, mid, prefix), prefix
    losses = learner.update(make_batch(1))
    after = snapshot(learner)
    assert set(losses) == {"critic", "actor"}
    for prefix in ("marl_heads", "encoders.", "critic_targ.", "encoders_targ."):
        assert not params_equal(mid, after, prefix), prefix


# ----------------------------------------------------------------------------- non-finite losses


def optimizer_states(learner: MATD3) -> dict:
    return copy.deepcopy({k: o.state_dict() for k, o in learner.optimizers().items()})


def assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        sa, sb = a[name]["state"], b[name]["state"]
        assert sa.keys() == sb.keys(), name
        for pid in sa:
            for key in sa[pid]:
                assert torch.equal(torch.as_tensor(sa[pid][key]), torch.as_tensor(sb[pid][key])), (name, pid, key)


@pytest.mark.parametrize("algo", ["race", "matd3"])
def test_nan_reward_is_skipped_on_the_device_and_reported(algo):
    """`update()` reads nothing on the host: a NaN batch makes that update a no-op on the device (parameters,
    targets and optimiser states untouched) and is reported by `raise_if_non_finite()`, the one host read."""
    learner = make_learner(tiny_cfg(algo))
    pop = make_population(learner) if algo == "race" else None
    learner.update(make_batch(0), pop)  # one good update, so optimiser states are non-empty
    learner.raise_if_non_finite()  # nothing to report
    before, opt_before, n_before = snapshot(learner), optimizer_states(learner), learner.n_updates
    bad = make_batch(1)
    bad.reward[3] = float("nan")
    learner.update(bad, pop)
    after = snapshot(learner)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert_same_optimizer_state(opt_before, optimizer_states(learner))
    assert learner.n_updates == n_before + 1  # update calls are counted; the update changed nothing
    learner.update(make_batch(2), pop)  # a later good update still trains
    assert not all(torch.equal(after[k], v) for k, v in snapshot(learner).items())
    with pytest.raises(NonFiniteLossError, match=f"non-finite values in the sampled batch at update {n_before + 1}"):
        learner.raise_if_non_finite()
    learner.raise_if_non_finite()  # the record was read and cleared


def test_nan_in_observations_rejects_the_whole_update():
    """A NaN that only the encoder step would read must not leave a half-applied update (critics stepped)."""
    learner = make_learner(tiny_cfg("race"))
    pop = make_population(learner)
    learner.update(make_batch(0), pop)
    before, n_before = snapshot(learner), learner.n_updates
    bad = make_batch(1)
    bad.obs[1, 4, 0] = float("nan")
    learner.update(bad, pop)
    after = snapshot(learner)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"parameters stepped by a non-finite update: {changed[:5]}"
    with pytest.raises(NonFiniteLossError, match=f"at update {n_before + 1}"):
        learner.raise_if_non_finite()


def assert_uniform_over_population_and_marl(drawn: torch.Tensor, population: torch.Tensor, marl: torch.Tensor) -> None:
    """Every drawn team is exactly one team of population + MARL team, and each of those P + 1 teams (the MARL team
    included) is drawn about 1/(P + 1) of the time (the poster: K teams drawn from the population and the MARL team)."""
    pool = torch.cat([population, marl[None]]).flatten(1)
    match = (drawn.flatten(1)[:, None, :] == pool[None]).all(-1)  # [K, P + 1]
    assert torch.equal(match.sum(1), torch.ones(len(drawn), dtype=torch.long))
    share = match.float().mean(0)  # K = 2000: the standard error of a share is under 0.01
    assert share[-1] > 0.1, "the MARL team is never drawn"
    assert torch.allclose(share, torch.full_like(share, 1 / len(pool)), atol=0.05), share


def test_pevfa_teams_are_drawn_uniformly_from_the_population_and_the_marl_team():
    learner = make_learner(tiny_cfg(pevfa_teams_per_update=2000))
    pop = make_population(learner)
    drawn, encoders = learner.draw_teams(pop)
    assert encoders is None and not drawn.requires_grad
    assert_uniform_over_population_and_marl(drawn, pop, learner.marl_heads.detach())
