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
    ([], ["loss_vfm", "loss_vmm", "mi_estimate", "grad_enc_vfm", "grad_enc_vmm"], []),
    (["race.vmm_beta=0"], ["loss_vfm", "grad_enc_vfm"], ["loss_vmm", "mi_estimate", "grad_enc_vmm"]),
    (["race.vfm_pevfa=false"], ["loss_vmm", "grad_enc_vmm"], ["loss_vfm", "grad_enc_vfm"]),
    (["race.operators=row"], ["loss_vfm", "loss_vmm"], []),
    (["race.shared_encoder=false"], ["loss_vfm", "loss_vmm"], []),
    (["race.pevfa_teams_per_update=3", "race.episodes_per_team=2", "race.mutate_bias=false"], ["loss_vfm"], []),
    (["race.injection_interval=0"], ["loss_vfm"], ["injected_slot"]),
]


def _moved(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize(
    "overrides, present, absent", SWITCHES, ids=lambda v: ",".join(v) if isinstance(v, list) else None
)
def test_race_switch_combination_runs_and_logs(tmp_path, overrides, present, absent):
    cfg = tiny_config("race", total_steps=160, extra=overrides)
    with Trainer(cfg, tmp_path) as trainer:
        learner = trainer.learner
        parts = {n: getattr(learner, n) for n in ("encoders", "critic", "pevfa", "value", "mi_critic")}
        before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in parts.items()}
        trainer.train()
        rows = read_metrics(tmp_path / "metrics.csv")
        last = rows[-1]
        expected = [m for m in RACE_METRICS + present if m not in absent]
        assert [m for m in expected if last[m] == ""] == []
        assert [m for m in absent if last[m] != ""] == []
        assert all(np.isfinite(float(last[m])) for m in expected)
        # what trains under this switch: every critic and the encoders; the MI critic only where VMM is on
        moved = {n: _moved(before[n], m) for n, m in parts.items()}
        assert moved == {
            "encoders": True,
            "critic": True,
            "pevfa": True,
            "value": True,
            "mi_critic": cfg.race.vmm_beta > 0,
        }
        # the headline is the better of the two teams at every evaluation
        for r in rows:
            assert float(r["eval_return"]) == max(float(r["eval_return_marl"]), float(r["eval_return_best_team"]))
        # generations after the warm-up: the MARL team's episode and episodes_per_team episodes of every team
        rc, episode = cfg.race, cfg.env.max_episode_steps
        played = trainer.progress.env_steps - cfg.learner.start_steps
        assert played > 0 and played % (episode * (1 + rc.pop_size * rc.episodes_per_team)) == 0
        marl = learner.marl_heads.detach()
        copies = [j for j in range(rc.pop_size) if torch.equal(trainer.population[j], marl)]
        assert copies == ([] if rc.injection_interval == 0 else [trainer.progress.last_injected])
        if not rc.shared_encoder:
            assert trainer.pop_encoders is not None


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
