"""End-to-end behaviour of the training loop on tiny runs: outputs, seeding, resume, failure modes."""

import json
import subprocess
import sys

import pytest
import torch

from racemarl.records import checkpoint as ckpt
from racemarl.records.metrics import COLUMNS, WALL_CLOCK_COLUMNS, read_metrics
from racemarl.train import RunError, Trainer, train
from tests.conftest import poison_replay_batch, tiny_config, tiny_train_args


def _deterministic_columns(rows):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_COLUMNS} for r in rows]


@pytest.mark.parametrize("algo", ["matd3", "race", "ea"])
def test_run_directory_holds_every_output(tmp_path, algo):
    summary = train(tiny_config(algo), tmp_path)
    assert (tmp_path / "config.yaml").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))
    assert (tmp_path / "checkpoints" / "latest.pt").exists()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert list(rows[0].keys()) == COLUMNS
    assert [int(r["env_steps"]) for r in rows] == sorted(int(r["env_steps"]) for r in rows)
    assert int(rows[-1]["env_steps"]) >= 160
    assert all(r["eval_return"] != "" and r["sps"] != "" for r in rows)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    for key in ("final_eval_return", "best_eval_return", "total_env_steps", "wall_time", "mean_sps"):
        assert on_disk[key] is not None
    assert (
        on_disk["best_eval_return"] == max(float(r["eval_return"]) for r in rows)
        or abs(on_disk["best_eval_return"] - max(float(r["eval_return"]) for r in rows)) < 1e-3
    )
    if algo == "race":
        last = rows[-1]
        for col in (
            "eval_return_marl",
            "eval_return_best_team",
            "fitness_max",
            "injected_slot",
            "loss_pevfa",
            "loss_vfm",
            "loss_vmm",
            "loss_value",
            "mi_estimate",
            "loss_critic",
            "loss_actor",
        ):
            assert last[col] != "", col
        assert float(last["eval_return"]) == max(float(last["eval_return_marl"]), float(last["eval_return_best_team"]))
    if algo == "ea":
        assert rows[-1]["loss_critic"] == "" and rows[-1]["eval_return_marl"] == ""


@pytest.mark.parametrize("algo", ["matd3", "race"])
def test_same_seed_same_metrics(tmp_path, algo):
    train(tiny_config(algo, seed=3), tmp_path / "a")
    train(tiny_config(algo, seed=3), tmp_path / "b")
    a = _deterministic_columns(read_metrics(tmp_path / "a" / "metrics.csv"))
    b = _deterministic_columns(read_metrics(tmp_path / "b" / "metrics.csv"))
    assert a == b
    train(tiny_config(algo, seed=4), tmp_path / "c")
    assert _deterministic_columns(read_metrics(tmp_path / "c" / "metrics.csv")) != a


@pytest.mark.parametrize("algo", ["matd3", "race"])
def test_resume_equals_uninterrupted(tmp_path, algo):
    train(tiny_config(algo, total_steps=320), tmp_path / "straight")
    train(tiny_config(algo, total_steps=160), tmp_path / "split")
    Trainer(tiny_config(algo, total_steps=320), tmp_path / "split", resume=True).train()
    straight = _deterministic_columns(read_metrics(tmp_path / "straight" / "metrics.csv"))
    split = _deterministic_columns(read_metrics(tmp_path / "split" / "metrics.csv"))
    assert len(straight) >= 4
    assert split == straight
    a = ckpt.load(tmp_path / "straight" / "checkpoints" / "latest.pt")["learner"]["model"]
    b = ckpt.load(tmp_path / "split" / "checkpoints" / "latest.pt")["learner"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_rejects_other_task(tmp_path):
    train(tiny_config("matd3", total_steps=80), tmp_path)
    other = tiny_config("matd3", total_steps=160, env={"task": "mamujoco/Hopper-3x1"})
    with pytest.raises(RunError, match="not matd3 on mamujoco/Hopper-3x1"):
        Trainer(other, tmp_path, resume=True)


def test_checkpoint_survives_a_kill_during_save(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    ckpt.save_atomic({"step": torch.tensor(1)}, path)

    def dying_save(obj, f):
        f.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(ckpt.load(path)["step"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp files left behind


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    poison_replay_batch(monkeypatch, at=30)
    trainer = Trainer(tiny_config("matd3"), tmp_path)
    with pytest.raises(RunError, match="non-finite .*last_good.pt"):
        trainer.train()
    state = ckpt.load(tmp_path / "checkpoints" / "last_good.pt")
    assert all(torch.isfinite(v).all() for v in state["learner"]["model"].values())


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "racemarl", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--task", "mamujoco/HalfCheetah-7x1"], "6x1"),
        (["--task", "mujoco/Foo"], "mamujoco"),
        (["--set", "learner.batchsize=3"], "learner.batch_size"),
        (["--set", "learner.batch_size=big"], "expected int"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, args, needle):
    res = _cli("train", "--algo", "matd3", "--total-steps", "10", "--out", str(tmp_path / "x"), *args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_cli_resume_of_a_non_run(tmp_path):
    res = _cli("train", "--resume", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2 and "not a run directory" in res.stderr and "Traceback" not in res.stderr


def test_cli_train_and_resume(tmp_path):
    out = tmp_path / "run"
    res = _cli(*tiny_train_args(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "run finished" in res.stdout
    res = _cli("train", "--resume", str(out), "--algo", "race", "--total-steps", "80", cwd=tmp_path)
    assert res.returncode == 2 and "algo=race (the run has matd3)" in res.stderr
    res = _cli("train", "--resume", str(out), "--algo", "matd3", "--total-steps", "80", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert int(read_metrics(out / "metrics.csv")[-1]["env_steps"]) == 80
