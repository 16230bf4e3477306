"""Runs that never lose work: TensorBoard on resume, signals, wall-clock checkpoints, evaluation seeds,
run folders that are refused, and resume flags."""

import os
import signal

import pytest
import torch

from racemarl.cli import main
from racemarl.records import checkpoint as ckpt
from racemarl.records.metrics import WALL_CLOCK_COLUMNS, read_metrics
from racemarl.train import RunError, Trainer, TrainingInterrupted, _eval_postfix, train
from tests.conftest import TINY_CLI_SETS, tiny_config, tiny_train_args


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_COLUMNS} for r in read_metrics(run_dir / "metrics.csv")]


def _tb_steps(run_dir, tag):
    """The steps TensorBoard shows for `tag`, read back from the event files (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_weights(a, b):
    wa = ckpt.load(a / "checkpoints" / "latest.pt")["learner"]["model"]
    wb = ckpt.load(b / "checkpoints" / "latest.pt")["learner"]["model"]
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_keeps_every_tensorboard_point(tmp_path):
    train(tiny_config("matd3", total_steps=100), tmp_path)
    Trainer(tiny_config("matd3", total_steps=100), tmp_path, resume=True).train()  # a no-op resume
    Trainer(tiny_config("matd3", total_steps=160), tmp_path, resume=True).train()  # an extended budget
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["env_steps"]) for r in rows] == [20, 40, 80, 100, 120, 160]
    assert _tb_steps(tmp_path, "eval/eval_return") == [20, 40, 80, 100, 120, 160]
    assert _tb_steps(tmp_path, "generation/train_return") == list(range(20, 161, 20))  # one point per generation


def test_off_schedule_budget_then_resume_matches_a_straight_run(tmp_path):
    """N = 100 is not on the evaluation schedule (every 40): the resumed run has one extra row at 100,
    and every row the straight run has is identical (evaluation seeds follow the env step)."""
    train(tiny_config("matd3", total_steps=200), tmp_path / "straight")
    train(tiny_config("matd3", total_steps=100), tmp_path / "split")
    Trainer(tiny_config("matd3", total_steps=200), tmp_path / "split", resume=True).train()
    straight, split = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert [r["env_steps"] for r in split] == ["20", "40", "80", "100", "120", "160", "200"]
    assert [r for r in split if r["env_steps"] != "100"] == straight
    assert _same_weights(tmp_path / "straight", tmp_path / "split")


def test_sigint_inside_updates_writes_a_checkpoint_and_resume_is_exact(tmp_path, monkeypatch):
    train(tiny_config("race", total_steps=240), tmp_path / "straight")
    run = tmp_path / "split"
    trainer = Trainer(tiny_config("race", total_steps=240), run)
    original, calls = trainer.learner.update, {"n": 0}

    def update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 50:  # in the middle of the first generation's 80 updates
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.learner, "update", update)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in the background (nohup ... &)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    assert info.value.signal_name == "SIGINT" and f"--resume {run}" in str(info.value)
    progress = ckpt.load(run / "checkpoints" / "latest.pt")["progress"]
    assert progress["updates"] == 50  # the update under way was finished, no other one started
    assert progress["pending_updates"] > 0 and progress["pending_fitness"] is not None  # inside a generation
    assert signal.getsignal(signal.SIGINT) == before  # the caller's handler is back
    Trainer(tiny_config("race", total_steps=240), run, resume=True).train()
    assert _rows(run) == _rows(tmp_path / "straight")
    assert _same_weights(run, tmp_path / "straight")


class _Killed(BaseException):
    """Stands for kill -9 right after a checkpoint was written."""


def test_wall_clock_checkpoints_survive_a_kill(tmp_path, monkeypatch):
    train(tiny_config("matd3", total_steps=160), tmp_path / "straight")
    run = tmp_path / "killed"
    saves = []
    real_save = Trainer.save

    def save(self):
        real_save(self)
        saves.append((self.progress.env_steps, self.progress.pending_updates))
        if len(saves) == 25:
            raise _Killed

    monkeypatch.setattr(Trainer, "save", save)
    with pytest.raises(_Killed):
        train(tiny_config("matd3", total_steps=160, checkpoint_minutes=1e-9), run)  # a checkpoint at every check
    monkeypatch.undo()
    assert any(pending > 0 for _, pending in saves)  # written between updates, not only at evaluations
    (run / "checkpoints" / ".latest.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # left by a killed save
    Trainer(tiny_config("matd3", total_steps=160), run, resume=True).train()
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert _rows(run) == _rows(tmp_path / "straight")
    assert _same_weights(run, tmp_path / "straight")


def test_cli_sigterm_message_names_the_run(tmp_path, monkeypatch, capsys):
    from racemarl import train as train_mod

    original = train_mod.Trainer.play_generation

    def play(self):
        if self.progress.generation == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(train_mod.Trainer, "play_generation", play)
    out = tmp_path / "run"
    sets = TINY_CLI_SETS
    code = main(["train", "--algo", "matd3", "--total-steps", "400", "--no-progress", "--out", str(out), *sets])
    err = capsys.readouterr().err
    assert code == 143
    assert f"racemarl train --resume {out}" in err and "stopped by SIGTERM at 60 env steps" in err
    assert ckpt.load(out / "checkpoints" / "latest.pt")["progress"]["env_steps"] == 60


@pytest.mark.parametrize("kind", ["unrelated", "finished other seed", "sweep folder"])
def test_a_folder_that_is_not_this_run_is_refused(tmp_path, kind, capsys):
    folder = tmp_path / "f"
    if kind == "unrelated":
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    elif kind == "finished other seed":
        train(tiny_config("matd3", total_steps=40, seed=1), folder)
    else:
        train(tiny_config("matd3", total_steps=40, seed=1), folder / "run_a")
    before = _snapshot(folder)
    with pytest.raises(RunError, match="choose another folder|choose a new or empty folder"):
        train(tiny_config("matd3", total_steps=40, seed=2), folder)
    assert main(["train", "--algo", "matd3", "--seed", "2", "--total-steps", "40", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder) in err
    assert _snapshot(folder) == before


def test_an_early_start_of_the_same_run_is_reused(tmp_path):
    """A run killed before its first checkpoint left config.yaml and metrics.csv: the same command starts it again."""
    from racemarl.config import save_yaml

    tmp_path.joinpath("metrics.csv").write_text("env_steps\n")
    save_yaml(tiny_config("matd3", total_steps=40), tmp_path / "config.yaml")
    train(tiny_config("matd3", total_steps=40), tmp_path)
    assert (tmp_path / "checkpoints" / "latest.pt").is_file()
    assert "progress" not in (tmp_path / "config.yaml").read_text()  # a session setting, not saved


@pytest.mark.parametrize("native", [True, False])
def test_an_early_start_with_precision_auto_is_reused_where_auto_resolves_the_same(tmp_path, monkeypatch, native):
    """config.yaml records what `auto` resolved to; the same command (`precision: auto`) starts that run again, and
    a start whose precision `auto` would not choose here is another run."""
    import racemarl.precision
    from racemarl.config import save_yaml

    monkeypatch.setattr(racemarl.precision, "native_bf16", lambda device: native)
    resolved, other = ("bf16", "fp32") if native else ("fp32", "bf16")
    for name, saved in (("same", resolved), ("other", other)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text("env_steps\n")
        save_yaml(tiny_config("matd3", total_steps=40, precision=saved), tmp_path / name / "config.yaml")
    train(tiny_config("matd3", total_steps=40, precision="auto"), tmp_path / "same")
    assert "precision: " + resolved in (tmp_path / "same" / "config.yaml").read_text()
    with pytest.raises(RunError, match=r"with other settings \(precision\)"):
        train(tiny_config("matd3", total_steps=40, precision="auto"), tmp_path / "other")


def test_resume_flags(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_train_args(out)) == 0
    config = (out / "config.yaml").read_text()
    # a smaller budget is refused, and nothing changes
    assert main(["train", "--resume", str(out), "--total-steps", "20"]) == 2
    assert "smaller than the run's budget of 40" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == config
    # other settings are refused, naming them
    assert main(["train", "--resume", str(out), "--set", "learner.batch_size=32", "--eval-interval", "10"]) == 2
    err = capsys.readouterr().err
    assert "learner.batch_size=32 (the run has 16)" in err and "eval_interval=10 (the run has 20)" in err
    assert (out / "config.yaml").read_text() == config
    # the run's own flags, repeated, are accepted
    assert (
        main(
            [
                "train",
                "--resume",
                str(out),
                "--total-steps",
                "60",
                "--algo",
                "matd3",
                "--eval-interval",
                "20",
                "--no-progress",
                *TINY_CLI_SETS,
            ]
        )
        == 0
    )
    assert int(read_metrics(out / "metrics.csv")[-1]["env_steps"]) == 60


def test_progress_bar_and_summary_show_the_win_rate():
    assert _eval_postfix(None) == {"eval": "-"}
    assert _eval_postfix({"eval_return": 1.5, "eval_win_rate": 0.25}) == {"eval": "1.50", "win": "0.25"}
    assert _eval_postfix({"eval_return": -350.0, "eval_win_rate": None}) == {"eval": "-350.0"}


def test_an_evolution_report_survives_a_checkpoint(tmp_path):
    """Every field of the report (the slots, parents, sources, mutated heads) comes back from a saved checkpoint."""
    import numpy as np

    from racemarl.algorithms.evolution import GenerationReport
    from racemarl.records.run_state import report_from_state as _report_from_state
    from racemarl.records.run_state import report_state as _report_state

    report = GenerationReport(
        elites=[np.int64(2)],
        parents=[(0, 1), (3, 2)],
        children=[1, 4],
        sources=np.arange(6).reshape(3, 2),
        protected=[2],
        selected=[0, 3],
        mutated=[(1, 0), (4, 1)],
        injected_slot=np.int64(4),
    )
    ckpt.save_atomic({"report": _report_state(report)}, tmp_path / "c.pt")
    back = _report_from_state(ckpt.load(tmp_path / "c.pt")["report"])
    assert back.elites == [2] and back.parents == [(0, 1), (3, 2)] and back.mutated == [(1, 0), (4, 1)]
    assert np.array_equal(back.sources, report.sources) and back.injected_slot == 4
    assert (back.children, back.protected, back.selected) == ([1, 4], [2], [0, 3])


def test_discrete_off_schedule_budget_then_resume_matches_a_straight_run(tmp_path):
    """SMAX: both evaluated teams (MARL and champion) play episodes seeded by the env step, so a budget off
    the evaluation schedule adds one row and changes no other."""
    pytest.importorskip("jaxmarl")
    from tests.test_discrete import discrete_config

    kw = {"task": "smax/3m", "eval_episodes": 2, "eval_interval": 100}
    Trainer(discrete_config("race", total_steps=260, **kw), tmp_path / "straight").train()
    first = Trainer(discrete_config("race", total_steps=130, **kw), tmp_path / "split")
    first.train()
    end_of_first = first.progress.env_steps
    Trainer(discrete_config("race", total_steps=260, **kw), tmp_path / "split", resume=True).train()
    straight, split = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert end_of_first % 100 != 0  # off the schedule: an extra evaluation row
    assert [r for r in split if int(r["env_steps"]) != end_of_first] == straight
    assert len(split) == len(straight) + 1
