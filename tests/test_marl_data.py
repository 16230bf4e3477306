"""`discrete.marl_data=own`: RACE-discrete's MARL critic and actor term learn from the MARL team's own episodes while
the PeVFA, V_zeta, VFM and VMM keep the shared batch (a diagnostic of the shared buffer, docs/results.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from racemarl.acting.rollout_discrete import run_discrete_episodes
from racemarl.algorithms.race_discrete import RaceDiscreteLearner
from racemarl.data.episode_buffer import EpisodeBuffer
from racemarl.train import RunError, Trainer
from tests.conftest import tiny_config
from tests.test_discrete import discrete_config, fake_batch, fake_smac  # noqa: F401  (fixture)


def _episode(marker: float, length: int = 3) -> dict[str, np.ndarray]:
    """A 1-agent episode whose rewards all equal `marker` (to tell episodes apart in a batch)."""
    return {
        "obs": np.zeros((length + 1, 1, 2), np.float32),
        "state": np.zeros((length + 1, 2), np.float32),
        "avail": np.ones((length + 1, 1, 3), bool),
        "actions": np.zeros((length, 1), np.int64),
        "reward": np.full(length, marker, np.float32),
        "terminated": np.zeros(length, np.float32),
    }


def test_buffer_tags_episodes_and_draws_the_marl_teams_alone():
    buf = EpisodeBuffer(8, 5, 1, 2, 2, 3, seed=0)
    buf.add(_episode(0.0))
    with pytest.raises(ValueError, match="no episode of the MARL team"):
        buf.sample(4, marl_only=True)
    for i in range(1, 10):  # 10 episodes into 8 slots: the first two are overwritten
        buf.add(_episode(float(i)), marl=i % 3 == 0)
    assert buf.marl_episodes() == 3  # episodes 3, 6 and 9
    own = buf.sample(64, marl_only=True)
    assert set(own.reward[:, 0].tolist()) == {3.0, 6.0, 9.0}  # only tagged episodes, each of them drawn
    shared = buf.sample(64)
    assert len(set(shared.reward[:, 0].tolist()) - {3.0, 6.0, 9.0}) > 0
    restored = EpisodeBuffer(8, 5, 1, 2, 2, 3)
    restored.load_state_dict(buf.state_dict())
    assert torch.equal(restored.marl, buf.marl)


def _learners(spec, cfg) -> tuple[RaceDiscreteLearner, RaceDiscreteLearner]:
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        out.append(RaceDiscreteLearner(spec, cfg, torch.Generator().manual_seed(0)))
    a, b = out
    assert _same(a, b)
    return a, b


def _same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


def _same(m1: torch.nn.Module, m2: torch.nn.Module) -> bool:
    return _same_weights(m1.state_dict(), m2.state_dict())


def test_the_marl_batch_alone_trains_the_marl_critic_and_the_shared_batch_the_pevfa(fake_smac):
    cfg = discrete_config("race", extra=["race.vmm_beta=0.1"])
    envs = fake_batch(4)
    probe = RaceDiscreteLearner(envs.spec, cfg, torch.Generator().manual_seed(0))
    buffer = EpisodeBuffer(
        8, envs.spec.episode_limit, envs.spec.n_agents, probe.obs_dim, envs.spec.state_dim, probe.n_actions, seed=1
    )
    heads = probe.marl_heads.detach()[None].expand(4, *probe.marl_heads.shape)
    rngs = [np.random.default_rng(i) for i in range(4)]
    run_discrete_episodes(envs, probe, heads, rngs, epsilon=np.ones(4), buffer=buffer, marl_row=0)
    assert buffer.marl.tolist()[:4] == [True, False, False, False]
    shared, other, own, own2 = (buffer.batch(torch.tensor(i)) for i in ([1, 2], [2, 3], [0, 0], [0, 3]))
    population = torch.randn(2, *probe.marl_heads.shape)

    # the same MARL batch, different shared batches: the MARL critic learns the same, the PeVFA does not
    a, b = _learners(envs.spec, cfg)
    a.update(shared, population, marl_batch=own)
    b.update(other, population, marl_batch=own)
    assert _same(a.critic, b.critic) and not _same(a.pevfa, b.pevfa)
    # the same shared batch, different MARL batches: the PeVFA and V_zeta learn the same, the MARL critic does not
    c, d = _learners(envs.spec, cfg)
    c.update(shared, population, marl_batch=own)
    d.update(shared, population, marl_batch=own2)
    assert _same(c.pevfa, d.pevfa) and _same(c.value, d.value) and not _same(c.critic, d.critic)
    assert not torch.equal(c.marl_heads, d.marl_heads)  # the actor term reads the MARL batch
    # a MARL batch equal to the shared batch is the default update (the encoders to rounding: their gradient is then
    # summed over two unrolls of the same episodes, not one)
    e, f = _learners(envs.spec, cfg)
    e.update(shared, population)
    f.update(shared, population, marl_batch=buffer.batch(torch.tensor([1, 2])))
    torch.testing.assert_close(e.state_dict(), f.state_dict(), rtol=1e-5, atol=1e-6)
    assert _same(e.critic, f.critic) and _same(e.pevfa, f.pevfa)


def test_race_run_with_its_own_marl_data_learns_from_tagged_episodes(fake_smac, tmp_path):
    cfg = discrete_config("race", extra=["discrete.marl_data=own"])
    with Trainer(cfg, tmp_path) as trainer:
        critic = {k: v.clone() for k, v in trainer.learner.critic.state_dict().items()}
        update, seen = trainer.learner.update, []
        sample, drawn = trainer.buffer.sample, {}

        def recording_sample(n, marl_only=False):
            out = sample(n, marl_only=marl_only)
            drawn[id(out)] = marl_only
            return out

        def recording_update(batch, population=None, pop_encoders=None, marl_batch=None):
            seen.append((drawn.get(id(batch)), None if marl_batch is None else drawn.get(id(marl_batch))))
            return update(batch, population, pop_encoders, marl_batch)

        trainer.buffer.sample = recording_sample
        trainer.learner.update = recording_update
        trainer.train()
        # every update: the shared batch drawn from all episodes, the MARL batch from the MARL team's tagged ones
        assert seen and set(seen) == {(False, True)}
        generations = trainer.progress.generation
        assert generations > 0 and trainer.buffer.marl_episodes() == generations  # one MARL episode per generation
        assert len(trainer.buffer) == generations * (1 + cfg.race.pop_size)
        assert trainer.progress.updates > 0 and not _same_weights(critic, trainer.learner.critic.state_dict())


def test_own_marl_data_is_refused_on_continuous_tasks(tmp_path):
    with pytest.raises(RunError, match="discrete.marl_data=own is for discrete tasks only"):
        Trainer(tiny_config("race", extra=["discrete.marl_data=own"]), tmp_path / "c")
    assert not (tmp_path / "c").exists()
