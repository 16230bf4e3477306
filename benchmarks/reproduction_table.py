"""The Reproduction table: tasks x RACE (headline and MARL team) / MERL / base learner / EA-only, at our budgets,
with P(RACE > base) for both of RACE's returns, the paper's order beside it, and the aggregate across tasks.

Reads the finished runs' records that `benchmarks/learning.py` keeps for `benchmarks/reproduction.sh`
(`benchmarks/results/run_records/<group>/<task>__<algo>__s<seed>`, committed; or any folder laid out like them, such
as the script's RUNS_DIR, with `--runs`) and the random-policy values in the groups' results JSON (`--random-episodes`). Per task and algorithm: the final value
within the task's budget (`eval_return` on MA-MuJoCo, `eval_win_rate` on SMAX), mean over seeds with rliable's
bootstrap interval; P(X > Y): rliable's probability of improvement with its interval; the same per-task table
of the late mean (each run's mean over its evaluations in the last tenth of the budget); per task each seed's final
value of every method; the aggregates: the IQM over
all runs and tasks of the final values normalised between the random policy (0) and the task's best run (1), across
the MA-MuJoCo tasks (returns) and across every task (with SMAX's win rates), RACE's MARL team a row of its own.
Only seeds 1-5 count (the beta-tuning seeds 101-102 live in their own groups and are never read). Further tables
hold the ablations (HalfCheetah-6x1 on seeds 1-3, SMAX 3m on seeds 1-5), another the diagnostics that say why a
result went the way it did: the gradient each encoder-loss term puts on the shared encoders (VMM's and the MARL
actor's relative to VFM's, the median over the evaluations after 20k steps), the MI bound's estimate and the MARL
critic's bias (`q_bias_marl`) at the last evaluation within the budget. Writes `benchmarks/results/reproduction.json` and `.md`, and per task a
figure of the learning curves (`docs/figures/reproduction_<task>.png`: every method of the task's groups, seeds
1-5, RACE's and MERL's MARL teams dashed beside their headline, 95% bootstrap bands, the random policy's value).

    python benchmarks/reproduction_table.py                 # the committed records
    python benchmarks/reproduction_table.py --runs ~/racemarl_repro   # the run folders, unfinished runs too
    python benchmarks/reproduction_table.py --figures none             # the tables only
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from benchmarks.choose_beta import SHARE_AFTER, median_share  # noqa: E402
from racemarl.experiment import stats  # noqa: E402
from racemarl.experiment.plot import learning_curves, marl_team_curves, plot_curves  # noqa: E402
from racemarl.experiment.report import GroupStats, aggregate_table  # noqa: E402
from racemarl.records.runs import load_runs  # noqa: E402

GROUPS = {  # folder -> (task family's metric, budget)
    "repro_race_mamujoco": ("eval_return", 200_000),
    "repro_base_mamujoco": ("eval_return", 200_000),
    "ablation_merl": ("eval_return", 200_000),
    "repro_smax_3m": ("eval_win_rate", 150_000),
    "repro_smax_2s3z": ("eval_win_rate", 150_000),
}
ABLATIONS = {  # folder -> (label, task)
    "ablation_no_vmm": ("RACE without VMM", "mamujoco/HalfCheetah-6x1"),
    "ablation_no_pevfa": ("RACE without the PeVFA term", "mamujoco/HalfCheetah-6x1"),
    "ablation_smax_3m_no_vmm": ("RACE without VMM", "smax/3m"),
    "ablation_smax_3m_no_repr": ("RACE without VMM and the PeVFA term", "smax/3m"),
    "ablation_smax_3m_own_data": ("RACE, its MARL critic on the MARL team's episodes", "smax/3m"),
}
ABLATED = {  # task -> (seeds, metric, budget) of its ablations
    "mamujoco/HalfCheetah-6x1": ({1, 2, 3}, "eval_return", 200_000),
    "smax/3m": ({1, 2, 3, 4, 5}, "eval_win_rate", 150_000),
}
SEEDS = {1, 2, 3, 4, 5}
# The order of the methods at the paper's last tick (docs/results.md, "The paper's numbers"); MERL on SMAC too.
PAPER_ORDER = {
    "mamujoco/HalfCheetah-6x1": "RACE > MERL > MATD3 > EA-only > FACMAC",
    "mamujoco/Hopper-3x1": "RACE > MERL > MATD3 > EA-only ≈ FACMAC",
    "smax/2s3z": "RACE > MERL ≈ FACMAC > EA-only (SMAC 2s3z)",
    "smax/3m": "(not in the paper)",
}
# The late mean, beside the final value: each run's mean over its evaluations in the last tenth of the budget (180k
# to 200k on MA-MuJoCo: 5 evaluations of 5 episodes; 135k to 150k on SMAX: 4 of 32). One evaluation of 5 episodes
# swings widely on Hopper-3x1 (MATD3 seed 1: 2815, 645, 29.7 and 705 at its last four); the final value stays the
# table's headline, as declared before the runs, and this table says how much a conclusion rests on one reading.
LATE_WINDOW = 0.1
COLUMNS = [("race", "eval"), ("race", "marl"), ("merl", "eval"), ("base", "eval"), ("ea", "eval")]
DIAGNOSED = {**{group: "" for group in GROUPS}, **{group: f" ({label})" for group, (label, _) in ABLATIONS.items()}}


def has_runs(folder: Path) -> bool:
    """Does `folder` (a group's folder of run folders or records) hold any run with metrics yet?"""
    return folder.is_dir() and any(folder.rglob("metrics.csv"))


def finals(runs, metric: str, budget: int, seeds: set[int], window: int = 0) -> dict[tuple[str, str], dict[int, float]]:
    """{(task, algo): {seed: the last value of `metric` at or before `budget`}} for runs with a value; with `window`,
    each seed's mean of its values at steps `budget - window` to `budget` instead (the late mean)."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        if run.seed not in seeds:
            continue
        xs, ys = run.series(metric)
        if window:
            kept = [y for x, y in zip(xs, ys) if budget - window <= x <= budget]
        else:
            kept = [y for x, y in zip(xs, ys) if x <= budget][-1:]
        if kept:
            out.setdefault((run.config.env.task, run.algo), {})[run.seed] = float(np.mean(kept))
    return out


def cell(values: dict[int, float] | None, digits: int) -> str:
    if not values:
        return "-"
    x = np.array(list(values.values()))
    mean, lo, hi = stats.bootstrap_ci(x)
    ci = "" if len(x) < 2 else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{mean:.{digits}f}{ci} (n={len(x)})"


def p_improvement(x: dict[int, float] | None, y: dict[int, float] | None) -> str:
    if not x or not y:
        return "-"
    p, lo, hi = stats.probability_of_improvement(
        np.array(list(x.values()))[:, None], np.array(list(y.values()))[:, None]
    )
    return f"{p:.2f}" + ("" if lo is None else f" [{lo:.2f}, {hi:.2f}]")


def collect(runs_dir: Path, results: Path) -> tuple[dict, dict, dict, dict]:
    """(values, late, randoms, budgets), each group's runs read once: values[(task, column, team)] = {seed: final},
    late[(task, column, team)] = {seed: late mean} (see LATE_WINDOW); the random policy per task."""
    values: dict = {}
    late: dict = {}
    randoms: dict[str, float] = {}
    budgets: dict[str, tuple[str, int]] = {}
    for group, (metric, budget) in GROUPS.items():
        folder = runs_dir / group
        if not has_runs(folder):
            continue
        runs = load_runs([folder])
        for team, m in (("eval", metric), ("marl", metric + "_marl")):
            for into, window in ((values, 0), (late, round(LATE_WINDOW * budget))):
                for (task, algo), per_seed in finals(runs, m, budget, SEEDS, window).items():
                    into[(task, "base" if algo in ("matd3", "facmac") else algo, team)] = per_seed
                    budgets[task] = (metric, budget)
        summary = results / f"{group}.json"
        if summary.is_file():
            for task, b in (json.loads(summary.read_text()).get("random_policy") or {}).items():
                randoms[task] = b["win_rate"] if metric == "eval_win_rate" else b["mean"]
    return values, late, randoms, budgets


def base_learner(task: str) -> str:
    """The base learner RACE extends on `task`: MATD3 on continuous (MA-MuJoCo) tasks, FACMAC on SMAX."""
    return "MATD3" if task.startswith("mamujoco/") else "FACMAC"


ALL_TASKS_METRIC = "value (the return on MA-MuJoCo, the win rate on SMAX)"


def aggregates(values: dict, randoms: dict[str, float]) -> list[str]:
    """The IQM over runs and tasks of the final values normalised between the random policy (0) and the task's best
    run (1): across the MA-MuJoCo tasks (returns), then across every task (returns there, win rates on SMAX). A row
    per method that ran every task of the aggregate with as many seeds each; RACE's MARL team is a row of its own."""
    rows = []
    for (task, col, team), per_seed in values.items():
        if team == "eval" or col in ("race", "merl"):
            label = {"base": "MATD3 / FACMAC", "ea": "EA-only"}.get(col, col.upper())
            label += ": MARL team" if team == "marl" else ""
            rows.append(GroupStats(task, label, list(per_seed), list(per_seed.values()), [], [], 0))
    lines = []
    for keep, metric in ((lambda t: t.startswith("mamujoco/"), "eval_return"), (lambda t: True, ALL_TASKS_METRIC)):
        table = aggregate_table(
            [r for r in rows if keep(r.task)], {t: v for t, v in randoms.items() if keep(t)}, metric
        )
        if table and (metric != ALL_TASKS_METRIC or any(not t.startswith("mamujoco/") for t in randoms)):
            lines += ["", *table]
    return lines


def only(values: dict[int, float] | None, seeds: set[int]) -> dict[int, float] | None:
    """`values` of the given seeds only (None stays None)."""
    return None if values is None else {k: x for k, x in values.items() if k in seeds}


def ablation_table(runs_dir: Path, values: dict) -> list[str]:
    """Per ablated task (HalfCheetah-6x1 on seeds 1-3, SMAX 3m on seeds 1-5): RACE (its reproduction runs), each
    ablation group of the task, MERL (MA-MuJoCo) and the base learner, on the same seeds."""
    lines: list[str] = []
    for task, (seeds, metric, budget) in ABLATED.items():
        rows = [("RACE", values.get((task, "race", "eval")), values.get((task, "race", "marl")))]
        for group, (label, ablated) in ABLATIONS.items():
            folder = runs_dir / group
            if ablated == task and has_runs(folder):
                runs = load_runs([folder])
                got = [finals(runs, m, budget, seeds).get((task, "race")) for m in (metric, metric + "_marl")]
                rows.append((label, *got))
        if task.startswith("mamujoco/"):
            rows.append(("MERL", values.get((task, "merl", "eval")), values.get((task, "merl", "marl"))))
        base = values.get((task, "base", "eval"))
        rows.append((base_learner(task), base, base))
        digits = 2 if metric == "eval_win_rate" else 0
        first, last = min(seeds), max(seeds)
        lines += [
            *([""] if lines else []),
            f"Ablations, {task}, seeds {first}-{last}, final {metric} within {budget // 1000}k:",
            "",
            "| variant | headline | MARL team |",
            "|---|---|---|",
        ]
        lines += [
            f"| {label} | {cell(only(h, seeds), digits)} | {cell(only(m, seeds), digits)} |" for label, h, m in rows
        ]
    return lines


def run_diagnostics(run, budget: int) -> dict[str, float | None]:
    """One run's VMM and actor shares of VFM's encoder gradient (medians after SHARE_AFTER), and its last MI
    estimate and MARL-critic bias within `budget`; None where the run does not log the quantity."""

    def last(metric: str) -> float | None:
        kept = [y for x, y in zip(*run.series(metric)) if x <= budget]
        return kept[-1] if kept else None

    return {
        "vmm_share": median_share(run.rows, "vmm", until=budget),  # the beta rule's share (choose_beta.py)
        "actor_share": median_share(run.rows, "actor", until=budget),
        "mi_estimate": last("mi_estimate"),
        "q_bias_marl": last("q_bias_marl"),
    }


def diagnostics_table(runs_dir: Path) -> tuple[list[str], dict]:
    """Per group, task and algorithm (seeds 1-5): the median over seeds of each run's diagnostics."""
    budgets = {**{g: b for g, (_, b) in GROUPS.items()}, **{g: ABLATED[t][2] for g, (_, t) in ABLATIONS.items()}}
    rows, data = [], {}
    for group, label in DIAGNOSED.items():
        folder = runs_dir / group
        if not has_runs(folder):
            continue
        per: dict[tuple[str, str], list[dict]] = {}
        for run in load_runs([folder]):
            if run.seed in SEEDS and run.algo != "ea":  # EA-only has no encoders' losses nor a MARL critic
                per.setdefault((run.config.env.task, run.algo), []).append(run_diagnostics(run, budgets[group]))
        for (task, algo), measured in sorted(per.items()):
            medians = {}
            for key in ("vmm_share", "actor_share", "mi_estimate", "q_bias_marl"):
                got = [m[key] for m in measured if m[key] is not None]
                medians[key] = float(np.median(got)) if got else None
            data[f"{group}|{task}|{algo}"] = {**medians, "seeds": len(measured)}
            fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
            rows.append(
                f"| {task} | {algo}{label} | {len(measured)} | {fmt(medians['vmm_share'], '.2g')} | "
                f"{fmt(medians['actor_share'], '.2g')} | {fmt(medians['mi_estimate'], '.3f')} | "
                f"{fmt(medians['q_bias_marl'], '.3g')} |"
            )
    if not rows:
        return [], data
    lines = [
        "Diagnostics (median over seeds): the encoders' gradient from VMM and from the MARL actor term, each "
        f"relative to VFM's (median over the evaluations after {SHARE_AFTER // 1000}k steps); the MI bound's estimate "
        "(at most log 4 = 1.386) and the MARL critic's bias, both at the last evaluation within the budget:",
        "",
        "| task | algo | seeds | VMM / VFM | actor / VFM | MI estimate | q_bias_marl |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    return lines, data


def within(curves: dict, budget: int) -> dict:
    """The curves up to the budget (a run's last evaluation may fall a few steps past it)."""
    return {
        k: replace(c, **{f: getattr(c, f)[c.x <= budget] for f in ("x", "mean", "lo", "hi")}) for k, c in curves.items()
    }


def figures(runs_dir: Path, randoms: dict[str, float], budgets: dict[str, tuple[str, int]], out_dir: Path) -> list:
    """One learning-curve figure per task from the reproduction groups' runs (seeds 1-5); returns the paths."""
    by_task: dict[str, list] = {}
    for group in GROUPS:
        folder = runs_dir / group
        if has_runs(folder):
            for run in load_runs([folder]):
                if run.seed in SEEDS:
                    by_task.setdefault(run.config.env.task, []).append(run)
    written = []
    for task, runs in sorted(by_task.items()):
        metric, budget = budgets[task]
        curves = within(learning_curves(runs, metric, ci="bootstrap"), budget)
        marl = within(marl_team_curves(runs, metric, ci="bootstrap"), budget)
        baselines = [("random policy", randoms[task])] if task in randoms else []
        path = out_dir / f"reproduction_{task.replace('/', '_')}.png"
        title = f"{task}, {budget // 1000}k env steps: mean over seeds, 95% bootstrap CI"
        written.append(
            plot_curves(curves, path, metric, "bootstrap", title=title, baselines=baselines, marl_curves=marl)
        )
    return written


def task_table(values: dict, budgets: dict[str, tuple[str, int]], with_order: bool = True) -> list[str]:
    """Per task: RACE (headline, MARL team), MERL, the base learner, EA-only, P(RACE > base) for both of RACE's
    returns, and (`with_order`) the paper's order of the methods."""
    order = " the paper's order |" if with_order else ""
    lines = [
        "| task (metric, budget) | RACE | RACE: MARL team | MERL | MATD3 / FACMAC | EA-only | "
        "P(RACE > base) | P(RACE's MARL team > base) |" + order,
        "|---|---|---|---|---|---|---|---|" + ("---|" if with_order else ""),
    ]
    for task in sorted(budgets):
        metric, budget = budgets[task]
        digits = 2 if metric == "eval_win_rate" else 0
        cells = [cell(values.get((task, col, team)), digits) for col, team in COLUMNS]
        base = values.get((task, "base", "eval"))
        lines.append(
            f"| {task} ({metric}, {budget // 1000}k) | " + " | ".join(cells) + f" | "
            f"{p_improvement(values.get((task, 'race', 'eval')), base)} | "
            f"{p_improvement(values.get((task, 'race', 'marl')), base)} |"
            + (f" {PAPER_ORDER.get(task, '')} |" if with_order else "")
        )
    return lines


def per_seed_tables(values: dict, budgets: dict[str, tuple[str, int]]) -> list[str]:
    """Per task, a row per method (RACE's headline and MARL team, MERL's, the base learner, EA-only): its final value
    in each of seeds 1-5 and their mean with its bootstrap interval; the numbers the results page quotes."""
    lines: list[str] = []
    for task in sorted(budgets):
        metric, budget = budgets[task]
        digits = 2 if metric == "eval_win_rate" else 0
        methods = [
            ("race", "eval", "RACE (headline)"),
            ("race", "marl", "RACE: MARL team"),
            ("merl", "eval", "MERL (headline)"),
            ("merl", "marl", "MERL: MARL team"),
            ("base", "eval", base_learner(task)),
            ("ea", "eval", "EA-only"),
        ]
        rows = [(label, values[(task, col, team)]) for col, team, label in methods if values.get((task, col, team))]
        if not rows:
            continue
        seeds = sorted(SEEDS)
        lines += [
            *([""] if lines else []),
            f"Per seed, {task}, final {metric} within {budget // 1000}k:",
            "",
            "| method | " + " | ".join(f"seed {k}" for k in seeds) + " | mean [95% CI] (n) |",
            "|---|" + "---|" * (len(seeds) + 1),
        ]
        for label, per_seed in rows:
            got = [f"{per_seed[k]:.{digits}f}" if k in per_seed else "-" for k in seeds]
            lines.append(f"| {label} | " + " | ".join(got) + f" | {cell(per_seed, digits)} |")
    return lines


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "results" / "run_records"))
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--out", default=str(ROOT / "results" / "reproduction"))
    ap.add_argument("--figures", default=str(ROOT.parent / "docs" / "figures"), help="a folder, or none")
    args = ap.parse_args(argv)
    if not Path(args.runs).is_dir():
        print(
            f"reproduction_table.py: error: {args.runs} is not a folder (of run records, or reproduction.sh's RUNS_DIR)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if not Path(args.out).parent.is_dir():
        print(f"reproduction_table.py: error: --out: {Path(args.out).parent} is not a folder", file=sys.stderr)
        raise SystemExit(2)
    values, late, randoms, budgets = collect(Path(args.runs), Path(args.results))
    tasks = sorted(budgets)
    lines = task_table(values, budgets)
    lines += ["", "mean over seeds [95% bootstrap CI] (n = seeds); P(X > Y): rliable's probability of improvement [CI]"]
    lines += aggregates(values, randoms)
    lines += [
        "",
        f"The late mean: each run's mean over its evaluations in the last {LATE_WINDOW:.0%} of the budget (at steps "
        f"{1 - LATE_WINDOW:g} x budget to budget), then as above; one evaluation swings widely on some tasks, so this "
        "says how much the final values above rest on a single reading:",
        "",
        *task_table(late, budgets, with_order=False),
    ]
    lines += ["", *ablation_table(Path(args.runs), values)]
    lines += ["", *per_seed_tables(values, budgets)]
    diagnostics, diagnosed = diagnostics_table(Path(args.runs))
    if diagnostics:
        lines += ["", *diagnostics]
    text = "\n".join(lines)
    out = {"tasks": tasks, "random_policy": randoms, "values": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in values.items()}}
    out["late_means"] = {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in late.items()}
    out["diagnostics"] = diagnosed
    out["table"] = text
    Path(args.out).with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    Path(args.out).with_suffix(".md").write_text(text + "\n")
    print(text)
    if args.figures != "none":
        out["figures"] = [str(p) for p in figures(Path(args.runs), randoms, budgets, Path(args.figures))]
        print("\n".join(f"written: {p}" for p in out["figures"]))
    return out


if __name__ == "__main__":
    main()
