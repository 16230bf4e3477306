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
from tests.conftest import tiny_config


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
    args = [
        "train",
        "--algo",
        "matd3",
        "--total-steps",
        "40",
        "--eval-interval",
        "40",
        "--eval-episodes",
        "1",
        "--no-progress",
        "--out",
        str(out),
        "--set",
        "net.encoder_hidden=16",
        "--set",
        "net.embed_dim=8",
        "--set",
        "net.critic_hidden=[16,16]",
        "--set",
        "learner.batch_size=16",
        "--set",
        "learner.start_steps=20",
        "--set",
        "env.max_episode_steps=20",
        "--precision",
        "fp32",
    ]
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
# Measured on these tiny networks and batches (64 samples, 16 units), from float32-trained states: per parameter,
# worst cosine 0.976 and worst relative norm error 22% (RACE's critic first-layer bias: a LayerNorm follows, so its
# gradient is a small sum of nearly cancelling terms; bfloat16 keeps 8 bits of mantissa, 0.4% per rounding); all
# parameters together, cosine >= 0.999. Two different batches' gradients differ by far more than either.
MIN_COSINE, MAX_NORM_ERROR, MIN_TOTAL_COSINE = 0.95, 0.30, 0.995


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


def _check_agreement(trainer: Trainer, same_zeros: bool = True) -> None:
    """bf16 gradients within MIN_COSINE / MAX_NORM_ERROR of fp32, parameter by parameter; `same_zeros`: and zero in
    exactly the same places (the padded rows of grouped layers and heads get no gradient in either precision; with
    ReLU encoders, as on discrete tasks, a unit at the edge of its dead zone may differ)."""
    batch = trainer.buffer.sample(trainer._batch_size())
    g32, g16 = _gradients(trainer, batch, "fp32"), _gradients(trainer, batch, "bf16")
    assert g32.keys() == g16.keys() and len(g32) > 5
    worst, worst_name = (1.0, 0.0), ""
    for name, a in g32.items():
        b = g16[name]
        if same_zeros:
            assert torch.equal(a == 0, b == 0), f"{name}: gradient zero in one precision only"
        if a.norm() == 0:
            continue
        cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
        rel = ((a - b).norm() / a.norm()).item()
        if rel > worst[1]:
            worst_name = name
        worst = (min(worst[0], cos), max(worst[1], rel))
        assert cos >= MIN_COSINE and rel <= MAX_NORM_ERROR, f"{name}: cosine {cos:.5f}, relative error {rel:.4f}"
    total = torch.nn.functional.cosine_similarity(
        torch.cat([g.flatten() for g in g32.values()]).double(),
        torch.cat([g16[k].flatten() for k in g32]).double(),
        dim=0,
    ).item()
    assert total >= MIN_TOTAL_COSINE, f"all parameters: cosine {total:.5f}"
    print(
        f"all parameters: cosine {total:.5f};",
        f"worst cosine {worst[0]:.5f}, worst relative norm error {worst[1]:.4f}",
        worst_name,
    )


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
    _check_agreement(trainer, same_zeros=False)
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
