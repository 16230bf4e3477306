"""`benchmarks/reproduction_table.py` on made-up run folders laid out as `benchmarks/reproduction.sh` fills them."""

import importlib.util
import json
from pathlib import Path

import pytest

from tests.test_plot import write_fake_run

spec = importlib.util.spec_from_file_location(
    "reproduction_table", Path(__file__).parents[1] / "benchmarks" / "reproduction_table.py"
)
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)


def test_the_table_has_both_teams_the_base_learner_and_the_aggregate(tmp_path, capsys):
    runs, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    task = "mamujoco/HalfCheetah-6x1"
    for seed, (head, marl, base) in {1: (30.0, 20.0, 10.0), 2: (50.0, 40.0, 30.0)}.items():
        marl_rows = {1: {"eval_return_marl": marl}, 2: {"eval_return_marl": marl + 100}}  # the last is past 200k
        write_fake_run(
            runs / "repro_race_mamujoco" / f"r{seed}",
            "race",
            seed,
            [0, 200_000, 206_000],
            [0.0, head, 999.0],
            extra=marl_rows,
        )
        write_fake_run(runs / "repro_base_mamujoco" / f"m{seed}", "matd3", seed, [0, 200_000], [0.0, base])
    write_fake_run(runs / "repro_race_mamujoco" / "tuning", "race", 101, [0, 200_000], [0.0, 5000.0])  # never read
    (results / "repro_base_mamujoco.json").write_text(json.dumps({"random_policy": {task: {"mean": 0.0}}}))
    figs = tmp_path / "figs"
    out = table.main(
        ["--runs", str(runs), "--results", str(results), "--out", str(tmp_path / "rep"), "--figures", str(figs)]
    )
    row = next(line for line in out["table"].splitlines() if line.startswith(f"| {task}"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1].startswith("40 [30, 50] (n=2)")  # RACE's headline within the budget (not 999 nor seed 101)
    assert cells[2].startswith("30 [20, 40] (n=2)")  # its MARL team
    assert cells[3] == "-" and cells[5] == "-"  # no MERL, no EA-only runs
    assert cells[4].startswith("20 [10, 30] (n=2)")  # MATD3
    # P(RACE > MATD3): headline 30, 50 vs 10, 30 -> (1 + 1 + 1 + 0.5) / 4; MARL team 20, 40 vs 10, 30 -> 0.75
    assert cells[6].startswith("0.88") and cells[7].startswith("0.75")
    assert "RACE > MERL > MATD3" in cells[8]
    assert "normalised per task" in out["table"]  # the aggregate across tasks, from the random policy's return
    assert "| RACE: MARL team | 1 | 2 |" in out["table"] and "win rate on SMAX" not in out["table"]  # MA-MuJoCo only
    assert (tmp_path / "rep.md").read_text().startswith("| task (metric, budget) |")
    assert out["figures"] == [str(figs / "reproduction_mamujoco_HalfCheetah-6x1.png")]  # one per task
    assert (figs / "reproduction_mamujoco_HalfCheetah-6x1.png").read_bytes()[:4] == b"\x89PNG"


def test_the_aggregate_across_every_task_normalises_returns_and_win_rates_per_task(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    finals = {  # seed -> (RACE, its MARL team, base); MA-MuJoCo returns, SMAX win rates
        "mamujoco/HalfCheetah-6x1": {1: (30.0, 20.0, 10.0), 2: (50.0, 40.0, 30.0)},
        "smax/3m": {1: (0.5, 0.5, 0.25), 2: (1.0, 0.75, 0.5)},
    }
    for task, per_seed in finals.items():
        smax = task.startswith("smax/")
        metric = "eval_win_rate" if smax else "eval_return"
        race_group, base_group = ("repro_smax_3m",) * 2 if smax else ("repro_race_mamujoco", "repro_base_mamujoco")
        for seed, (head, marl, base) in per_seed.items():
            write_fake_run(
                runs / race_group / f"r{task[-2:]}{seed}",
                "race",
                seed,
                [0, 100],
                [0.0, head],
                task=task,
                metric=metric,
                extra={1: {metric + "_marl": marl}},
            )
            write_fake_run(
                runs / base_group / f"b{task[-2:]}{seed}",
                "facmac" if smax else "matd3",
                seed,
                [0, 100],
                [0.0, base],
                task=task,
                metric=metric,
            )
    (results / "repro_base_mamujoco.json").write_text(
        json.dumps({"random_policy": {"mamujoco/HalfCheetah-6x1": {"mean": 0.0}}})
    )
    (results / "repro_smax_3m.json").write_text(json.dumps({"random_policy": {"smax/3m": {"win_rate": 0.0}}}))
    args = ["--runs", str(runs), "--results", str(results), "--out", str(tmp_path / "rep"), "--figures", "none"]
    text = table.main(args)["table"]
    every = text[text.index("Across tasks (mamujoco/HalfCheetah-6x1, smax/3m), final value (the return on MA-MuJoCo") :]
    # base normalised by each task's best run (50; 1.0): 0.2, 0.6 and 0.25, 0.5 -> mean 0.3875
    base = next(line for line in every.splitlines() if line.startswith("| MATD3 / FACMAC |"))
    assert base.startswith("| MATD3 / FACMAC | 2 | 2 |") and base.split("|")[6].strip() == "0.39"
    marl = next(line for line in every.splitlines() if line.startswith("| RACE: MARL team |"))
    assert marl.split("|")[6].strip() == f"{(0.4 + 0.8 + 0.5 + 0.75) / 4:.2f}"


def test_the_figures_hold_seeds_1_to_5_within_the_budget(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        write_fake_run(
            runs / "repro_smax_3m" / f"r{seed}",
            "facmac",
            seed,
            [0, 75_000, 150_000, 150_500],
            [0.0, 0.5, 1.0, 0.0],
            task="smax/3m",
            metric="eval_win_rate",
        )
    write_fake_run(
        runs / "repro_smax_3m" / "tuning",
        "facmac",
        101,
        [0, 150_000],
        [0.0, 0.0],
        task="smax/3m",
        metric="eval_win_rate",
    )
    budgets = {"smax/3m": ("eval_win_rate", 150_000)}
    drawn = {}
    monkeypatch.setattr(table, "plot_curves", lambda curves, path, *a, **k: drawn.update(curves) or path)
    table.figures(runs, {}, budgets, tmp_path / "figs")
    (curve,) = drawn.values()
    assert curve.n_seeds == 2 and list(curve.x) == [0, 75_000, 150_000]  # not seed 101, nothing past 150k
    assert list(curve.mean) == [0.0, 0.5, 1.0]


def test_the_diagnostics_are_the_medians_of_each_runs_shares_after_20k_and_its_last_values(tmp_path):
    runs = tmp_path / "runs"
    steps = [10_000, 50_000, 100_000, 200_000, 210_000]  # the first is before 20k, the last past the budget
    for seed, scale in ((1, 1.0), (2, 3.0), (3, 100.0)):
        rows = {
            i: {
                "grad_enc_vfm": 2.0,
                "grad_enc_vmm": scale * (0.5 if i == 0 else 0.1 * i),  # ratios after 20k: 0.05, 0.1, 0.15 (x scale)
                "grad_enc_actor": 1.0,
                "mi_estimate": 0.01 * i,
                "q_bias_marl": 5.0 * i * scale,
            }
            for i in range(len(steps))
        }
        rows[4].update(mi_estimate=9.0, q_bias_marl=9.0)  # past 200k: never read
        write_fake_run(runs / "repro_race_mamujoco" / f"r{seed}", "race", seed, steps, [0.0] * 5, extra=rows)
    write_fake_run(runs / "repro_race_mamujoco" / "tuning", "race", 101, steps, [0.0] * 5)  # not seeds 1-5
    out = table.main(
        ["--runs", str(runs), "--results", str(tmp_path), "--out", str(tmp_path / "rep"), "--figures", "none"]
    )
    d = out["diagnostics"]["repro_race_mamujoco|mamujoco/HalfCheetah-6x1|race"]
    assert d["seeds"] == 3
    # per run the median share after 20k is 0.1 x scale; over seeds the median of 0.1, 0.3 and 10 is 0.3
    assert abs(d["vmm_share"] - 0.3) < 1e-9
    assert d["actor_share"] == 0.5
    assert abs(d["mi_estimate"] - 0.03) < 1e-9  # the last evaluation within 200k, in every seed
    assert d["q_bias_marl"] == 45.0  # 15 x (1, 3, 100) -> median 45
    row = next(line for line in out["table"].splitlines() if line.startswith("| mamujoco/HalfCheetah-6x1 | race |"))
    assert [c.strip() for c in row.split("|")[1:-1]] == [
        "mamujoco/HalfCheetah-6x1",
        "race",
        "3",
        "0.3",
        "0.5",
        "0.030",
        "45",
    ]


def test_the_smax_ablation_sits_beside_race_and_facmac_on_the_same_seeds(tmp_path):
    runs = tmp_path / "runs"
    smax = {"task": "smax/3m", "metric": "eval_win_rate"}
    for seed in (1, 2, 3, 4, 5, 6):  # seed 6 is not an evaluation seed: never read
        rate = seed / 10
        write_fake_run(runs / "repro_smax_3m" / f"r{seed}", "race", seed, [0, 150_000], [0.0, rate], **smax)
        write_fake_run(runs / "repro_smax_3m" / f"f{seed}", "facmac", seed, [0, 150_000], [0.0, 0.5], **smax)
        # past the budget the ablation's value is never read
        write_fake_run(
            runs / "ablation_smax_3m_no_vmm" / f"a{seed}", "race", seed, [0, 150_000, 155_000], [0.0, 1.0, 0.0], **smax
        )
    out = table.main(
        ["--runs", str(runs), "--results", str(tmp_path), "--out", str(tmp_path / "rep"), "--figures", "none"]
    )
    text = out["table"]
    part = text[text.index("Ablations, smax/3m, seeds 1-5, final eval_win_rate within 150k:") :].splitlines()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in part if line.startswith("| ")}
    assert rows["RACE"].startswith("0.30 [") and rows["RACE"].endswith("(n=5)")  # mean of 0.1 ... 0.5
    assert rows["RACE without VMM"] == "1.00 [1.00, 1.00] (n=5)"
    assert rows["FACMAC"].startswith("0.50") and "MERL" not in rows and "MATD3" not in rows
    assert "Ablations, mamujoco/HalfCheetah-6x1, seeds 1-3" in text  # the MA-MuJoCo ablations keep their table
    assert "ablation_smax_3m_no_vmm|smax/3m|race" in out["diagnostics"]


def test_the_late_mean_averages_each_runs_evaluations_in_the_last_tenth_of_the_budget(tmp_path):
    runs = tmp_path / "runs"
    steps = [100_000, 179_000, 180_000, 190_000, 200_000, 205_000]  # 180k-200k: the last tenth of 200k
    for seed, shift in ((1, 0.0), (2, 600.0)):
        head = [9000.0, 9000.0, 100.0 + shift, 200.0 + shift, 3000.0 + shift, 9000.0]
        marl = {i: {"eval_return_marl": v - 50.0} for i, v in enumerate(head)}
        write_fake_run(runs / "repro_race_mamujoco" / f"r{seed}", "race", seed, steps, head, extra=marl)
        base = [0.0, 0.0, 1000.0, 1000.0, 1000.0 + shift, 0.0]
        write_fake_run(runs / "repro_base_mamujoco" / f"m{seed}", "matd3", seed, steps, base)
    out = table.main(
        ["--runs", str(runs), "--results", str(tmp_path), "--out", str(tmp_path / "rep"), "--figures", "none"]
    )
    task = "mamujoco/HalfCheetah-6x1"
    # per seed the mean of the evaluations at 180k, 190k and 200k (not 179k, not 205k): 1100 and 1700; MARL 50 less
    assert out["late_means"][f"{task}|race|eval"] == {1: 1100.0, 2: 1700.0}
    assert out["late_means"][f"{task}|race|marl"] == {1: 1050.0, 2: 1650.0}
    assert out["late_means"][f"{task}|base|eval"] == {1: 1000.0, 2: 1200.0}
    # the final values are unchanged: the last evaluation within 200k
    assert out["values"][f"{task}|race|eval"] == {1: 3000.0, 2: 3600.0}
    text = out["table"]
    late = text[text.index("The late mean") :].splitlines()
    row = next(line for line in late if line.startswith(f"| {task}"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1].startswith("1400 [1100, 1700] (n=2)") and cells[4].startswith("1100 [1000, 1200] (n=2)")
    # P(RACE > MATD3) on the late means: 1100, 1700 vs 1000, 1200 -> (1 + 0 + 1 + 1) / 4; no paper column
    assert cells[6].startswith("0.75") and len(cells) == 8


def test_the_per_seed_table_puts_each_seeds_final_value_in_its_column(tmp_path):
    runs = tmp_path / "runs"
    for seed in (2, 5, 101):  # seeds 1, 3 and 4 missing; 101 a tuning seed, never read
        marl = {1: {"eval_return_marl": 10.0 * seed}}
        write_fake_run(runs / "repro_race_mamujoco" / f"r{seed}", "race", seed, [0, 200_000], [0.0, seed], extra=marl)
    write_fake_run(runs / "repro_base_mamujoco" / "e3", "ea", 3, [0, 200_000], [0.0, -7.0])
    out = table.main(
        ["--runs", str(runs), "--results", str(tmp_path), "--out", str(tmp_path / "rep"), "--figures", "none"]
    )
    part = out["table"][out["table"].index("Per seed, mamujoco/HalfCheetah-6x1, final eval_return within 200k:") :]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in part.splitlines()[4:7]}
    assert rows["RACE (headline)"][:5] == ["-", "2", "-", "-", "5"]
    assert rows["RACE (headline)"][5].startswith("4 [2, 5] (n=2)")  # (2 + 5) / 2 = 3.5, printed 4
    assert rows["RACE: MARL team"][:5] == ["-", "20", "-", "-", "50"]
    assert rows["EA-only"][:5] == ["-", "-", "-7", "-", "-"]
    assert not part.splitlines()[7].startswith("| ")  # no MATD3 nor MERL runs: no rows for them


def test_an_out_path_in_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_fake_run(runs / "repro_base_mamujoco" / "m1", "matd3", 1, [0, 200_000], [0.0, 1.0])
    with pytest.raises(SystemExit) as stop:
        table.main(["--runs", str(runs), "--out", str(tmp_path / "missing" / "rep"), "--figures", "none"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"reproduction_table.py: error: --out: {tmp_path / 'missing'} is not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing written
