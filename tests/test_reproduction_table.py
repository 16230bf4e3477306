"""`benchmarks/reproduction_table.py` on made-up run folders laid out as `benchmarks/reproduction.sh` fills them."""

import importlib.util
import json
from pathlib import Path

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
    out = table.main(["--runs", str(runs), "--results", str(results), "--out", str(tmp_path / "rep")])
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
    assert (tmp_path / "rep.md").read_text().startswith("| task (metric, budget) |")
