"""Discrete tasks: recurrent encoders, the mixed critic, TD(lambda), masking, FACMAC and RACE-discrete."""

from __future__ import annotations

import csv
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from racemarl.acting.rollout_discrete import run_discrete_episodes, sample_actions
from racemarl.algorithms.facmac import (
    FACMAC,
    gumbel_straight_through,
    masked_logits,
    td_lambda_targets,
    team_logits,
)
from racemarl.algorithms.race_discrete import RaceDiscreteLearner
from racemarl.config import build_config
from racemarl.data.episode_buffer import EpisodeBatch, EpisodeBuffer
from racemarl.envs.base import EnvSpec
from racemarl.envs.batch import ListBatch, make_env_batch
from racemarl.envs.smac import SMAC_MAPS, SmacEnv
from racemarl.nets.mixer import MixedCritic, QMixer
from racemarl.nets.recurrent import RecurrentEncoders
from racemarl.train import RunError, Trainer
from tests.fakes import FakeStarCraft2Env

TINY_DISCRETE = [
    "discrete.batch_episodes=4",
    "discrete.buffer_episodes=64",
    "discrete.rnn_hidden=16",
    "discrete.critic_hidden=[16]",
    "discrete.mixer_embed=8",
    "discrete.hypernet_hidden=16",
    "net.policy_embed_dim=8",
    "race.mi_hidden=8",
    "race.pop_size=2",
    "discrete.target_update_interval=5",
]


def discrete_config(algo: str, task: str = "smac/3m", total_steps: int = 120, extra=(), **top):
    top = {"eval_interval": 60, "eval_episodes": 2, "progress": False, "env": {"task": task}, **top}
    return build_config(None, TINY_DISCRETE + list(extra), algo=algo, total_steps=total_steps, **top)


