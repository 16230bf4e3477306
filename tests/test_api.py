"""The Python API (`import racemarl`) and the example scripts that use it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import racemarl
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_config_from_keywords_and_dotted_overrides():
    cfg = racemarl.make_config(
        task="mamujoco/Hopper-3x1",
        algo="matd3",
        seed=4,
        race={"pop_size": 3},
        overrides={"learner.batch_size": 64, "net.critic_hidden": [32, 32]},
    )
    assert (cfg.env.task, cfg.algo, cfg.seed, cfg.race.pop_size) == ("mamujoco/Hopper-3x1", "matd3", 4, 3)
    assert cfg.learner.batch_size == 64 and cfg.net.critic_hidden == [32, 32]
    same = racemarl.make_config(
        task="mamujoco/Hopper-3x1",
        algo="matd3",
        seed=4,
        race={"pop_size": 3},
        overrides=["learner.batch_size=64", "net.critic_hidden=[32,32]"],
    )
    assert same == cfg
    with pytest.raises(racemarl.ConfigError, match="unknown config key 'learner.batchsize'"):
        racemarl.make_config(overrides={"learner.batchsize": 64})
    with pytest.raises(racemarl.ConfigError, match="learner.lr_critic must be > 0"):
        racemarl.make_config(overrides={"learner.lr_critic": 0})
    with pytest.raises(racemarl.ConfigError, match="does not exist"):
        racemarl.make_config("no/such/preset.yaml")


def test_train_resume_evaluate_and_metrics(tmp_path):
    cfg = racemarl.make_config(
        algo="matd3", total_steps=40, eval_interval=20, eval_episodes=1, progress=False, overrides=TINY
    )
    first = racemarl.train_run(cfg, tmp_path / "r")
    assert first["total_env_steps"] == 40
    with pytest.raises(racemarl.RunError, match="smaller than the run's budget of 40"):
        racemarl.resume_run(tmp_path / "r", total_steps=20)
    with pytest.raises(racemarl.RunError, match="already holds a matd3 run"):
        racemarl.train_run(cfg, tmp_path / "r")
    second = racemarl.resume_run(tmp_path / "r", total_steps=80)
    assert second["total_env_steps"] == 80
    rows = racemarl.load_metrics(tmp_path / "r")
    assert [r["env_steps"] for r in rows] == [20.0, 40.0, 60.0, 80.0]
    assert rows[-1]["eval_return"] == pytest.approx(second["final_eval_return"], rel=1e-5)
    result = racemarl.evaluate_run(tmp_path / "r", episodes=2)
    assert (
        len(result["returns"]) == 2 and json.loads((tmp_path / "r" / "eval.json").read_text())["mean"] == result["mean"]
    )
    with pytest.raises(racemarl.RunDirError, match="does not exist"):
        racemarl.load_metrics(tmp_path / "nothing")


def test_random_policy_is_seeded():
    a = racemarl.random_policy("mamujoco/HalfCheetah-6x1", episodes=2, seed=3, max_episode_steps=10)
    b = racemarl.random_policy("mamujoco/HalfCheetah-6x1", episodes=2, seed=3, max_episode_steps=10)
    c = racemarl.random_policy("mamujoco/HalfCheetah-6x1", episodes=2, seed=4, max_episode_steps=10)
    assert a["returns"] == b["returns"] != c["returns"]
    assert "win_rate" not in a
    with pytest.raises(racemarl.ConfigError):
        racemarl.random_policy("mamujoco/HalfCheetah-9x1", episodes=1)


def test_api_tour_example_runs(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "api_tour.py"), str(tmp_path / "tour"), "--tiny"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "resumed to 160 env steps" in res.stdout and "evaluation: mean" in res.stdout
    assert (tmp_path / "tour" / "eval.json").is_file()


def test_demo_example_compares_with_a_random_policy(tmp_path, capsys):
    demo = _load_example("demo")
    sets = list(TINY) + [
        "env.task=mamujoco/HalfCheetah-6x1",
        "algo=matd3",
        "total_steps=60",
        "eval_interval=20",
        "eval_episodes=2",
    ]
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--no-progress", *[x for s in sets for x in ("--set", s)]]) == 0
    text = capsys.readouterr().out
    saved = json.loads((out / "demo.json").read_text())
    assert saved["episodes"] == 2 and saved["trained"]["return"] is not None
    assert f"{saved['random']['return']:>14.3f}" in text and "trained (matd3)" in text and "random policy" in text
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second demo into the same folder is refused before any training
    assert demo.main(["--out", str(out), "--no-progress", *[x for s in sets for x in ("--set", s)]]) == 2
