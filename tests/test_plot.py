"""`racemarl plot`: curve data (alignment, mean, bands, smoothing) on fake runs with known values, and the figure."""

import csv
import math

import numpy as np
import pytest

from racemarl.cli import main
from racemarl.config import save_yaml
from racemarl.experiment.plot import confidence_band, learning_curves, moving_average, t_quantile
from racemarl.records.metrics import COLUMNS
from racemarl.records.runs import RunDirError, find_run_dirs, load_runs
from tests.conftest import tiny_config

T975 = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045}


def write_fake_run(
    path, algo, seed, steps, values, task="mamujoco/HalfCheetah-6x1", metric="eval_return", summary=True, extra=None
):
    """A run directory with config.yaml and a metrics.csv holding `values` of `metric` at `steps`."""
    path.mkdir(parents=True)
    save_yaml(tiny_config(algo, seed=seed, total_steps=int(steps[-1]), env={"task": task}), path / "config.yaml")
    with (path / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for i, (x, y) in enumerate(zip(steps, values)):
            row = {"env_steps": x, "generation": i + 1, "updates": 10 * i, metric: y}
            row.update((extra or {}).get(i, {}))
            w.writerow(row)
    if summary:
        import json

        (path / "summary.json").write_text(
            json.dumps(
                {
                    "task": task,
                    "algo": algo,
                    "seed": seed,
                    "final_eval_return": values[-1],
                    "best_eval_return": max(values),
                    "total_env_steps": int(steps[-1]),
                    "updates": 10,
                    "generations": len(steps),
                    "wall_time": 1.0,
                    "mean_sps": 1.0,
                }
            )
        )
    return path


def test_t_quantile_matches_tables():
    for df, expected in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, 4) == pytest.approx(-2.776, abs=1e-3)


def test_mean_and_t_band_of_runs_on_the_same_steps(tmp_path):
    write_fake_run(tmp_path / "a", "race", 1, [0, 100, 200], [0.0, 10.0, 20.0])
    write_fake_run(tmp_path / "b", "race", 2, [0, 100, 200], [2.0, 14.0, 30.0])
    write_fake_run(tmp_path / "c", "matd3", 1, [0, 100, 200], [5.0, 6.0, 7.0])
    curves = learning_curves(load_runs([tmp_path]))
    race = curves[("mamujoco/HalfCheetah-6x1", "race")]
    np.testing.assert_allclose(race.x, [0, 100, 200])
    np.testing.assert_allclose(race.mean, [1.0, 12.0, 25.0])
    half = t_quantile(0.975, 1) * np.array([2.0, 4.0, 10.0]) / math.sqrt(2) / math.sqrt(2)  # sd = |a-b|/sqrt2
    np.testing.assert_allclose(race.lo, race.mean - half)
    np.testing.assert_allclose(race.hi, race.mean + half)
    assert race.n_seeds == 2 and race.seeds == [1, 2]
    matd3 = curves[("mamujoco/HalfCheetah-6x1", "matd3")]
    assert matd3.n_seeds == 1
    np.testing.assert_allclose(matd3.lo, matd3.mean)  # one seed: no band
    np.testing.assert_allclose(matd3.hi, [5.0, 6.0, 7.0])


def test_runs_evaluated_at_different_steps_are_interpolated_onto_the_common_range(tmp_path):
    write_fake_run(tmp_path / "a", "race", 1, [0, 100, 200, 300], [0.0, 10.0, 20.0, 40.0])
    write_fake_run(tmp_path / "b", "race", 2, [0, 110, 220], [0.0, 22.0, 44.0])  # shorter: stops at 220
    (c,) = learning_curves(load_runs([tmp_path])).values()
    np.testing.assert_allclose(c.x, [0, 100, 110, 200, 220])  # union of steps inside [0, 220]
    a = np.array([0.0, 10.0, 11.0, 20.0, 24.0])  # a interpolated
    b = np.array([0.0, 20.0, 22.0, 40.0, 44.0])  # b interpolated (slope 0.2)
    np.testing.assert_allclose(c.mean, (a + b) / 2)
    half = t_quantile(0.975, 1) * np.abs(a - b) / 2
    np.testing.assert_allclose(c.hi - c.mean, half)