@pytest.fixture
def fake_smac(monkeypatch):
    """`smac.env.StarCraft2Env` replaced by the FAKE in tests/fakes.py (StarCraft II cannot run here)."""

    def factory(**kwargs):
        return FakeStarCraft2Env(**kwargs, episode_limit=SMAC_MAPS[kwargs["map_name"]] // 3)

    smac_mod, env_mod = types.ModuleType("smac"), types.ModuleType("smac.env")
    env_mod.StarCraft2Env = factory
    smac_mod.env = env_mod
    monkeypatch.setitem(sys.modules, "smac", smac_mod)
    monkeypatch.setitem(sys.modules, "smac.env", env_mod)
    return factory


def fake_batch(n: int, reseed: str = "first", **kw) -> ListBatch:
    return ListBatch(
        [SmacEnv("3m", reseed=reseed, env_factory=lambda **k: FakeStarCraft2Env(**k, **kw)) for _ in range(n)]
    )


# ---------------------------------------------------------------- networks


@pytest.mark.parametrize("shared", [True, False])
def test_recurrent_step_matches_unroll_and_episodes_are_independent(shared):
    torch.manual_seed(0)
    enc = RecurrentEncoders(n_agents=3, obs_dim=5, n_actions=4, hidden=8, shared=shared)
    obs = torch.randn(2, 6, 3, 5)
    last = F.one_hot(torch.randint(0, 4, (2, 6, 3)), 4).float()
    unrolled = enc(obs, last)
    h = enc.initial_state(2)
    for t in range(6):
        h = enc.step(obs[:, t], last[:, t], h)
        torch.testing.assert_close(h, unrolled[:, t], rtol=1e-5, atol=1e-6)
    # each episode of a batch starts from a zero hidden state: episode 1 alone gives the same states
    torch.testing.assert_close(enc(obs[1:], last[1:]), unrolled[1:], rtol=1e-5, atol=1e-6)
    if not shared:  # agent i's encoder sees only agent i's inputs
        obs2 = obs.clone()
        obs2[..., 0, :] += 1.0
        out2 = enc(obs2, last)
        assert torch.allclose(out2[..., 1:, :], unrolled[..., 1:, :]) and not torch.allclose(
            out2[..., 0, :], unrolled[..., 0, :]
        )


def test_mixer_is_monotonic_in_every_agent_value():
    torch.manual_seed(0)
    mixer = QMixer(n_agents=4, state_dim=6, embed=8, hypernet_hidden=16)
    q = torch.randn(32, 4, requires_grad=True)
    mixer(q, torch.randn(32, 6)).sum().backward()
    assert (q.grad >= 0).all() and (q.grad > 0).any()


def test_mixed_critic_shapes_with_and_without_conditioning():
    critic = MixedCritic(3, 5, 4, 7, [16], 8, 16, extra_dim=2)
    out = critic(torch.randn(2, 6, 3, 5), torch.randn(2, 6, 3, 4), torch.randn(2, 6, 7), torch.randn(2, 6, 2))
    assert out.shape == (2, 6)


def _td_lambda_reference(r, term, length, q, gamma, lam):
    """Forward view: G_t = (1 - lam) sum_n lam^(n-1) G_t^(n) + lam^(L-t-1) G_t^(L-t)."""
    out = np.zeros(len(r))
    for t in range(length):

        def n_step(n, t=t):
            g, disc = 0.0, 1.0
            for k in range(n):
                g += disc * r[t + k]
                if term[t + k]:
                    return g
                disc *= gamma
            return g + disc * q[t + n]

        horizon = length - t
        out[t] = sum((1 - lam) * lam ** (n - 1) * n_step(n) for n in range(1, horizon)) + lam ** (horizon - 1) * n_step(
            horizon
        )
    return out


@pytest.mark.parametrize("lam", [0.0, 0.8, 1.0])
def test_td_lambda_matches_the_forward_view(lam):
    rng = np.random.default_rng(0)
    t_max, gamma = 7, 0.9
    lengths, terminal = [7, 4, 5], [False, True, False]
    r = rng.normal(size=(3, t_max))
    q = rng.normal(size=(3, t_max + 1))
    term = np.zeros((3, t_max))
    mask = np.zeros((3, t_max))
    for b, (length, ends) in enumerate(zip(lengths, terminal)):
        mask[b, :length] = 1
        term[b, length - 1] = float(ends)
    got = td_lambda_targets(*(torch.tensor(x) for x in (r, term, mask, q)), gamma, lam).numpy()
    for b, length in enumerate(lengths):
        want = _td_lambda_reference(r[b], term[b], length, q[b], gamma, lam)
        np.testing.assert_allclose(got[b, :length], want[:length], rtol=1e-10)


# ---------------------------------------------------------------- masking


def test_gumbel_and_sampling_never_pick_unavailable_actions():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[5.0, 0.0, 9.0, 1.0]]).expand(2000, 4).clone().requires_grad_(True)
    avail = torch.tensor([[1.0, 1.0, 0.0, 1.0]]).expand(2000, 4)
    y = gumbel_straight_through(masked_logits(logits, avail), gen)
    assert (y[:, 2] == 0).all() and torch.allclose(y.sum(-1), torch.ones(2000))
    assert set(y.argmax(-1).tolist()) == {0, 1, 3}  # all available ones do get sampled
    (y * torch.arange(4.0)).sum().backward()
    assert logits.grad[:, 2].abs().max() == 0  # no gradient through a masked action
    rng = np.random.default_rng(0)
    probs = np.array([[0.0, 0.5, 0.0, 0.5]] * 3)
    draws = np.concatenate([sample_actions(probs, rng) for _ in range(500)])
    assert set(draws.tolist()) == {1, 3}


def test_rollouts_and_targets_only_use_available_actions(fake_smac):
    cfg = discrete_config("facmac")
    spec = fake_batch(1).spec
    learner = FACMAC(spec, cfg, torch.Generator().manual_seed(0))
    buffer = EpisodeBuffer(16, spec.episode_limit, spec.n_agents, max(spec.obs_dims), spec.state_dim, spec.act_dims[0])
    envs = fake_batch(4)
    heads = learner.marl_heads.detach()[None].expand(4, *learner.marl_heads.shape)
    rngs = [np.random.default_rng(i) for i in range(4)]
    # rows 0-1 explore uniformly, 2 samples its softmax, 3 is greedy; the SMAC fake asserts availability
    stats = run_discrete_episodes(
        envs,
        learner,
        heads,
        rngs,
        epsilon=np.array([1.0, 1.0, 0.0, 0.0]),
        greedy=np.array([False, False, False, True]),
        buffer=buffer,
    )
    assert len(buffer) == 4 and (stats.lengths > 0).all()
    batch = buffer.sample(8)
    taken = batch.avail[:, :-1].gather(-1, batch.actions[..., None]).squeeze(-1)
    assert (taken[batch.mask > 0] == 1).all()
    # the critic targets are built from the target policy's greedy actions: record what the target critic sees
    seen = []
    original = learner.critic_targ.forward
    learner.critic_targ.forward = lambda obs, act, state, extra=None: (
        seen.append(act),
        original(obs, act, state, extra),
    )[1]
    with torch.no_grad():  # make unavailable actions the most attractive ones
        learner.marl_heads_targ[..., -1] = 100.0 * (1 - batch.avail[0, 0, 0])
    learner.update(batch)
    acts = seen[0]
    t_max = batch.mask.shape[1]
    assert ((acts * (1 - batch.avail)).sum(-1)[:, :t_max][batch.mask > 0] == 0).all()


