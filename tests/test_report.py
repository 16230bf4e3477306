"""`racemarl table`, `export` (marl-eval), `info`, `tasks`, and the optional W&B / MLflow logging."""

import csv
import io
import json
import sys

import pytest

from racemarl.cli import main
from racemarl.envs import list_tasks, make_env
from racemarl.experiment.report import mean_se
from racemarl.records.metrics import read_metrics
from racemarl.records.runs import load_runs
from racemarl.records.tracking import TrackingError, make_trackers
from racemarl.train import train
from tests.conftest import tiny_config, tiny_train_args
from tests.test_plot import write_fake_run


@pytest.fixture
def fake_runs(tmp_path):
    root = tmp_path / "runs"
    write_fake_run(root / "r1", "race", 1, [0, 100, 200], [0.0, 30.0, 10.0])
    write_fake_run(root / "r2", "race", 2, [0, 100, 200], [0.0, 40.0, 20.0])
    write_fake_run(root / "m1", "matd3", 1, [0, 100, 210], [1.0, 2.0, 3.0], summary=False)
    write_fake_run(root / "h1", "race", 1, [0, 100], [5.0, 6.0], task="mamujoco/Hopper-3x1")
    return root


def test_mean_se():
    assert mean_se([10.0, 20.0]) == (15.0, 5.0)
    assert mean_se([3.0]) == (3.0, None)


def test_table_markdown(fake_runs, capsys):
    assert main(["table", str(fake_runs)]) == 0
    out = capsys.readouterr().out
    assert "| task | algo | seeds | env steps | final eval_return | final 95% CI | best eval_return |" in out
    # two seeds: the stratified bootstrap of the mean spans the two final values
    assert "| mamujoco/HalfCheetah-6x1 | race | 2 | 200 | 15.0 ± 5.0 | [10.0, 20.0] | 35.0 ± 5.0 |" in out
    assert "| mamujoco/HalfCheetah-6x1 | matd3 | 1 (0 finished) | 210 | 3.0 | - | 3.0 |" in out
    assert "| mamujoco/Hopper-3x1 | race | 1 | 100 | 6.0 | - | 6.0 |" in out
    assert "the groups differ only in task and algo" in out
    # the only pair with a common task: matd3's single run (3.0) is below both race runs (10, 20)
    assert "| matd3 | race | 1 | 0.00 | - |" in out


