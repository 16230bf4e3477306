"""MERL (`--algo merl`): a population of whole team networks evolved on the team return, with the MATD3
learner's team injected every generation."""

import torch

from racemarl.cli import main
from racemarl.records.metrics import read_metrics
from racemarl.train import Trainer
from tests.conftest import TINY, tiny_config


def test_merl_trains_from_the_cli(tmp_path, capsys):
    sets = [x for s in TINY + ["learner.start_steps=20", "learner.gamma=0.5"] for x in ("--set", s)]
    code = main(
        [
            "train",
            "--algo",
            "merl",
            "--total-steps",
            "160",
            "--eval-interval",
            "40",
            "--eval-episodes",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
            *sets,
        ]
    )
    assert code == 0
    last = read_metrics(tmp_path / "run" / "metrics.csv")[-1]
    for col in (
        "eval_return_marl",
        "eval_return_best_team",
        "fitness_max",
        "injected_slot",
        "loss_critic",
        "loss_actor",
        "q_bias_marl",
    ):
        assert last[col] != "", col
    for col in ("loss_pevfa", "loss_vfm", "loss_vmm"):  # no RACE representation losses
        assert last[col] == "", col


def test_merl_teams_own_whole_networks_that_evolve_and_receive_the_learner(tmp_path):
    cfg = tiny_config("merl", total_steps=200, extra=["learner.start_steps=20", "race.mutation_prob=1.0"])
    with Trainer(cfg, tmp_path) as trainer:
        initial = {k: v.clone() for k, v in trainer.pop_encoders.items()}
        trainer.train()
        enc, slot = trainer.pop_encoders, trainer.progress.last_injected
        assert slot is not None
        marl = trainer.learner.encoder_params()
        assert all(torch.equal(enc[k][slot], v[0]) for k, v in marl.items())
        assert torch.equal(trainer.population[slot], trainer.learner.marl_heads.detach())
        others = [i for i in range(cfg.race.pop_size) if i != slot]
        # the other teams' encoders are their own, moved by evolution (mutation) away from any initial network
        for i in others:
            w = enc["l1.weight"][i]
            assert not torch.equal(w, marl["l1.weight"][0])
            assert not any(torch.equal(w, initial["l1.weight"][j]) for j in range(cfg.race.pop_size))


def test_merl_is_refused_on_discrete_tasks(tmp_path, capsys):
    code = main(["train", "--algo", "merl", "--task", "smax/3m", "--total-steps", "100", "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "MERL" in err and "continuous" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