def test_recurrent_state_restarts_with_every_episode(fake_smac):
    """Two calls with the same seeds give the same episodes: nothing of the first episode's hidden
    state or last actions leaks into the next one."""
    cfg = discrete_config("facmac")
    envs = fake_batch(3, reseed="recreate")  # the fake game is relaunched with each episode's seed
    learner = FACMAC(envs.spec, cfg, torch.Generator().manual_seed(0))
    heads = learner.marl_heads.detach()[None].expand(3, *learner.marl_heads.shape)
    spec = envs.spec

    def play():
        buf = EpisodeBuffer(8, spec.episode_limit, spec.n_agents, max(spec.obs_dims), spec.state_dim, spec.act_dims[0])
        stats = run_discrete_episodes(
            envs, learner, heads, [np.random.default_rng([7, i]) for i in range(3)], epsilon=np.full(3, 0.3), buffer=buf
        )
        return stats, buf

    (s1, b1), (s2, b2) = play(), play()
    np.testing.assert_array_equal(s1.returns, s2.returns)
    for k in ("actions", "obs"):
        assert torch.equal(b1.data[k][:3], b2.data[k][:3])


# ---------------------------------------------------------------- learners


def test_race_discrete_draws_pevfa_teams_uniformly_from_the_population_and_the_marl_team(fake_smac):
    from tests.test_learner_gradients import assert_uniform_over_population_and_marl

    cfg = discrete_config("race", extra=["race.pevfa_teams_per_update=2000"])
    learner = RaceDiscreteLearner(fake_batch(1).spec, cfg, torch.Generator().manual_seed(0))
    population = torch.randn(4, *learner.marl_heads.shape)
    drawn = learner.draw_teams(population)
    assert not drawn.requires_grad
    assert_uniform_over_population_and_marl(drawn, population, learner.marl_heads.detach())


