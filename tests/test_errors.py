"""Every bad input is one line on stderr, exit status 2, no traceback, and nothing written."""

import argparse
import os
import subprocess
import sys

import pytest
import torch

from racemarl.cli import main
from racemarl.config import Config, ConfigError
from racemarl.train import train
from tests.conftest import tiny_config
from tests.test_plot import write_fake_run


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


@pytest.fixture
def place(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--out", "{p}/afile"], "is a file, not a folder"),
        (["--out", "{p}/afile/run"], "afile is a file, not a folder"),
        (["--out", "/proc/racemarl-test/run"], "cannot write into /proc"),
        (["--out", "{p}/r", "--seed", "-1"], "seed must be >= 0, got -1"),
        (["--out", "{p}/r", "--set", "learner.lr_actor=-0.001"], "learner.lr_actor must be > 0"),
        (["--out", "{p}/r", "--set", "discrete.lr_critic=0"], "discrete.lr_critic must be > 0"),
        (["--out", "{p}/r", "--set", "net.encoder_hidden=0"], "net.encoder_hidden must be >= 1"),
        (["--out", "{p}/r", "--set", "net.critic_hidden=[64,0]"], "net.critic_hidden must be >= 1"),
        (["--out", "{p}/r", "--set", "discrete.critic_hidden=[]"], "must list at least one width"),
        (["--out", "{p}/r", "--set", "learner.expl_noise=-0.1"], "learner.expl_noise must be >= 0"),
        (["--out", "{p}/r", "--set", "race.value_target_factor=-1"], "race.value_target_factor must be >= 0"),
        (["--out", "{p}/r", "--set", "learner.tau=.nan"], "learner.tau must be"),
        (["--out", "{p}/r", "--set", "race.mutation_strength=.inf"], "must be a finite number"),
        (["--out", "{p}/r", "--set", "checkpoint_minutes=-1"], "checkpoint_minutes must be >= 0"),
        (["--out", "{p}/r", "--config", "{p}/adir"], "is not a file"),
        (["--out", "{p}/r", "--config", "{p}/missing.yaml"], "does not exist"),
        (["--out", "{p}/r", "--set", "env.task=smax/no_such_map"], "unknown task 'smax/no_such_map'"),
    ],
)
def test_train_rejects_bad_input_before_any_work(place, capsys, args, needle):
    args = [a.format(p=place) for a in args]
    before = _snapshot(place)
    assert main(["train", "--algo", "matd3", "--total-steps", "10", "--no-progress", *args]) == 2
    _one_line_error(capsys, needle)
    assert _snapshot(place) == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--config", "{p}/adir"], "is not a file"),
        (["--set", "env.task=smax/no_such_map"], "unknown task 'smax/no_such_map'"),
        (["--set", "seed=-3"], "seed must be >= 0"),
    ],
)
def test_config_command_rejects_what_train_rejects(place, capsys, args, needle):
    assert main(["config", *[a.format(p=place) for a in args]]) == 2
    _one_line_error(capsys, needle)


def test_validate_rejects_an_unknown_task():
    cfg = Config()
    cfg.env.task = "mamujoco/HalfCheetah-7x1"
    with pytest.raises(ConfigError, match="env.task: unknown task"):
        cfg.validate()


