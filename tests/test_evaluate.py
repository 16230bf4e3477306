"""`racemarl eval`: rebuilding teams from checkpoints, greedy episodes, JSON output, video, errors."""

import json
import subprocess
import sys

import pytest
import torch

from racemarl.cli import main
from racemarl.experiment.evaluate import GL_BACKENDS, _probe_gl, evaluate_run
from racemarl.records.metrics import read_metrics
from racemarl.train import train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_runs")
    out = {}
    for name, algo, extra in [
        ("race", "race", []),
        ("ea", "ea", []),
        ("matd3", "matd3", []),
        ("unshared", "race", ["race.shared_encoder=false"]),
    ]:
        train(tiny_config(algo, extra=extra), root / name)
        out[name] = root / name
    train(tiny_config("matd3", total_steps=40, env={"task": "mamujoco/Hopper-3x1"}), root / "hopper")
    out["hopper"] = root / "hopper"
    return out


def _last_eval_seed(run_dir):
    rows = read_metrics(run_dir / "metrics.csv")
    return [1, 2, int(rows[-1]["env_steps"])], rows[-1]  # tiny_config runs use seed 1; seeds follow the env step


@pytest.mark.parametrize(
    "name, team, column",
    [
        ("race", "marl", "eval_return_marl"),
        ("race", "best", "eval_return_best_team"),
        ("matd3", "marl", "eval_return_marl"),
        ("ea", "best", "eval_return_best_team"),
        ("unshared", "best", "eval_return_best_team"),  # a population team with its own encoders
    ],
)
def test_eval_replays_the_runs_last_evaluation(runs, tmp_path, name, team, column):
    """Same weights, same team, same env seeds as the trainer's last evaluation -> the same return."""
    seed, last = _last_eval_seed(runs[name])
    r = evaluate_run(runs[name], episodes=1, team=team, seed=seed, out=tmp_path / "e.json")
    assert r["mean"] == pytest.approx(float(last[column]), rel=1e-5, abs=1e-4)
    assert r["env_steps"] == int(last["env_steps"])


def test_eval_cli_writes_json(runs, capsys):
    assert main(["eval", str(runs["race"]), "--episodes", "3", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "team marl" in printed and "mean" in printed
    data = json.loads((runs["race"] / "eval.json").read_text())
    for key in (
        "run_dir",
        "checkpoint",
        "task",
        "algo",
        "team",
        "episodes",
        "seed",
        "env_steps",
        "mean",
        "std",
        "min",
        "max",
        "returns",
        "lengths",
    ):
        assert key in data, key
    assert data["team"] == "marl" and data["episodes"] == 3 and len(data["returns"]) == 3
    assert data["min"] <= data["mean"] <= data["max"]
    assert "win_rate" not in data  # MaMuJoCo has no battle_won


def test_eval_teams(runs, tmp_path, capsys):
    assert (
        main(["eval", str(runs["race"]), "--team", "best", "--episodes", "2", "--out", str(tmp_path / "b.json")]) == 0
    )
    assert json.loads((tmp_path / "b.json").read_text())["team"] == "best"
    assert main(["eval", str(runs["race"]), "--team", "2", "--episodes", "2", "--out", str(tmp_path / "k.json")]) == 0
    assert json.loads((tmp_path / "k.json").read_text())["team"] == "slot 2"
    assert (
        main(["eval", str(runs["unshared"]), "--team", "0", "--episodes", "1", "--out", str(tmp_path / "u.json")]) == 0
    )
    assert main(["eval", str(runs["ea"]), "--episodes", "1", "--out", str(tmp_path / "ea.json")]) == 0
    assert json.loads((tmp_path / "ea.json").read_text())["team"] == "best"  # ea's default team


def test_a_population_slot_is_that_slots_team_with_its_own_encoders(runs):
    from racemarl.experiment.evaluate import load_checkpoint, rebuild, select_team

    _, sd = load_checkpoint(runs["race"])
    label, heads, enc = select_team(rebuild(sd), "2")
    assert label == "slot 2" and torch.equal(heads, sd["population"][2]) and enc is None
    assert not torch.equal(sd["population"][2], sd["population"][0])  # the slots differ, so a wrong index shows
    _, sd = load_checkpoint(runs["unshared"])
    label, heads, enc = select_team(rebuild(sd), "1")
    assert torch.equal(heads, sd["population"][1]) and enc is not None
    assert enc.keys() == sd["pop_encoders"].keys()
    for k, v in sd["pop_encoders"].items():  # slot 1's own encoders, not the MARL team's or another slot's
        assert torch.equal(enc[k], v[1:2]) and not torch.equal(v[1], v[0])


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_eval_errors(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "is not a run directory (no config.yaml" in _error(capsys, ["eval", str(tmp_path / "empty")])
    msg = _error(capsys, ["eval", str(runs["race"]), "--checkpoint", str(runs["hopper"] / "checkpoints" / "latest.pt")])
    assert "is for matd3 on mamujoco/Hopper-3x1" in msg and "race run on mamujoco/HalfCheetah-6x1" in msg
    assert "unknown team 'foo'" in _error(capsys, ["eval", str(runs["race"]), "--team", "foo"])
    assert "slot 3 does not exist" in _error(capsys, ["eval", str(runs["race"]), "--team", "3"])
    msg = _error(capsys, ["eval", str(runs["ea"]), "--team", "marl"])
    assert "'marl' does not exist in an ea run" in msg and "best" in msg
    assert "has none" in _error(capsys, ["eval", str(runs["matd3"]), "--team", "best"])
    assert "no checkpoint at" in _error(capsys, ["eval", str(runs["race"]), "--checkpoint", str(tmp_path / "x.pt")])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in _error(
        capsys, ["eval", str(runs["race"]), "--checkpoint", str(tmp_path / "junk.pt")]
    )


def test_eval_video(runs, tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="--video needs imageio-ffmpeg (pip install 'racemarl[video]')")
    reasons = {b: _probe_gl(b) for b in GL_BACKENDS}
    if all(reasons.values()):
        pytest.skip(f"no off-screen GL backend for MuJoCo here: {reasons}")
    video, out = tmp_path / "v.mp4", tmp_path / "v.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "racemarl",
            "eval",
            str(runs["race"]),
            "--episodes",
            "2",
            "--video",
            str(video),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert video.stat().st_size > 1000
    data = json.loads(out.read_text())
    assert data["video"] == str(video)
    assert data["video_frames"] == data["lengths"][0] + 1  # the reset frame and one per step
    import imageio.v3 as iio

    frames = iio.imread(video)
    assert frames.shape[0] == data["video_frames"] and frames.shape[-1] == 3