def test_table_csv_and_other_metric(fake_runs, tmp_path, capsys):
    write_fake_run(tmp_path / "x" / "a", "race", 1, [0, 100], [0.0, 1.0], extra={1: {"train_return": 4.0}})
    write_fake_run(tmp_path / "x" / "b", "race", 2, [0, 100], [0.0, 1.0], extra={1: {"train_return": 8.0}})
    assert main(["table", str(tmp_path / "x"), "--format", "csv", "--metric", "train_return"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1
    r = rows[0]
    assert (r["algo"], r["metric"], r["n_seeds"], r["seeds"]) == ("race", "train_return", "2", "1 2")
    assert float(r["final_mean"]) == 6.0 and float(r["final_se"]) == 2.0


def test_table_unknown_metric_lists_valid_ones(fake_runs, capsys):
    assert main(["table", str(fake_runs), "--metric", "eval_retrun"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "valid metrics: env_steps, generation, updates, eval_return" in err


def test_export_marl_eval_structure(fake_runs, tmp_path, capsys):
    (fake_runs / "r2" / "eval.json").write_text(json.dumps({"returns": [19.0, 21.0, 20.0]}))
    out = tmp_path / "results.json"
    assert main(["export", str(fake_runs), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data) == ["mamujoco"]
    assert sorted(data["mamujoco"]) == ["halfcheetah-6x1", "hopper-3x1"]
    race = data["mamujoco"]["halfcheetah-6x1"]["race"]
    assert list(race) == ["run_0", "run_1"]  # seeds 1, 2 in order
    assert list(race["run_0"]) == ["step_0", "step_1", "step_2", "absolute_metrics"]  # absolute last
    assert race["run_0"]["step_1"] == {"step_count": 100, "episode_return": [30.0]}
    assert race["run_0"]["absolute_metrics"] == {"episode_return": [10.0]}  # no eval.json: last evaluation
    assert race["run_1"]["absolute_metrics"] == {"episode_return": [19.0, 21.0, 20.0]}  # from eval.json
    assert data["mamujoco"]["halfcheetah-6x1"]["matd3"]["run_0"]["step_2"]["step_count"] == 210
    assert "different numbers of runs" in capsys.readouterr().err  # marl-eval needs a balanced grid


def test_info_of_a_real_run(tmp_path, capsys):
    run = tmp_path / "run"
    steps = train(tiny_config("race", seed=3), run)["total_env_steps"]  # the last generation may overshoot 160
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    for needle in (
        "mamujoco/HalfCheetah-6x1",
        "race",
        "seed         3",
        f"{steps} / 160 env steps ({100 * steps / 160:.1f}%)",
        "generation",
        "updates",
        "wall time",
        "eval_return=",
        "latest.pt (",
        "finished     yes",
        "race.pop_size=3",
    ):
        assert needle in out, (needle, out)
    config_line = next(line for line in out.splitlines() if line.startswith("config "))
    assert "vmm_beta" not in config_line  # the default `auto`, recorded as the number it stood for, is no override
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["finished"] is True and info["env_steps"] == steps and "latest.pt" in info["checkpoints"]
    (run / "summary.json").unlink()
    assert main(["info", str(run)]) == 0
    assert f"no (continue with: racemarl train --resume {run})" in capsys.readouterr().out
    assert main(["info", str(tmp_path)]) == 2
    assert "is not a run directory (no config.yaml and no metrics.csv)" in capsys.readouterr().err


def test_tasks_lists_sizes(capsys):
    assert main(["tasks", "--names-only"]) == 0
    assert capsys.readouterr().out.split() == list_tasks()
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["task", "agents"]
    spec = make_env("mamujoco/HalfCheetah-6x1").spec
    row = next(ln.split() for ln in lines if ln.startswith("mamujoco/HalfCheetah-6x1 "))
    assert row == [
        "mamujoco/HalfCheetah-6x1",
        "6",
        ",".join(map(str, spec.obs_dims)),
        str(spec.state_dim),
        "1,1,1,1,1,1",
    ]
    mamujoco = [t for t in list_tasks() if t.startswith("mamujoco/")]
    assert sum(ln.startswith("mamujoco/") for ln in lines) == len(mamujoco)
    assert any(ln.startswith("(smac/* not shown:") and "StarCraft" in ln for ln in lines)  # SMAC is not installed here


# ---------------------------------------------------------------- W&B / MLflow


def test_tracking_is_off_by_default(tmp_path):
    assert make_trackers(tmp_path) == []


@pytest.mark.parametrize("pkg, key", [("wandb", "logging.wandb"), ("mlflow", "logging.mlflow")])
def test_tracking_without_the_package_is_a_clear_error(tmp_path, monkeypatch, capsys, pkg, key):
    monkeypatch.setitem(sys.modules, pkg, None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, f"{pkg}.tracking", None)
    with pytest.raises(
        TrackingError, match=rf"{key} is on but {pkg} is not installed.*pip install 'racemarl\[tracking\]'"
    ):
        train(tiny_config("matd3", total_steps=40, extra=[f"{key}=true"]), tmp_path / "r")
    # and through the CLI: one line, exit 2
    assert main(tiny_train_args(tmp_path / "c", "--set", f"{key}=true", eval_interval=40)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "racemarl[tracking]" in err


def test_mlflow_logging_offline(tmp_path):
    pytest.importorskip("mlflow", reason="optional: pip install 'racemarl[tracking]'")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    train(tiny_config("matd3", extra=["logging.mlflow=true"]), run)
    ids = json.loads((run / "tracking.json").read_text())
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    history = client.get_metric_history(ids["mlflow"], "eval_return")
    rows = read_metrics(run / "metrics.csv")
    assert [m.step for m in history] == [int(r["env_steps"]) for r in rows]
    assert [m.value for m in history] == pytest.approx([float(r["eval_return"]) for r in rows], rel=1e-5)
    assert client.get_run(ids["mlflow"]).data.params["learner.batch_size"] == "16"


def test_wandb_logging_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="optional: pip install 'racemarl[tracking]'")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(tiny_config("matd3", total_steps=80, extra=["logging.wandb=true"]), run)
    run_id = json.loads((run / "tracking.json").read_text())["wandb"]
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline and list(offline[0].glob("*.wandb"))
    assert len(load_runs([run])[0].rows) == 3


def test_table_max_steps_uses_only_evaluations_within_the_budget(tmp_path):
    from racemarl.experiment.report import results_table
    from racemarl.records.runs import load_runs
    from racemarl.train import train
    from tests.conftest import tiny_config

    train(tiny_config("matd3", total_steps=120), tmp_path / "run")
    runs = load_runs([tmp_path])
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    at_80 = [float(r["eval_return"]) for r in rows if int(r["env_steps"]) <= 80][-1]
    table = results_table(runs, max_steps=80)
    assert f"| {at_80:.1f} ± " in table or f"| {at_80:.1f} |" in table
    assert "| 80 |" in table and "up to 80 env steps" in table


def test_table_reports_the_marl_team_beside_the_headline(tmp_path, capsys):
    """RACE's headline is the better of two teams: the table adds the MARL team alone, with its own P(X > Y)."""
    root = tmp_path / "runs"
    for seed, (head, marl) in enumerate([(50.0, 10.0), (60.0, 12.0)], start=1):
        write_fake_run(
            root / f"r{seed}",
            "race",
            seed,
            [0, 100],
            [0.0, head],
            extra={1: {"eval_return_marl": marl}, 0: {"eval_return_marl": 0.0}},
        )
    for seed, value in enumerate([30.0, 40.0], start=1):
        write_fake_run(
            root / f"m{seed}",
            "matd3",
            seed,
            [0, 100],
            [0.0, value],
            extra={1: {"eval_return_marl": value}, 0: {"eval_return_marl": 0.0}},
        )
    assert main(["table", str(root)]) == 0
    out = capsys.readouterr().out
    head, marl = out.split("The MARL team alone (`eval_return_marl`)")
    assert "| mamujoco/HalfCheetah-6x1 | race | 2 | 100 | 55.0 ± 5.0 |" in head
    assert "| matd3 | race | 1 | 0.00 |" in head  # the headline: RACE above MATD3 in every pair
    assert "| mamujoco/HalfCheetah-6x1 | race | 2 | 100 | 11.0 ± 1.0 |" in marl
    assert "| mamujoco/HalfCheetah-6x1 | matd3 | 2 | 100 | 35.0 ± 5.0 |" in marl  # one team: the same numbers
    assert "| matd3 | race | 1 | 1.00 |" in marl  # the MARL team alone: below MATD3 in every pair
    assert main(["table", str(root), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {(r["algo"], r["metric"]) for r in rows} == {
        ("race", "eval_return"),
        ("matd3", "eval_return"),
        ("race", "eval_return_marl"),
        ("matd3", "eval_return_marl"),
    }


def test_table_without_a_population_method_has_no_marl_block(fake_runs, tmp_path, capsys):
    write_fake_run(tmp_path / "m" / "a", "matd3", 1, [0, 100], [0.0, 1.0], extra={1: {"eval_return_marl": 1.0}})
    assert main(["table", str(tmp_path / "m")]) == 0
    assert "MARL team alone" not in capsys.readouterr().out


def test_table_aggregates_normalised_scores_across_tasks(tmp_path, capsys):
    # finals per task; normalised by (x - random) / (best run of the task - random)
    finals = {
        ("mamujoco/HalfCheetah-6x1", "race"): [10.0, 20.0],  # random 0, best 20: 0.5, 1.0
        ("mamujoco/HalfCheetah-6x1", "matd3"): [4.0, 15.0],  # 0.2, 0.75
        ("mamujoco/Hopper-3x1", "race"): [30.0, 60.0],  # random 10, best 110: 0.2, 0.5
        ("mamujoco/Hopper-3x1", "matd3"): [20.0, 110.0],  # 0.1, 1.0
    }
    for (task, algo), values in finals.items():
        for seed, v in enumerate(values, start=1):
            write_fake_run(tmp_path / "runs" / f"{task[9:]}_{algo}{seed}", algo, seed, [0, 100], [0.0, v], task=task)
    args = [
        "table",
        str(tmp_path / "runs"),
        "--random",
        "mamujoco/HalfCheetah-6x1=0",
        "--random",
        "mamujoco/Hopper-3x1=10",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "normalised per task: 0 = the random policy, 1 = the task's best final value of any run here" in out
    # race {0.2, 0.5, 0.5, 1.0}: IQM = mean of the middle two = 0.50, mean 0.55; matd3 {0.1, 0.2, 0.75, 1.0}: 0.475, 0.5125
    race = next(line for line in out.splitlines() if line.startswith("| race | 2 | 2 |"))
    matd3 = next(line for line in out.splitlines() if line.startswith("| matd3 | 2 | 2 |"))
    assert race.split(" | ")[3:4] == ["0.50"] and race.split(" | ")[5] == "0.55"
    assert matd3.split(" | ")[3] in ("0.47", "0.48") and matd3.split(" | ")[5] == "0.51"
    # without --random: no aggregate
    assert main(["table", str(tmp_path / "runs")]) == 0
    assert "normalised per task" not in capsys.readouterr().out
    # a random value above every run of its task: no aggregate, and a line that says why
    assert main(["table", str(tmp_path / "runs"), "--random", "mamujoco/Hopper-3x1=500"]) == 0
    out = capsys.readouterr().out
    assert "normalised per task" not in out
    assert "No across-task aggregate of eval_return: on mamujoco/Hopper-3x1 no run ends above the --random" in out


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "mamujoco/Hopper-3x1",
            "--random must be TASK=NUMBER (e.g. mamujoco/Hopper-3x1=18.2), got 'mamujoco/Hopper-3x1'",
        ),
        (
            "mamujoco/Hopper-3x1=x",
            "--random must be TASK=NUMBER (e.g. mamujoco/Hopper-3x1=18.2), got 'mamujoco/Hopper-3x1=x'",
        ),
        ("smax/3m=0.2", "--random names a task that none of these runs trained: smax/3m"),
    ],
)
def test_table_random_errors_are_one_line(fake_runs, capsys, value, message):
    assert main(["table", str(fake_runs), "--random", value]) == 2
    assert capsys.readouterr().err.strip() == f"racemarl: error: {message}"
