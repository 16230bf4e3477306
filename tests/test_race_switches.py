"""Every RACE switch is a run of the same code: each combination trains end to end and logs its metrics."""

import numpy as np
import pytest
import torch

from racemarl.algorithms.evolution import evolve, follow_sources
from racemarl.records.metrics import read_metrics
from racemarl.train import Trainer
from tests.conftest import tiny_config

RACE_METRICS = [
    "eval_return_marl",
    "eval_return_best_team",
    "fitness_max",
    "fitness_mean",
    "fitness_min",
    "injected_slot",
    "loss_critic",
    "loss_actor",
    "loss_pevfa",
    "loss_value",
]

SWITCHES = [
    ([], ["loss_vfm", "loss_vmm", "mi_estimate"], []),
    (["race.vmm_beta=0"], ["loss_vfm"], ["loss_vmm", "mi_estimate"]),
    (["race.vfm_pevfa=false"], ["loss_vmm"], ["loss_vfm"]),
    (["race.operators=row"], ["loss_vfm", "loss_vmm"], []),
    (["race.shared_encoder=false"], ["loss_vfm", "loss_vmm"], []),
    (["race.pevfa_teams_per_update=3", "race.episodes_per_team=2", "race.mutate_bias=false"], ["loss_vfm"], []),
    (["race.injection_interval=0"], ["loss_vfm"], ["injected_slot"]),
]


@pytest.mark.parametrize(
    "overrides, present, absent", SWITCHES, ids=lambda v: ",".join(v) if isinstance(v, list) else None
)
def test_race_switch_combination_runs_and_logs(tmp_path, overrides, present, absent):
    trainer = Trainer(tiny_config("race", total_steps=160, extra=overrides), tmp_path)
    trainer.train()
    last = read_metrics(tmp_path / "metrics.csv")[-1]
    expected = [m for m in RACE_METRICS + present if m not in absent]
    assert [m for m in expected if last[m] == ""] == []
    assert [m for m in absent if last[m] != ""] == []


def test_unshared_encoders_travel_with_their_heads_and_are_injected(tmp_path):
    trainer = Trainer(tiny_config("race", total_steps=160, extra=["race.shared_encoder=false"]), tmp_path)
    trainer.train()
    slot = trainer.progress.last_injected
    assert slot is not None
    assert torch.equal(trainer.population[slot], trainer.learner.marl_heads.detach())
    marl_enc = trainer.learner.encoder_params()
    assert all(torch.equal(trainer.pop_encoders[k][slot], v[0]) for k, v in marl_enc.items())
    others = [i for i in range(trainer.population.shape[0]) if i != slot]
    assert not any(torch.equal(trainer.pop_encoders["l1.weight"][i], marl_enc["l1.weight"][0]) for i in others)


def test_follow_sources_moves_encoders_like_heads():
    rng = np.random.default_rng(0)
    pop, n = 6, 3
    cfg = tiny_config("race").race
    cfg.mutation_prob = 0.0  # only crossover, so heads are exact copies of parents' heads
    heads = torch.randn(pop, n, 2, 5)
    tags = torch.arange(pop * n, dtype=torch.float32).view(pop, n, 1)  # a unique "encoder" per (team, agent)
    new_heads, report = evolve(heads, rng.normal(size=pop), torch.ones(n, 2, dtype=torch.bool), cfg, rng)
    new_tags = follow_sources(tags, report.sources)
    for p in range(pop):
        for i in range(n):
            src = int(new_tags[p, i, 0]) // n
            assert int(new_tags[p, i, 0]) % n == i  # agent i's encoder stays agent i's
            assert torch.equal(new_heads[p, i], heads[src, i])
