"""The learner's precision setting (`precision: auto|fp32|bf16`, racemarl/precision.py): resolution and recording,
legacy configs, where bfloat16 is used and where float32 is kept, gradient agreement with float32 for every learner,
and bit-identical reruns and resumes in bf16."""

import copy

import pytest
import torch
import yaml

import racemarl.precision as precision
from racemarl.config import ConfigError, build_config, from_dict, to_dict
from racemarl.records import checkpoint as ckpt
from racemarl.records.metrics import WALL_CLOCK_COLUMNS, read_metrics
from racemarl.train import Trainer, train
from tests.conftest import tiny_config, tiny_train_args


def _rows(path):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_COLUMNS} for r in read_metrics(path / "metrics.csv")]


# ------------------------------------------------------------------ resolution, config, legacy runs


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_by_the_hardware_and_the_run_records_it(tmp_path, monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert precision.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert precision.resolve_precision("fp32", cpu) == "fp32"
    assert precision.resolve_precision("bf16", cpu) == "bf16"
    trainer = Trainer(tiny_config("matd3", total_steps=40, extra=["precision=auto"]), tmp_path / "run")
    trainer.close()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["precision"] == ("bf16" if native else "fp32")
    assert trainer.learner.precision == saved["precision"]


def test_a_bad_precision_is_refused():
    with pytest.raises(ConfigError, match="precision"):
        build_config(None, ["precision=fp16"])
    with pytest.raises(precision.PrecisionError):
        precision.resolve_precision("half", torch.device("cpu"))


def test_configs_saved_before_the_setting_load_as_fp32():
    data = to_dict(build_config(None, []))
    del data["precision"]
    assert from_dict(data).precision == "fp32"
    assert build_config(None, []).precision == "fp32"  # a new run's default (bf16 failed the learning comparison)


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "Path", lambda _: info)
    for flags, expected in (("fpu avx512f avx512_bf16 sse", True), ("fpu avx2 sse", False)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        precision.cpu_has_native_bf16.cache_clear()
        assert precision.cpu_has_native_bf16() is expected
    precision.cpu_has_native_bf16.cache_clear()


def test_resume_keeps_the_runs_precision_and_refuses_another(tmp_path, capsys):
    from racemarl.cli import main

    out = tmp_path / "run"
    args = tiny_train_args(out, "--precision", "fp32", eval_interval=40)
    assert main(args) == 0
    assert main(["train", "--resume", str(out), "--total-steps", "60", "--no-progress"]) == 0  # auto: keeps fp32
    assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == "fp32"
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--total-steps", "80", "--no-progress", "--precision", "bf16"]) == 2
    assert "precision=bf16 (the run has fp32)" in capsys.readouterr().err


# ------------------------------------------------------------------ where bfloat16 is used, where float32 is kept


def test_bf16_products_with_float32_values_losses_and_weights(tmp_path):
    trainer = Trainer(tiny_config("race", extra=["precision=bf16"]), tmp_path / "run")
    learner = trainer.learner
    seen: dict[str, set] = {}

    def watch(name, module):
        def hook(_module, _inputs, output):
            seen.setdefault(name, set()).add(output.dtype)

        return module.register_forward_hook(hook)

    hooks = [
        watch("critic_hidden", learner.critic.net.net[0]),
        watch("encoder", learner.encoders.l2),
        watch("critic_out", learner.critic.net.net[-1]),
        watch("value_out", learner.value.net.net[-1]),
        watch("mi_scores", learner.mi_critic),
    ]
    trainer.train()
    for h in hooks:
        h.remove()
    # (the encoders also act in the rollouts and evaluations, in float32)
    assert seen == {
        "critic_hidden": {torch.bfloat16},
        "encoder": {torch.bfloat16, torch.float32},
        "critic_out": {torch.float32},
        "value_out": {torch.float32},
        "mi_scores": {torch.float32},
    }
    assert all(p.dtype == torch.float32 for p in learner.parameters())
    for opt in learner.optimizers().values():
        for state in opt.state.values():
            assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    # acting is float32: the rollout copy's actions are what a float32 forward gives
    obs = torch.randn(2, learner.spec.n_agents, learner.max_obs)
    heads = learner.marl_heads.detach()[None].expand(2, -1, -1, -1)
    assert learner.act(obs, heads).dtype == torch.float32
    trainer.close()


def test_fp32_runs_no_autocast(tmp_path):
    trainer = Trainer(tiny_config("matd3", extra=["precision=fp32"]), tmp_path / "run")
    seen = []
    trainer.learner.critic.net.net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype) and None)
    trainer.train()
    assert seen and set(seen) == {torch.float32}
    trainer.close()


# ------------------------------------------------------------------ gradients: bf16 against fp32, every learner

CONTINUOUS = ["matd3", "race", "facmac", "merl"]
DISCRETE = ["facmac", "race"]
# The yardstick is sampling noise: the difference between the float32 gradients of two batches. bfloat16 rounding
# must move each parameter's gradient by well under that, and all of them together by a small part of it. Measured
# on these tiny networks (16 units) from float32-trained states, seeds 1-4 of each continuous learner and of both
# discrete ones (24 states): per parameter at most 0.43 of the batch noise (RACE-discrete's V_zeta last bias), all
# parameters together at most 0.11 (MERL). Cosines and relative errors of single parameters are no yardstick here:
# a bias followed by a LayerNorm has a gradient that is a small sum of nearly cancelling terms (relative errors up
# to 43% in RACE's PeVFA at beta 10, 16x in one FACMAC state), while the same rounding is 0.1-0.4 of the batch noise.
MAX_PARAM_NOISE_SHARE, MAX_TOTAL_NOISE_SHARE = 0.6, 0.25