def test_smoothing_and_bootstrap(tmp_path):
    np.testing.assert_allclose(moving_average(np.array([0.0, 10.0, 20.0, 50.0]), 2), [0.0, 5.0, 15.0, 35.0])
    write_fake_run(tmp_path / "a", "race", 1, [0, 100, 200], [0.0, 10.0, 20.0])
    write_fake_run(tmp_path / "b", "race", 2, [0, 100, 200], [0.0, 20.0, 40.0])
    (c,) = learning_curves(load_runs([tmp_path]), smooth=3).values()
    np.testing.assert_allclose(c.mean, [0.0, 7.5, 15.0])  # (0, 5, 10) and (0, 10, 20)
    values = np.array([[1.0, 2.0, 3.0, 10.0], [5.0, 4.0, 3.0, 0.0], [3.0, 3.0, 3.0, 5.0]])
    mean, lo, hi = confidence_band(values, "bootstrap")
    assert np.all(lo <= mean + 1e-12) and np.all(mean <= hi + 1e-12)
    assert np.all(lo >= values.min(0)) and np.all(hi <= values.max(0))
    np.testing.assert_allclose(lo[2], 3.0)  # no spread, no band


def test_win_rate_bands_stay_inside_0_and_1(tmp_path):
    """Three seeds' t-interval of a win rate reaches past 1 and below 0; the band is clipped, the mean is not."""
    for seed, wins in ((1, [0.0, 1.0]), (2, [0.0, 0.1]), (3, [1.0, 1.0])):
        write_fake_run(tmp_path / f"r{seed}", "facmac", seed, [0, 100], wins, task="smax/3m", metric="eval_win_rate")
    runs = load_runs([tmp_path])
    (c,) = learning_curves(runs, "eval_win_rate").values()
    np.testing.assert_allclose(c.mean, [1 / 3, 0.7])
    np.testing.assert_allclose(c.lo, [0.0, 0.0])
    np.testing.assert_allclose(c.hi, [1.0, 1.0])
    assert learning_curves(runs, "eval_win_rate", ci="bootstrap")[("smax/3m", "facmac")].hi[0] <= 1.0
    for seed, values in ((1, [0.0, 1.0]), (2, [0.0, 0.1]), (3, [1.0, 1.0])):  # the same numbers as returns
        write_fake_run(tmp_path / "returns" / f"r{seed}", "facmac", seed, [0, 100], values, task="smax/3m")
    (r,) = learning_curves(load_runs([tmp_path / "returns"])).values()
    assert r.lo[0] < -1.0 and r.hi[0] > 1.7  # an unbounded metric keeps its whole t-interval


def test_sweep_folders_are_searched_recursively(tmp_path):
    write_fake_run(tmp_path / "sweep" / "x" / "r1", "race", 1, [0, 100], [0.0, 1.0])
    write_fake_run(tmp_path / "sweep" / "r2", "race", 2, [0, 100], [0.0, 1.0])
    (tmp_path / "sweep" / "logs").mkdir()
    assert len(find_run_dirs([tmp_path / "sweep"])) == 2
    with pytest.raises(RunDirError, match="holds no run directories"):
        find_run_dirs([tmp_path / "sweep" / "logs"])


def test_plot_cli_writes_a_figure(tmp_path, capsys):
    for task in ("mamujoco/HalfCheetah-6x1", "mamujoco/Hopper-3x1"):
        for algo in ("race", "matd3"):
            for seed in (1, 2):
                write_fake_run(
                    tmp_path / "runs" / f"{task[9:]}_{algo}_{seed}",
                    algo,
                    seed,
                    [0, 100, 200],
                    [0.0, 10.0 * seed, 20.0 * seed],
                    task=task,
                )
    for name in ("fig.png", "fig.pdf"):
        assert main(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / name), "--smooth", "2"]) == 0
        assert (tmp_path / name).stat().st_size > 1000
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "written:" in capsys.readouterr().out