def test_a_yaml_list_as_config_is_refused(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
    assert main(["config", "--config", str(tmp_path / "c.yaml")]) == 2
    _one_line_error(capsys, "must hold a mapping")


@pytest.mark.parametrize(
    "command",
    [
        ["plot", "{runs}", "--out", "{p}/afile/fig.png"],
        ["plot", "{runs}", "--out", "{p}/adir"],
        ["table", "{runs}", "--out", "{p}/afile/t.md"],
        ["export", "{runs}", "--out", "{p}/adir"],
        ["export", "{runs}", "--out", "/proc/racemarl-test/r.json"],
    ],
)
def test_report_commands_check_their_output_first(place, capsys, command):
    runs = place / "runs"
    write_fake_run(runs / "a", "race", 1, [0, 100], [0.0, 1.0])
    before = _snapshot(place)
    assert main([c.format(p=place, runs=runs) for c in command]) == 2
    _one_line_error(capsys, "--out")
    assert _snapshot(place) == before


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(tiny_config("matd3", total_steps=40), run)
    return run


@pytest.mark.parametrize("flag", ["--out", "--video"])
def test_eval_checks_its_outputs_before_playing(tiny_run, place, capsys, monkeypatch, flag):
    import racemarl.experiment.evaluate as ev

    def no_work(*a, **k):
        raise AssertionError("episodes were played before the output was checked")

    monkeypatch.setattr(ev, "rebuild", no_work)
    target = f"{place}/afile/x.mp4" if flag == "--video" else f"{place}/afile/e.json"
    before = _snapshot(tiny_run)
    assert main(["eval", str(tiny_run), flag, target]) == 2
    _one_line_error(capsys, "afile is a file, not a folder")
    assert _snapshot(tiny_run) == before


def _resume_copy(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    return run


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("truncate", "not a readable checkpoint"),
        ("pickle", "loading it could run code"),
        ("foreign", "not a racemarl training checkpoint"),
        ("text", "not a readable checkpoint"),
        ("hello", "not a readable checkpoint"),  # torch's legacy unpickler: KeyError
        ("abc", "not a readable checkpoint"),  # IndexError
        ("legacy", "not a readable checkpoint"),  # a plain pickle, not torch's zip format (and no warning printed)
    ],
)
def test_a_bad_checkpoint_is_a_clear_error(tiny_run, tmp_path, capsys, damage, needle):
    run = _resume_copy(tiny_run, tmp_path)
    path = run / "checkpoints" / "latest.pt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "pickle":
        torch.save({"config": argparse.Namespace(x=1)}, path)
    elif damage == "foreign":
        torch.save({"model": torch.zeros(2)}, path)
    elif damage == "legacy":
        import pickle

        path.write_bytes(pickle.dumps({"config": {"x": 1}}, protocol=4))
    elif damage in ("hello", "abc"):
        path.write_text(damage + "\n")
    else:
        path.write_text("not a checkpoint")
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "--total-steps", "80", "--no-progress"]) == 2
    err = _one_line_error(capsys, needle)
    assert "weights_only" not in err
    assert _snapshot(run) == before
    assert main(["eval", str(run)]) == 2  # eval reads checkpoints the same way
    assert "weights_only" not in _one_line_error(capsys, str(path))