def _gradients(trainer: Trainer, batch, prec: str) -> dict[str, torch.Tensor]:
    """Every parameter's gradient after one update (critic and actor phases) from the trainer's learner state at
    precision `prec` on `batch`; learning rates ~0, so the actor phase reads the same critic in both precisions."""
    learner = copy.deepcopy(trainer.learner)
    learner.cfg.precision = prec
    learner._precision = None
    for opt in learner.optimizers().values():
        for group in opt.param_groups:
            group["lr"] = 1e-12
    learner.n_updates = 1  # the next update has an actor phase (policy_delay 2 on continuous tasks)
    learner.generator = torch.Generator().manual_seed(5)  # the same smoothing noise and team draws in both
    assert learner.precision == prec
    learner.update(batch, trainer.population, trainer.pop_encoders)
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def _check_agreement(trainer: Trainer) -> None:
    """bf16 gradients differ from fp32 ones on the same batch by well under what another batch changes (per parameter
    at most MAX_PARAM_NOISE_SHARE of it, all together MAX_TOTAL_NOISE_SHARE), and where float32 gives no gradient on
    either batch (the padded rows of grouped layers and heads) bfloat16 gives none either, or at most a thousandth of
    the parameter's largest gradient (a ReLU unit at the edge of its dead zone may be alive in one precision only:
    measured 3e-6 against 0.1 in FACMAC's agent critic)."""
    batch, other = trainer.buffer.sample(trainer._batch_size()), trainer.buffer.sample(trainer._batch_size())
    g32, g16, noise = (
        _gradients(trainer, batch, "fp32"),
        _gradients(trainer, batch, "bf16"),
        _gradients(trainer, other, "fp32"),
    )
    assert g32.keys() == g16.keys() == noise.keys() and len(g32) > 5
    worst, worst_name = 0.0, ""
    for name, a in g32.items():
        b = g16[name]
        structural = (a == 0) & (noise[name] == 0)  # at most a rounding's worth there (a dead-zone edge)
        leak = b[structural].abs().max().item() if structural.any() else 0.0
        assert leak <= 1e-3 * a.abs().max().item(), (
            f"{name}: bf16 gives a gradient ({leak:.3g}) where float32 gives none"
        )
        yardstick = (noise[name] - a).norm()
        if yardstick == 0:  # no gradient in either batch (padding): nothing to compare
            assert torch.equal(a, b), f"{name}: no gradient in float32, one in bfloat16"
            continue
        share = ((b - a).norm() / yardstick).item()
        if share > worst:
            worst, worst_name = share, name
        assert share <= MAX_PARAM_NOISE_SHARE, f"{name}: bf16 moves the gradient by {share:.3f} of the batch noise"
    flat = lambda g: torch.cat([g[k].flatten() for k in g32]).double()  # noqa: E731
    total = ((flat(g16) - flat(g32)).norm() / (flat(noise) - flat(g32)).norm()).item()
    assert total <= MAX_TOTAL_NOISE_SHARE, f"all parameters: bf16 moves the gradient by {total:.3f} of the batch noise"
    print(f"all parameters: {total:.3f} of the batch noise; worst parameter {worst:.3f} ({worst_name})")


@pytest.mark.parametrize("algo", CONTINUOUS)
def test_bf16_gradients_agree_with_fp32_continuous(tmp_path, algo):
    trainer = Trainer(tiny_config(algo, total_steps=200, extra=["learner.batch_size=64"]), tmp_path / "run")
    trainer.train()  # fills the buffer and moves the networks away from their initialisation
    _check_agreement(trainer)
    trainer.close()


@pytest.mark.parametrize("algo", DISCRETE)
def test_bf16_gradients_agree_with_fp32_discrete(tmp_path, algo):
    pytest.importorskip("jaxmarl")
    from tests.test_discrete import discrete_config

    trainer = Trainer(discrete_config(algo, total_steps=160, task="smax/3m"), tmp_path / "run")
    trainer.train()
    _check_agreement(trainer)
    trainer.close()


# ------------------------------------------------------------------ determinism and resume in bf16


@pytest.mark.parametrize("algo", ["matd3", "race"])
def test_bf16_same_seed_same_metrics_and_exact_resume(tmp_path, algo):
    extra = ["precision=bf16"]
    train(tiny_config(algo, total_steps=320, extra=extra, seed=3), tmp_path / "a")
    train(tiny_config(algo, total_steps=320, extra=extra, seed=3), tmp_path / "b")
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    train(tiny_config(algo, total_steps=160, extra=extra, seed=3), tmp_path / "split")
    Trainer(tiny_config(algo, total_steps=320, extra=extra, seed=3), tmp_path / "split", resume=True).train()
    assert _rows(tmp_path / "split") == _rows(tmp_path / "a")
    a = ckpt.load(tmp_path / "a" / "checkpoints" / "latest.pt")["learner"]["model"]
    b = ckpt.load(tmp_path / "split" / "checkpoints" / "latest.pt")["learner"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and bf16 is not fp32 under another name: the same seed in fp32 learns other (rounded) numbers
    train(tiny_config(algo, total_steps=320, extra=["precision=fp32"], seed=3), tmp_path / "fp32")
    assert _rows(tmp_path / "fp32") != _rows(tmp_path / "a")