def test_plot_baselines_are_horizontal_lines_in_every_panel(tmp_path, monkeypatch, capsys):
    import matplotlib.axes

    for task in ("mpe/simple_spread", "mpe/simple_line"):
        write_fake_run(tmp_path / "runs" / task[4:], "race", 1, [0, 100], [-25.0, -20.0], task=task)
    drawn, axhline = [], matplotlib.axes.Axes.axhline
    monkeypatch.setattr(
        matplotlib.axes.Axes, "axhline", lambda self, y, **kw: drawn.append((y, kw["label"])) or axhline(self, y, **kw)
    )
    assert (
        main(
            [
                "plot",
                str(tmp_path / "runs"),
                "--out",
                str(tmp_path / "f.png"),
                "--baseline",
                "random=-25.6",
                "--baseline",
                " still = -21.7 ",
            ]
        )
        == 0
    )
    assert drawn == [(-25.6, "random"), (-21.7, "still")] * 2
    for bad in ("random", "=3", "random=x", "random=nan"):
        assert main(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "g.png"), "--baseline", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"racemarl: error: --baseline must be LABEL=NUMBER (e.g. random=-25.6), got {bad!r}"
    assert not (tmp_path / "g.png").exists()


def test_plot_errors(tmp_path, capsys):
    write_fake_run(tmp_path / "a", "race", 1, [0, 100], [0.0, 1.0])
    assert main(["plot", str(tmp_path / "a"), "--metric", "nope", "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0 and "metric 'nope'" in err and "valid metrics: env_steps" in err and "eval_return" in err
    )
    assert main(["plot", str(tmp_path / "a"), "--metric", "loss_vmm", "--out", str(tmp_path / "f.png")]) == 2
    assert "has no values" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "f.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_plot_draws_the_marl_team_of_population_runs_beside_the_headline(tmp_path, monkeypatch, capsys):
    import matplotlib.axes

    # RACE's headline (the better of its two teams) and its MARL team differ; MATD3 has one team
    for seed in (1, 2):
        marl = {i: {"eval_return_marl": v} for i, v in enumerate([0.0, 4.0 * seed, 8.0 * seed])}
        write_fake_run(tmp_path / "runs" / f"race{seed}", "race", seed, [0, 100, 200], [0.0, 5.0, 9.0], extra=marl)
        write_fake_run(tmp_path / "runs" / f"matd3{seed}", "matd3", seed, [0, 100, 200], [0.0, 3.0, 6.0])
    lines, plot = [], matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda self, x, y, **kw: lines.append((kw["label"], list(y))) or plot(self, x, y, **kw),
    )
    assert main(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "f.png")]) == 0
    drawn = dict(lines)
    assert drawn["race (n=2)"] == [0.0, 5.0, 9.0] and drawn["matd3 (n=2)"] == [0.0, 3.0, 6.0]
    assert drawn["race: MARL team (n=2)"] == [0.0, 6.0, 12.0]  # mean of the seeds' MARL teams
    assert len(drawn) == 3  # no MARL-team line for MATD3
    out = capsys.readouterr().out
    assert "race: MARL team: 2 seed(s), last mean 12.0 at 200 env steps" in out
    lines.clear()
    assert main(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "g.png"), "--headline-only"]) == 0
    assert sorted(dict(lines)) == ["matd3 (n=2)", "race (n=2)"]
    lines.clear()  # another metric than a headline: no MARL-team line either
    assert main(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "h.png"), "--metric", "eval_return_marl"]) == 0
    assert list(dict(lines)) == ["race (n=2)"]  # the fake MATD3 runs have no values of it