def test_version_and_closed_pipe(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    from racemarl import __version__

    assert capsys.readouterr().out.strip() == f"racemarl {__version__}"
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: like `racemarl ... | head` after head exits
    res = subprocess.run(
        [sys.executable, "-m", "racemarl", "tasks", "--names-only"], stdout=write, stderr=subprocess.PIPE, text=True
    )
    os.close(write)
    assert res.returncode == 141 and res.stderr == ""


def test_tasks_table_is_cached(tmp_path, monkeypatch, capsys):
    import racemarl.envs as envs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = {"n": 0}
    real = envs.make_env

    def counting(*a, **k):
        calls["n"] += 1
        if a[0].startswith("smax/"):
            raise envs.MissingDependencyError("not here (test)")
        return real(*a, **k)

    monkeypatch.setattr(envs, "make_env", counting)
    assert main(["tasks"]) == 0
    first, built = capsys.readouterr().out, calls["n"]
    assert built > 0 and "mamujoco/HalfCheetah-6x1" in first and "smax/* not shown" in first
    assert main(["tasks"]) == 0
    assert capsys.readouterr().out == first and calls["n"] == built  # no environment built the second time
    assert main(["tasks", "--agent-obsk", "1"]) == 0  # another key: built again
    assert calls["n"] > built


@pytest.mark.parametrize(
    "command, needle",
    [
        (["table", "{runs}", "--digits", "-1"], "--digits must be >= 0"),
        (["eval", "{run}", "--seed", "-1"], "--seed must be >= 0"),
        (["sweep", "--tasks", "mamujoco/HalfCheetah-6x1", "--total-steps", "10", "--out", "{p}/afile"], "is a file"),
        (["sweep", "--tasks", "mamujoco/HalfCheetah-6x1", "--total-steps", "10", "--out", "{p}"], "not a sweep folder"),
        (["export", "{runs}", "--out", "{p}/e.json", "--name", " "], "--name must not be empty"),
    ],
)
def test_other_commands_reject_bad_input(place, tiny_run, capsys, command, needle):
    runs = place / "runs"
    write_fake_run(runs / "a", "race", 1, [0, 100], [0.0, 1.0])
    before = _snapshot(place)
    assert main([c.format(p=place, runs=runs, run=tiny_run) for c in command]) == 2
    _one_line_error(capsys, needle)
    assert _snapshot(place) == before


def test_a_mujoco_gl_that_cannot_load_is_one_line(tmp_path):
    pytest.importorskip("mujoco")
    out = tmp_path / "run"
    env = {**os.environ, "MUJOCO_GL": "nosuchbackend"}  # mujoco reads it at import: a fresh process
    res = subprocess.run(
        [sys.executable, "-m", "racemarl", "train", "--task", "mamujoco/Hopper-3x1", "--total-steps", "50"]
        + ["--out", str(out), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert "MUJOCO_GL=nosuchbackend" in res.stderr and "unset MUJOCO_GL" in res.stderr
    assert not out.exists()


def test_a_resume_applies_the_session_settings_given_with_set(tiny_run):
    # `--set` on a resume may change what never changes what is learned, like the flags; it is not dropped
    from racemarl.cli import build_parser
    from racemarl.cli.commands import _resume_config

    def resumed(*extra):
        return _resume_config(build_parser().parse_args(["train", "--resume", str(tiny_run), *extra]), tiny_run)

    cfg = resumed("--set", "rollout.backend=process", "--set", "rollout.workers=2", "--set", "progress=false")
    assert (cfg.rollout.backend, cfg.rollout.workers, cfg.progress) == ("process", 2, False)
    cfg = resumed("--set", "rollout.workers=2", "--backend", "inline")  # the flag has the last word
    assert (cfg.rollout.backend, cfg.rollout.workers, cfg.progress) == ("inline", 0, True)
    # the number of PyTorch threads too: the run keeps its own unless one is given
    assert (resumed().torch_threads, resumed("--set", "torch_threads=2").torch_threads) == (1, 2)


def test_resuming_a_finished_run_leaves_it_untouched(tiny_run, tmp_path, capsys):
    run = _resume_copy(tiny_run, tmp_path)

    def state():
        return sorted((str(p.relative_to(run)), p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*"))

    before = state()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "run already finished" in capsys.readouterr().out
    assert state() == before  # no summary.json rewritten, no new TensorBoard file


@pytest.mark.parametrize("summary", ["[]", '"done"', '{"total_env_steps": "abc"}', "{not json", "\xff\xfe"])
def test_a_foreign_summary_is_not_a_finished_run(tmp_path, summary):
    # `train --resume` and `sweep` ask run_state whether a run is finished: a summary.json they cannot read as
    # a step count must say "not finished" (and resume from the checkpoint), never crash
    from racemarl.experiment.sweep import run_state
    from racemarl.records.runs import LATEST_CHECKPOINT

    (tmp_path / "summary.json").write_bytes(summary.encode("latin-1"))
    assert run_state(tmp_path, 10) == "new"
    (tmp_path / LATEST_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / LATEST_CHECKPOINT).write_bytes(b"")
    assert run_state(tmp_path, 10) == "resume"
    (tmp_path / "summary.json").write_text('{"total_env_steps": 10}')
    assert run_state(tmp_path, 10) == "finished"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--algo", "bogus"], "racemarl train: error: argument --algo: invalid choice: 'bogus'"),
        (["tasks", "--agent-obsk", "x"], "racemarl tasks: error: argument --agent-obsk: invalid int value: 'x'"),
        (["nosuchcommand"], "racemarl: error: argument command: invalid choice"),
    ],
)
def test_a_usage_error_is_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = _one_line_error(capsys, needle)
    assert "usage:" not in err and "--help" in err
