"""`race.vmm_beta: auto`: the task family's value (discrete: the official SMAC 0.001; continuous: the tuned one),
what the learners use, what config.yaml records, and how a restart or a resume compares it."""

import pytest
import yaml

import racemarl.config.schema as schema
from racemarl.cli import main
from racemarl.config import ConfigError, build_config, resolve_vmm_beta
from racemarl.train import RunError, Trainer, train
from tests.conftest import TINY_CLI_SETS, tiny_config
from tests.test_discrete import discrete_config, fake_smac  # noqa: F401
from tests.test_learner_gradients import make_batch, make_learner, make_population, tiny_cfg

CONTINUOUS, DISCRETE = 0.25, 0.125  # distinct stand-ins for the two family values


@pytest.fixture
def family_values(monkeypatch):
    monkeypatch.setattr(schema, "VMM_BETA_CONTINUOUS", CONTINUOUS)
    monkeypatch.setattr(schema, "VMM_BETA_DISCRETE", DISCRETE)


def test_the_default_is_auto_and_a_number_or_auto_is_accepted():
    assert build_config(None, []).race.vmm_beta == "auto"
    assert build_config(None, ["race.vmm_beta=0.5"]).race.vmm_beta == 0.5
    assert build_config(None, ["race.vmm_beta=auto"]).race.vmm_beta == "auto"
    with pytest.raises(ConfigError, match="race.vmm_beta: 'big' is not float or 'auto'"):
        build_config(None, ["race.vmm_beta=big"])
    with pytest.raises(ConfigError, match="env.max_episode_steps: 'abc' is not int or null"):
        build_config(None, ["env.max_episode_steps=abc"])
    with pytest.raises(ConfigError, match="race.vmm_beta must be >= 0 or auto"):
        build_config(None, ["race.vmm_beta=-1"])


def test_auto_stands_for_the_family_value_and_a_number_for_itself(family_values):
    assert resolve_vmm_beta("auto", discrete=False) == CONTINUOUS
    assert resolve_vmm_beta("auto", discrete=True) == DISCRETE
    assert resolve_vmm_beta(0.5, discrete=True) == 0.5 and resolve_vmm_beta(0.0, discrete=False) == 0.0


def test_the_learner_weighs_vmm_by_the_value_auto_stands_for(family_values):
    """Same seed and batch: `auto` and the explicit continuous value put the same VMM gradient on the encoders,
    and another beta does not."""
    batch, grads = make_batch(4), {}
    for beta in ("auto", CONTINUOUS, 2 * CONTINUOUS):
        learner = make_learner(tiny_cfg(vmm_beta=beta), seed=3)
        grads[beta] = learner.encoder_grad_norms(batch, make_population(learner))["vmm"]
        if beta == "auto":
            assert learner.vmm_beta == CONTINUOUS
    assert grads["auto"] == grads[CONTINUOUS] > 0
    assert abs(grads[2 * CONTINUOUS] - 2 * grads[CONTINUOUS]) < 1e-4 * grads[CONTINUOUS]


def test_config_yaml_records_the_number_on_a_continuous_task(tmp_path, family_values):
    cfg = tiny_config("race", total_steps=40)
    assert cfg.race.vmm_beta == "auto"
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.learner.vmm_beta == CONTINUOUS
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["race"]["vmm_beta"] == CONTINUOUS


def test_config_yaml_records_the_number_on_a_discrete_task(tmp_path, family_values, fake_smac):  # noqa: F811
    cfg = discrete_config("race", total_steps=60)
    assert cfg.race.vmm_beta == "auto"
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.learner.vmm_beta == DISCRETE
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["race"]["vmm_beta"] == DISCRETE


def test_an_early_start_is_reused_where_auto_stands_for_its_number(tmp_path, family_values):
    """A start killed before its first checkpoint recorded the number; `auto` starts it again where that is the
    number auto stands for, and is another run where it is not."""
    from racemarl.config import save_yaml

    for name, saved in (("same", CONTINUOUS), ("other", DISCRETE)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text("env_steps\n")
        save_yaml(tiny_config("race", total_steps=40, race={"vmm_beta": saved}), tmp_path / name / "config.yaml")
    train(tiny_config("race", total_steps=40), tmp_path / "same")
    assert (tmp_path / "same" / "checkpoints" / "latest.pt").is_file()
    with pytest.raises(RunError, match=r"with other settings \(race.vmm_beta\)"):
        train(tiny_config("race", total_steps=40), tmp_path / "other")


def test_a_resume_accepts_auto_where_it_stands_for_the_runs_number(tmp_path, capsys, family_values):
    out = tmp_path / "run"
    start = ["train", "--algo", "race", "--total-steps", "40", "--eval-interval", "20", "--eval-episodes", "1"]
    assert main([*start, "--no-progress", "--out", str(out), *TINY_CLI_SETS, "--set", "race.pop_size=2"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["race"]["vmm_beta"] == CONTINUOUS
    resume = ["train", "--resume", str(out), "--no-progress"]
    assert main([*resume, "--total-steps", "60", "--set", "race.vmm_beta=auto"]) == 0
    assert main([*resume, "--total-steps", "80", "--set", f"race.vmm_beta={2 * CONTINUOUS}"]) == 2
    assert f"race.vmm_beta={2 * CONTINUOUS} (the run has {CONTINUOUS})" in capsys.readouterr().err
