"""Runs pooled as seeds only when they are the same experiment; rliable statistics; sweep settings."""

import numpy as np
import pytest

from racemarl.cli import main
from racemarl.config import resolve_vmm_beta, save_yaml
from racemarl.envs import is_discrete_task
from racemarl.experiment.stats import bootstrap_ci, interval, probability_of_improvement
from racemarl.experiment.sweep import Sweep, SweepSpec
from tests.conftest import tiny_config
from tests.test_plot import write_fake_run


def fake(root, name, algo, seed, values, sets=(), diverged=False, **kw):
    path = write_fake_run(root / name, algo, seed, [0, 100, 200], values, **kw)
    cfg = tiny_config(
        algo, seed=seed, total_steps=200, extra=list(sets), **({"env": {"task": kw["task"]}} if "task" in kw else {})
    )
    # a run's config.yaml records the number `auto` stood for on its task
    cfg.race.vmm_beta = resolve_vmm_beta(cfg.race.vmm_beta, is_discrete_task(cfg.env.task))
    save_yaml(cfg, path / "config.yaml")
    if diverged:
        (path / "summary.json").unlink()
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "last_good.pt").write_bytes(b"")
    return path


@pytest.fixture
def ablation(tmp_path):
    root = tmp_path / "runs"
    fake(root, "a1", "race", 1, [0.0, 10.0, 20.0])
    fake(root, "a2", "race", 2, [0.0, 10.0, 30.0])
    fake(root, "b1", "race", 1, [0.0, 1.0, 2.0], sets=["race.vmm_beta=0"])
    fake(root, "b2", "race", 2, [0.0, 1.0, 4.0], sets=["race.vmm_beta=0"])
    fake(root, "d3", "race", 3, [0.0, -1e6, -1e9], diverged=True)
    return root


def test_runs_with_other_settings_are_not_pooled(ablation, capsys):
    assert main(["table", str(ablation)]) == 0
    out = capsys.readouterr().out
    assert "| mamujoco/HalfCheetah-6x1 | race race.vmm_beta=0.0 | 2 | 200 | 3.0 ± 1.0 |" in out
    assert "| mamujoco/HalfCheetah-6x1 | race race.vmm_beta=10.0 | 2 | 200 | 25.0 ± 5.0 |" in out
    assert "| mamujoco/HalfCheetah-6x1 | race race.vmm_beta=10.0 (diverged) | 1 (0 finished) |" in out
    assert "5 run(s) in 3 group(s)" in out and "groups differ in race.vmm_beta" in out
    # both vmm_beta=0 runs end below both default runs: P(X > Y) = 0 for X = the ablation
    assert "| race race.vmm_beta=0.0 | race race.vmm_beta=10.0 | 1 | 0.00 | [0.00, 0.00] |" in out


def test_runs_differing_only_in_arithmetic_settings_are_pooled(tmp_path, capsys):
    root = tmp_path / "runs"
    fake(root, "a1", "race", 1, [0.0, 10.0, 20.0], sets=["net.fast_tanh=false"])
    fake(root, "a2", "race", 2, [0.0, 10.0, 30.0], sets=["net.fast_tanh=true", "device=cuda", "torch_threads=4"])
    fake(root, "b1", "race", 1, [0.0, 1.0, 2.0], sets=["net.embed_dim=4"])  # a real difference still splits
    assert main(["table", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| mamujoco/HalfCheetah-6x1 | race net.embed_dim=8 | 2 | 200 | 25.0 ± 5.0 |" in out
    assert "3 run(s) in 2 group(s)" in out and "groups differ in net.embed_dim" in out


def test_plot_labels_lines_by_what_differs_and_says_what_it_left_out(ablation, tmp_path, capsys):
    fake(ablation, "w1", "race", 1, [0.0, 0.5, 1.0], task="smax/3m", extra={2: {"eval_win_rate": 0.5}})
    assert main(["plot", str(ablation), "--out", str(tmp_path / "f.png"), "--metric", "eval_win_rate"]) == 0
    captured = capsys.readouterr()
    assert "smax/3m race race.vmm_beta=0.001" in captured.out
    assert "left out, no values of eval_win_rate (MaMuJoCo tasks have no win rate)" in captured.err
    assert "mamujoco/HalfCheetah-6x1 race race.vmm_beta=0.0" in captured.err


def test_rliable_intervals_and_probability_of_improvement():
    values = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mean, lo, hi = interval(values, "bootstrap")
    assert np.allclose(mean, [2.0, 4.0]) and np.all(lo < mean) and np.all(hi > mean)
    assert np.all(lo >= values.min(0)) and np.all(hi <= values.max(0))
    again = interval(values, "bootstrap")
    assert np.array_equal(again[1], lo)  # reproducible
    state = np.random.get_state()[1].copy()
    bootstrap_ci([1.0, 2.0, 3.0])
    assert np.array_equal(np.random.get_state()[1], state)  # the caller's global stream is untouched
    mean_t, lo_t, hi_t = interval(values, "t")
    assert hi_t[0] - mean_t[0] == pytest.approx(4.303 * 2.0 / np.sqrt(3), abs=1e-3)
    x, y = np.array([[3.0], [4.0]]), np.array([[1.0], [2.0]])
    assert probability_of_improvement(x, y)[0] == 1.0
    assert probability_of_improvement(y, x)[0] == 0.0
    assert probability_of_improvement(x, x)[0] == 0.5
    assert probability_of_improvement(np.array([[1.0], [3.0]]), np.array([[2.0], [2.0]]))[0] == 0.5


def test_sweep_with_the_same_sets_in_another_order_is_accepted(tmp_path):
    def spec(sets):
        return SweepSpec(tasks=["mamujoco/HalfCheetah-6x1"], algos=["matd3"], seeds=[1], total_steps=40, sets=sets)

    first = Sweep(spec(["learner.batch_size=16", "learner.lr_actor=1e-3"]), tmp_path)
    first.out.mkdir(parents=True, exist_ok=True)
    first._check_folder_config()
    Sweep(spec(["learner.lr_actor=0.001", "learner.batch_size=16"]), tmp_path)._check_folder_config()
    from racemarl.records.runs import RunDirError

    with pytest.raises(RunDirError, match="other settings"):
        Sweep(spec(["learner.batch_size=32", "learner.lr_actor=1e-3"]), tmp_path)._check_folder_config()
