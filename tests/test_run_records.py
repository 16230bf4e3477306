"""`benchmarks/learning.py`'s run records: a finished run survives the loss of its run folder, and a record made
with other settings is refused before anything runs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from racemarl.records.runs import load_runs
from tests.test_plot import write_fake_run

spec = importlib.util.spec_from_file_location("learning", Path(__file__).parents[1] / "benchmarks" / "learning.py")
learning = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning)

TASK = "mamujoco/HalfCheetah-6x1"
EXTRA = ["--eval-interval", "5000", "--set", "race.vmm_beta=1"]


def no_training(*args, **kwargs):
    raise AssertionError(f"a run was started: {args}")


def test_a_finished_run_is_recorded_and_a_lost_run_folder_is_restored_without_training(tmp_path, monkeypatch):
    name = learning.run_name(TASK, "race", 101)
    first, records = tmp_path / "machine1" / name, tmp_path / "records" / name
    write_fake_run(first, "race", 101, [5000, 10_000, 15_000], [1.0, 7.0, 3.0])
    monkeypatch.setattr(learning.subprocess, "run", no_training)  # the run has finished: nothing may start
    got = learning.run_one(TASK, "race", 101, 10_000, first, EXTRA, first.parent, records)
    assert sorted(p.name for p in records.iterdir()) == ["config.yaml", "metrics.csv", "request.json", "summary.json"]
    assert json.loads((records / "request.json").read_text())["args"] == EXTRA

    second = tmp_path / "machine2" / name  # a machine that lost the run folders
    again = learning.run_one(TASK, "race", 101, 10_000, second, EXTRA, tmp_path, records)
    assert again["curve"] == got["curve"] and again["final_within_budget"] == 7.0  # the last eval within 10k
    (run,) = load_runs([tmp_path / "records"])  # a record is a run folder for `racemarl table` and the tables
    assert run.seed == 101 and run.series("eval_return")[1] == [1.0, 7.0, 3.0]


def test_a_run_that_trains_is_recorded_when_it_finishes(tmp_path, monkeypatch):
    out, records = tmp_path / "runs" / "r", tmp_path / "records" / "r"
    started = []

    def fake_train(cmd, **kwargs):  # stands in for `racemarl train`: the run finishes
        started.append(cmd)
        write_fake_run(out, "matd3", 1, [5000, 10_000], [2.0, 4.0])

    monkeypatch.setattr(learning.subprocess, "run", fake_train)
    learning.run_one(TASK, "matd3", 1, 10_000, out, EXTRA, tmp_path, records)
    assert len(started) == 1 and "--seed" in started[0]
    assert (records / "summary.json").exists()


def test_the_threads_reach_every_session_of_a_run_but_not_its_request(tmp_path, monkeypatch):
    """--torch-threads is how this machine runs the run, not what the run is: a started run resumes with it (the
    resume accepts another thread count), and its record stands for the run whatever the threads."""
    out, records = tmp_path / "runs" / "r", tmp_path / "records" / "r"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest.pt").write_bytes(b"")  # an interrupted run
    started = []

    def fake_train(cmd, **kwargs):  # the run finishes
        started.append(cmd)
        write_fake_run(tmp_path / "finished", "race", 1, [5000, 10_000], [2.0, 4.0])
        for f in (tmp_path / "finished").iterdir():
            f.rename(out / f.name)

    monkeypatch.setattr(learning.subprocess, "run", fake_train)
    learning.run_one(TASK, "race", 1, 10_000, out, EXTRA, tmp_path, records, threads=2)
    (cmd,) = started
    assert cmd[cmd.index("--resume") + 1] == str(out) and cmd[cmd.index("torch_threads=2") - 1] == "--set"
    assert json.loads((records / "request.json").read_text()) == learning.request_of(TASK, "race", 1, 10_000, EXTRA)


def test_a_record_made_with_other_settings_stops_the_benchmark_before_anything_runs(tmp_path, monkeypatch, capsys):
    records, runs = tmp_path / "records", tmp_path / "runs"
    name = learning.run_name(TASK, "race", 101)
    write_fake_run(tmp_path / "done", "race", 101, [5000, 10_000], [1.0, 2.0])
    learning.write_record(
        tmp_path / "done", records / "vmm_beta_1" / name, learning.request_of(TASK, "race", 101, 10_000, EXTRA)
    )
    argv = ["learning.py", "--tasks", TASK, "--algos", "race", "--seeds", "101", "--total-steps", "20000"]
    argv += ["--set", "race.vmm_beta=1", "--name", "vmm_beta_1", "--records", str(records), "--runs-dir", str(runs)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(learning.subprocess, "run", no_training)
    with pytest.raises(SystemExit) as e:
        learning.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "total_steps 10000 (asked: 20000)" in err and err.count("\n") == 1
    assert not runs.exists()  # nothing written
