"""Switches whose defaults follow the reference codes (issue 20, item 4), and the legacy values of older runs."""

import pytest
import torch

from racemarl.config import build_config, from_dict, to_dict
from racemarl.nets.critics import PeVFA
from racemarl.train import Trainer


def test_defaults_follow_the_references_and_old_configs_keep_what_they_ran():
    cfg = build_config(None, [])
    assert cfg.race.pevfa_twin_embeddings is True  # ERL-Re2: one policy embedding per PeVFA twin
    assert (cfg.discrete.pevfa_target_encoder, cfg.discrete.value_target, cfg.discrete.logit_reg) == (
        "online",
        "td_lambda",
        0.0,
    )
    data = to_dict(cfg)
    del (
        data["race"]["pevfa_twin_embeddings"],
        data["discrete"]["pevfa_target_encoder"],
        data["discrete"]["value_target"],
    )
    old = from_dict(data)
    assert old.race.pevfa_twin_embeddings is False
    assert (old.discrete.pevfa_target_encoder, old.discrete.value_target) == ("target", "one_step")


def _pevfa(twin: bool) -> PeVFA:
    torch.manual_seed(0)
    mask = torch.ones(2, 3, dtype=torch.bool)
    return PeVFA(5, 6, [8, 8], 2, 4 + 1, mask, embed_width=4, twin_embeddings=twin)


def test_twin_embeddings_give_each_twin_its_own_embedding():
    net = _pevfa(True)
    state, action, heads = torch.randn(3, 7, 5), torch.randn(3, 7, 6), torch.randn(3, 2, 3, 5)
    q = net(state, action, heads)
    assert q.shape == (2, 3, 7)
    torch.testing.assert_close(net(state, action, heads, first_only=True), q[0])
    # twin 1 reads embedding 1 only, twin 2 embedding 2 only
    q[0].sum().backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.embedding_2.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.embedding.parameters())
    net.zero_grad()
    q[1].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.embedding.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.embedding_2.parameters())
    # with one shared embedding, both twins read it
    shared = _pevfa(False)
    assert shared.embedding_2 is None
    shared(state, action, heads)[1].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in shared.embedding.parameters())


def test_discrete_value_target_is_the_larger_td_lambda_target(tmp_path, monkeypatch):
    pytest.importorskip("jaxmarl")
    import racemarl.algorithms.race_discrete as rd
    from tests.test_discrete import discrete_config

    trainer = Trainer(discrete_config("race", total_steps=160, task="smax/3m"), tmp_path / "run")
    trainer.train()
    learner, batch = trainer.learner, trainer.buffer.sample(trainer._batch_size())
    seen = {}
    real = rd.td_lambda_targets

    def spy(reward, terminated, mask, q_next, gamma, lam):
        out = real(reward, terminated, mask, q_next, gamma, lam)
        seen.setdefault("targets", []).append(out)
        return out

    monkeypatch.setattr(rd, "td_lambda_targets", spy)
    captured = {}
    orig_values = learner.state_values

    def values(state):
        v = orig_values(state)
        captured["v"] = v
        return v

    learner.state_values = values
    with torch.no_grad():
        z_targ = learner.unroll(batch, target=True)
        greedy = rd.masked_logits(rd.team_logits(z_targ, learner.marl_heads_targ), batch.avail).argmax(-1)
        q_next = learner.critic_targ(
            batch.obs, torch.nn.functional.one_hot(greedy, learner.n_actions).float(), batch.state
        )
    losses = learner.extra_critic_losses(batch, z_targ, q_next, trainer.population)
    y_pevfa, y_marl = seen["targets"]
    expected = torch.maximum(y_marl, y_pevfa.max(0).values)
    mask = batch.mask
    manual = ((captured["v"] - expected).pow(2) * mask).sum() / mask.sum()
    torch.testing.assert_close(losses["value"], manual)
    trainer.close()
