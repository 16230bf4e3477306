"""grad_enc_*: the gradient norm each encoder-loss term puts on the shared encoders, logged at every evaluation."""

import copy
import math

import pytest
import torch

from racemarl.records.metrics import WALL_CLOCK_COLUMNS, read_metrics
from racemarl.train import Trainer, train
from tests.conftest import tiny_config

GRAD_COLUMNS = ("grad_enc_actor", "grad_enc_vfm", "grad_enc_vmm")


def _values(rows, col):
    return [float(r[col]) for r in rows if r[col] != ""]


@pytest.mark.parametrize(
    "algo, terms", [("race", GRAD_COLUMNS), ("matd3", ("grad_enc_actor",)), ("merl", ("grad_enc_actor",))]
)
def test_each_term_is_logged_once_learning_has_begun(tmp_path, algo, terms):
    train(tiny_config(algo, total_steps=200), tmp_path)
    rows = read_metrics(tmp_path / "metrics.csv")
    learning = [r for r in rows if int(r["updates"]) > 0]
    assert learning and all(r[c] == "" for r in rows if int(r["updates"]) == 0 for c in GRAD_COLUMNS)
    for col in GRAD_COLUMNS:
        values = _values(learning, col)
        if col in terms:
            assert len(values) == len(learning) and all(math.isfinite(v) and v > 0 for v in values), col
        else:
            assert values == [], col


def test_the_vmm_norm_is_beta_times_the_bound_and_the_others_do_not_depend_on_beta(tmp_path):
    trainer = Trainer(tiny_config("race", total_steps=120, extra=["precision=fp32"]), tmp_path / "run")  # exact scaling
    trainer.train()
    batch = trainer.buffer.sample(trainer._batch_size())
    norms = {}
    for beta in (0.001, 0.1):
        learner = copy.deepcopy(trainer.learner)
        learner.rcfg.vmm_beta = beta
        norms[beta] = learner.encoder_grad_norms(batch, trainer.population)
    assert norms[0.1]["vmm"] == pytest.approx(100 * norms[0.001]["vmm"], rel=1e-4)
    assert norms[0.1]["actor"] == pytest.approx(norms[0.001]["actor"], rel=1e-6)
    assert norms[0.1]["vfm"] == pytest.approx(norms[0.001]["vfm"], rel=1e-6)
    trainer.close()


def test_the_norms_are_the_encoder_gradients_of_each_term_alone(tmp_path):
    """The actor term's norm equals the norm of the encoders' .grad after backpropagating that term alone."""
    trainer = Trainer(tiny_config("race", total_steps=120, extra=["precision=fp32"]), tmp_path / "run")
    trainer.train()
    learner = trainer.learner
    batch = trainer.buffer.sample(trainer._batch_size())
    norms = learner.encoder_grad_norms(batch, trainer.population)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    learner._teams = None
    losses = learner.encoder_losses(batch, trainer.population)
    for name, loss in losses.items():
        learner.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        grads = [p.grad.flatten() for p in learner.encoders.parameters() if p.grad is not None]
        assert torch.cat(grads).norm().item() == pytest.approx(norms[name], rel=1e-5), name
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())  # measuring stepped nothing
    trainer.close()


def test_measuring_changes_nothing_that_is_learned(tmp_path, monkeypatch):
    train(tiny_config("race", total_steps=240, seed=2), tmp_path / "measured")
    monkeypatch.setattr(Trainer, "encoder_gradients", lambda self: {})
    train(tiny_config("race", total_steps=240, seed=2), tmp_path / "plain")
    skip = set(WALL_CLOCK_COLUMNS) | set(GRAD_COLUMNS)

    def rows(path):
        return [{k: v for k, v in r.items() if k not in skip} for r in read_metrics(path / "metrics.csv")]

    assert rows(tmp_path / "measured") == rows(tmp_path / "plain")


def test_discrete_learners_log_their_terms(tmp_path):
    pytest.importorskip("jaxmarl")
    from tests.test_discrete import discrete_config

    for algo, terms in (("race", GRAD_COLUMNS), ("facmac", ("grad_enc_actor",))):
        train(discrete_config(algo, total_steps=160, task="smax/3m"), tmp_path / algo)
        learning = [r for r in read_metrics(tmp_path / algo / "metrics.csv") if int(r["updates"]) > 0]
        assert learning
        for col in GRAD_COLUMNS:
            values = _values(learning, col)
            assert (len(values) == len(learning) and all(v > 0 for v in values)) if col in terms else values == []