def test_race_discrete_gradients_reach_only_their_targets(fake_smac):
    cfg = discrete_config("race", extra=["race.vmm_beta=0.1"])
    envs = fake_batch(2)
    learner = RaceDiscreteLearner(envs.spec, cfg, torch.Generator().manual_seed(0))
    buffer = EpisodeBuffer(
        8, envs.spec.episode_limit, envs.spec.n_agents, learner.obs_dim, envs.spec.state_dim, learner.n_actions
    )
    heads = learner.marl_heads.detach()[None].expand(2, *learner.marl_heads.shape)
    run_discrete_episodes(
        envs, learner, heads, [np.random.default_rng(i) for i in range(2)], epsilon=np.ones(2), buffer=buffer
    )
    batch = buffer.sample(2)
    population = torch.randn(2, *learner.marl_heads.shape, requires_grad=True)
    z_targ = learner.unroll(batch, target=True)
    q_next = torch.zeros(batch.reward.shape[0], batch.reward.shape[1] + 1)
    critic_losses = learner.extra_critic_losses(batch, z_targ, q_next, population)
    sum(critic_losses.values()).backward()
    assert population.grad is None  # the PeVFA never pushes gradient into the heads it evaluates
    assert all(p.grad is not None for p in learner.pevfa.critic.parameters())
    assert learner.marl_heads.grad is None and all(p.grad is None for p in learner.encoders.parameters())
    learner.zero_grad(set_to_none=True)
    from racemarl.algorithms.matd3 import frozen

    with frozen(learner.critic_modules()):
        losses = learner.extra_encoder_losses(batch, learner.unroll(batch), population)
        (losses["vfm"] + losses["vmm"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.encoders.parameters())
    assert learner.marl_heads.grad is None and population.grad is None  # VFM trains encoders, not heads
    assert all(p.grad is None for p in learner.pevfa.parameters()) and all(
        p.grad is None for p in learner.value.parameters()
    )
    assert all(p.grad is not None for p in learner.mi_critic.parameters())  # T_omega ascends the same bound


def check_discrete_run(trainer: Trainer, rows: list[dict], eval_episodes: int, before: dict) -> None:
    """What every evaluation row and a short discrete run must satisfy, whatever the algorithm: win rates count whole
    episodes, the headline is the better team (by win rate, then return) and each part that trains has moved."""
    cfg = trainer.cfg
    teams = [t for t, used in (("marl", cfg.uses_marl), ("best_team", cfg.uses_population)) if used]
    for r in rows:
        for key in ["eval_win_rate"] + [f"eval_win_rate_{t}" for t in teams]:
            wins = float(r[key]) * eval_episodes
            assert 0 <= wins <= eval_episodes and wins == pytest.approx(round(wins), abs=1e-4)  # whole episodes won
        best = max(teams, key=lambda t: (float(r[f"eval_win_rate_{t}"]), float(r[f"eval_return_{t}"])))
        assert float(r["eval_win_rate"]) == float(r[f"eval_win_rate_{best}"])
        assert float(r["eval_return"]) == float(r[f"eval_return_{best}"])
    last = rows[-1]
    if cfg.uses_marl:  # the agents' encoders and the mixed critic learned
        assert int(last["updates"]) > 0 and np.isfinite(float(last["loss_critic"]))
        assert float(last["grad_enc_actor"]) > 0
        for name in ("encoders", "critic"):
            now = getattr(trainer.learner, name).state_dict()
            assert any(not torch.equal(before[name][k], v) for k, v in now.items()), f"{name} did not move"
    else:
        assert int(last["updates"]) == 0 and last["eval_win_rate_marl"] == ""
    if cfg.uses_population:
        assert not torch.equal(trainer.population, before["population"])  # evolution changed the heads
    if cfg.algo == "race":  # VFM and VMM act on the encoders
        assert float(last["grad_enc_vfm"]) > 0 and float(last["grad_enc_vmm"]) > 0
        assert np.isfinite(float(last["loss_pevfa"])) and np.isfinite(float(last["loss_vmm"]))


def _snapshot(trainer: Trainer) -> dict:
    out = {
        n: {k: v.clone() for k, v in getattr(trainer.learner, n).state_dict().items()} for n in ("encoders", "critic")
    }
    out["population"] = None if trainer.population is None else trainer.population.clone()
    return out


@pytest.mark.parametrize("algo", ["facmac", "race", "ea"])
def test_tiny_runs_on_fake_smac(fake_smac, tmp_path, algo):
    cfg = discrete_config(algo)
    with Trainer(cfg, tmp_path) as trainer:
        before = _snapshot(trainer)
        summary = trainer.train()
        rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
        check_discrete_run(trainer, rows, cfg.eval_episodes, before)
    assert summary["total_env_steps"] >= 120
    last = rows[-1]
    assert summary["final_eval_win_rate"] == pytest.approx(float(last["eval_win_rate"]), abs=1e-5)
    assert summary["best_eval_win_rate"] == pytest.approx(max(float(r["eval_win_rate"]) for r in rows), abs=1e-5)


def test_discrete_resume_is_exact(tmp_path):
    """On SMAX every episode's key comes from a seed, so N + resume + N equals 2N exactly. (Real SMAC
    seeds StarCraft II once per launch, so a resumed SMAC run continues with fresh game randomness.)"""
    pytest.importorskip("jaxmarl")
    kw = {"task": "smax/3m", "eval_episodes": 3, "eval_interval": 1}  # an evaluation after every generation
    straight = Trainer(discrete_config("race", total_steps=160, **kw), tmp_path / "a")
    straight.train()
    first = Trainer(discrete_config("race", total_steps=80, **kw), tmp_path / "b")
    first.train()
    cfg = discrete_config("race", total_steps=160, **kw)
    resumed = Trainer(cfg, tmp_path / "b", resume=True)
    resumed.train()
    a = [
        {k: v for k, v in r.items() if k not in ("wall_time", "sps")}
        for r in csv.DictReader((tmp_path / "a/metrics.csv").open())
    ]
    b = [
        {k: v for k, v in r.items() if k not in ("wall_time", "sps")}
        for r in csv.DictReader((tmp_path / "b/metrics.csv").open())
    ]
    assert a == b
    torch.testing.assert_close(straight.population, resumed.population, rtol=0, atol=0)
    torch.testing.assert_close(straight.learner.marl_heads, resumed.learner.marl_heads, rtol=0, atol=0)


def test_discrete_config_errors(fake_smac, tmp_path):
    with pytest.raises(RunError, match="use --algo facmac"):
        Trainer(discrete_config("matd3"), tmp_path / "m")
    with pytest.raises(RunError, match="continuous tasks only"):
        Trainer(discrete_config("race", extra=["race.shared_encoder=false"]), tmp_path / "s")


def _coordination_batch(gen: torch.Generator, b: int = 64, t: int = 3) -> EpisodeBatch:
    """Episodes of a repeated game under uniformly random play: each step pays 1 per agent that picks
    action 2 plus 1 if both do; the last step terminates. Action 1 is unavailable to agent 1. The
    state is the time step (one-hot), the observations are noise."""
    avail = torch.ones(b, t + 1, 2, 3)
    avail[..., 1, 1] = 0
    actions = torch.randint(0, 3, (b, t, 2), generator=gen)
    actions[..., 1] = torch.where(actions[..., 1] == 1, torch.zeros_like(actions[..., 1]), actions[..., 1])
    good = (actions == 2).float()
    terminated = torch.zeros(b, t)
    terminated[:, -1] = 1
    state = torch.eye(t + 1).expand(b, t + 1, t + 1)
    return EpisodeBatch(
        obs=torch.randn(b, t + 1, 2, 4, generator=gen),
        state=state,
        avail=avail,
        actions=actions,
        reward=good.sum(-1) + good.prod(-1),
        terminated=terminated,
        mask=torch.ones(b, t),
    )


@pytest.mark.parametrize("learner_cls", [FACMAC, RaceDiscreteLearner])
def test_learners_solve_a_coordination_game_from_replayed_episodes(learner_cls):
    """Off-policy learning from episodes: the critic learns the payoffs, the MARL heads (through the
    mixed critic and Gumbel-softmax) move almost all probability to the rewarded action."""
    cfg = discrete_config("race", extra=["discrete.critic_hidden=[32]", "discrete.target_update_interval=20"])
    spec = EnvSpec(
        task="game", n_agents=2, obs_dims=(4, 4), state_dim=4, act_dims=(3, 3), discrete=True, episode_limit=3
    )
    learner = learner_cls(spec, cfg, torch.Generator().manual_seed(0))
    population = torch.randn(2, *learner.marl_heads.shape) * 0.1
    gen = torch.Generator().manual_seed(1)

    def policy_of_action_2():
        batch = _coordination_batch(gen)
        with torch.no_grad():
            logits = masked_logits(team_logits(learner.unroll(batch)[:, :3], learner.marl_heads), batch.avail[:, :3])
        return torch.softmax(logits, -1)[..., 2].mean().item()

    before = policy_of_action_2()
    first = learner.update(_coordination_batch(gen), population)
    for _ in range(250):
        losses = learner.update(_coordination_batch(gen), population)
    assert before < 0.5 and policy_of_action_2() > 0.9
    assert losses["critic"] < 0.25 * first["critic"]


# ---------------------------------------------------------------- SMAX (jax)


def test_smax_tiny_race_run(tmp_path):
    pytest.importorskip("jaxmarl")
    cfg = discrete_config("race", task="smax/3m", total_steps=100, eval_episodes=3)
    with Trainer(cfg, tmp_path) as trainer:
        before = _snapshot(trainer)
        summary = trainer.train()
        rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
        check_discrete_run(trainer, rows, cfg.eval_episodes, before)
    assert summary["total_env_steps"] >= 100


def test_smax_env_batch_matches_single_envs():
    pytest.importorskip("jaxmarl")
    batch = make_env_batch("smax/3m", 3)
    obs, state, avail = batch.reset([1, 2, 3])
    assert obs.shape[:2] == (3, 3) and avail.shape == (3, 3, batch.spec.act_dims[0])


# ---------------------------------------------------------------- FACMAC on continuous tasks


def test_facmac_continuous_tiny_run(tmp_path):
    from racemarl.algorithms.facmac import FacmacContinuous
    from tests.conftest import tiny_config

    cfg = tiny_config("facmac", extra=["env.task=mamujoco/HalfCheetah-2x3"])
    trainer = Trainer(cfg, tmp_path)
    assert isinstance(trainer.learner, FacmacContinuous) and isinstance(trainer.learner.critic, MixedCritic)
    before = [p.detach().clone() for p in trainer.learner.critic.parameters()]
    trainer.train()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert rows[-1]["loss_critic"] and rows[-1]["loss_actor"] and rows[-1]["eval_win_rate"] == ""
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.learner.critic.parameters()))


def test_eval_command_on_a_discrete_run(fake_smac, tmp_path):
    from racemarl.cli import main

    Trainer(discrete_config("race"), tmp_path / "run").train()
    assert (
        main(["eval", str(tmp_path / "run"), "--episodes", "3", "--team", "best", "--out", str(tmp_path / "e.json")])
        == 0
    )
    import json

    result = json.loads((tmp_path / "e.json").read_text())
    assert len(result["returns"]) == 3 and 0.0 <= result["win_rate"] <= 1.0 and result["team"] == "best"
