"""Results tables (Markdown / CSV) and the marl-eval JSON export of run directories."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from racemarl.experiment import stats as stats_mod
from racemarl.experiment.grouping import group_runs, grouping
from racemarl.records.runs import Run, RunDirError, check_metric, numeric_columns

TABLE_FORMATS = ("md", "csv")


@dataclass
class GroupStats:
    task: str
    algo: str
    seeds: list[int]
    final: list[float]  # per run: the metric at its last evaluation
    best: list[float]  # per run: the best value of the metric over its evaluations
    steps: list[int]  # per run: env steps of its last evaluation
    finished: int  # runs whose summary.json covers their budget


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sd with n-1 degrees of freedom); None for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def format_mean_se(values: list[float], digits: int = 1) -> str:
    mean, se = mean_se(values)
    return f"{mean:.{digits}f}" if se is None else f"{mean:.{digits}f} ± {se:.{digits}f}"


def group_stats(runs: list[Run], metric: str = "eval_return", max_steps: int | None = None) -> list[GroupStats]:
    """Per (task, algo): each run's last and best value of `metric`, over evaluations made up to
    `max_steps` env steps (all evaluations when None; a RACE generation can overshoot a budget)."""
    check_metric(runs, metric)
    out = []
    for (task, algo), members in group_runs(runs).items():
        g = GroupStats(task, algo, [], [], [], [], 0)
        for run in members:
            xs, ys = run.series(metric)
            if max_steps is not None:
                kept = [(x, y) for x, y in zip(xs, ys) if x <= max_steps]
                xs, ys = [x for x, _ in kept], [y for _, y in kept]
            if not ys:
                continue
            g.seeds.append(run.seed)
            g.final.append(ys[-1])
            g.best.append(max(ys))
            g.steps.append(int(xs[-1]))
            g.finished += run.finished
        if g.seeds:
            out.append(g)
    if not out:
        raise RunDirError(f"no run has values of {metric!r} yet")
    return out


def _steps_text(steps: list[int]) -> str:
    lo, hi = min(steps), max(steps)
    return str(lo) if lo == hi else f"{lo}–{hi}"


# The headline metric of a run and its MARL team's own column: population methods with a MARL learner (RACE, MERL)
# report as `eval_return` the better of the MARL team and the champion on the same episodes; the base learners
# (MATD3, FACMAC) have one team, so their two columns are equal.
MARL_TEAM_METRIC = {"eval_return": "eval_return_marl", "eval_win_rate": "eval_win_rate_marl"}


def results_table(
    runs: list[Run],
    metric: str = "eval_return",
    fmt: str = "md",
    digits: int = 1,
    max_steps: int | None = None,
    random: dict[str, float] | None = None,
) -> str:
    """Per task and algorithm: final and best `metric` (mean ± s.e. over seeds), seeds, env steps. For the headline
    metrics (`MARL_TEAM_METRIC`) of runs that include a population method with a MARL team, the same table and the
    probabilities of improvement follow for the MARL team alone (the CSV: its rows with that metric's name).
    `random` (task -> a random policy's value of `metric`): the Markdown table adds the aggregate across those
    tasks (`aggregate_table`)."""
    if fmt not in TABLE_FORMATS:
        raise RunDirError(f"unknown table format {fmt!r}; valid: {', '.join(TABLE_FORMATS)}")
    blocks = [(metric, group_stats(runs, metric, max_steps))]
    twin = MARL_TEAM_METRIC.get(metric)
    if twin and any(r.config.uses_population and r.config.uses_marl for r in runs) and twin in numeric_columns(runs):
        blocks.append((twin, group_stats(runs, twin, max_steps)))
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                "task",
                "algo",
                "metric",
                "n_seeds",
                "seeds",
                "finished",
                "env_steps_min",
                "env_steps_max",
                "final_mean",
                "final_se",
                "final_ci95_lo",
                "final_ci95_hi",
                "best_mean",
                "best_se",
            ]
        )
        for name, stats in blocks:
            for g in stats:
                _, lo, hi = stats_mod.bootstrap_ci(np.asarray(g.final))
                fm, fs = mean_se(g.final)
                bm, bs = mean_se(g.best)
                w.writerow(
                    [
                        g.task,
                        g.algo,
                        name,
                        len(g.seeds),
                        " ".join(map(str, g.seeds)),
                        g.finished,
                        min(g.steps),
                        max(g.steps),
                        f"{fm:.6g}",
                        "" if fs is None else f"{fs:.6g}",
                        *(("", "") if len(g.final) < 2 else (f"{lo:.6g}", f"{hi:.6g}")),
                        f"{bm:.6g}",
                        "" if bs is None else f"{bs:.6g}",
                    ]
                )
        return buf.getvalue()
    lines = _stats_rows(blocks[0][1], metric, digits)
    lines.append("")
    cap = "" if max_steps is None else f" (evaluations up to {max_steps} env steps)"
    lines.append(
        f"mean ± standard error over seeds; final = last evaluation, best = best evaluation of each run{cap}; "
        f"95% CI: rliable's stratified bootstrap of the mean of the final values"
    )
    lines.append("")
    lines.append(grouping(runs).note())
    improvement = improvement_table(blocks[0][1], metric, digits=2)
    if improvement:
        lines += ["", *improvement]
    aggregate = aggregate_table(blocks[0][1], random or {}, metric)
    if aggregate:
        lines += ["", *aggregate]
    elif random:  # asked for, but nothing to normalise: say why instead of leaving the section out
        lines += ["", _no_aggregate_note(blocks[0][1], random, metric)]
    if twin is not None and len(blocks) > 1:
        lines += [
            "",
            f"The MARL team alone (`{twin}`): `{metric}` of RACE and MERL is the better of their MARL team and "
            "their population's champion, played on the same evaluation episodes, so a population method is "
            "scored by the best of two teams and its base learner (MATD3, FACMAC) by its one team. The MARL "
            "team alone compares one team with one team:",
            "",
            *_stats_rows(blocks[1][1], twin, digits),
        ]
        improvement = improvement_table(blocks[1][1], twin, digits=2)
        if improvement:
            lines += ["", *improvement]
        # the MARL teams normalised like the headline (the same random values; each task's best of this metric)
        aggregate = aggregate_table(blocks[1][1], random or {}, twin)
        if aggregate:
            lines += ["", *aggregate]
    return "\n".join(lines) + "\n"


def _no_aggregate_note(stats: list[GroupStats], random: dict[str, float], metric: str) -> str:
    given = sorted(t for t in random if any(g.task == t for g in stats))  # `table` refuses a task no run trained
    return (
        f"No across-task aggregate of {metric}: on {', '.join(given)} no run ends above the --random value, or no "
        "algorithm ran every such task with the same number of runs."
    )


def _stats_rows(stats: list[GroupStats], metric: str, digits: int) -> list[str]:
    """The Markdown table of `group_stats` results."""
    lines = [
        f"| task | algo | seeds | env steps | final {metric} | final 95% CI | best {metric} |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in stats:
        _, lo, hi = stats_mod.bootstrap_ci(np.asarray(g.final))
        seeds = f"{len(g.seeds)}" + ("" if g.finished == len(g.seeds) else f" ({g.finished} finished)")
        ci = "-" if len(g.final) < 2 else f"[{lo:.{digits}f}, {hi:.{digits}f}]"
        lines.append(
            f"| {g.task} | {g.algo} | {seeds} | {_steps_text(g.steps)} | "
            f"{format_mean_se(g.final, digits)} | {ci} | {format_mean_se(g.best, digits)} |"
        )
    return lines


def improvement_table(stats: list[GroupStats], metric: str, digits: int = 2) -> list[str]:
    """Markdown lines: for every pair of groups that ran a common task, P(X > Y) of the final values over
    their runs (rliable's probability of improvement, averaged over the common tasks; CI when every task
    has the same number of runs per group and at least 2)."""
    by_label: dict[str, dict[str, list[float]]] = {}
    for g in stats:
        by_label.setdefault(g.algo, {})[g.task] = g.final
    labels = sorted(by_label)
    rows = []
    for i, x in enumerate(labels):
        for y in labels[i + 1 :]:
            tasks = sorted(set(by_label[x]) & set(by_label[y]))
            if not tasks:
                continue
            nx = {len(by_label[x][t]) for t in tasks}
            ny = {len(by_label[y][t]) for t in tasks}
            if len(nx) == 1 and len(ny) == 1:
                xs = np.array([by_label[x][t] for t in tasks]).T
                ys = np.array([by_label[y][t] for t in tasks]).T
                p, lo, hi = stats_mod.probability_of_improvement(xs, ys)
            else:  # unequal runs per task: the per-task statistics averaged, no interval
                p = float(
                    np.mean(
                        [
                            stats_mod.probability_of_improvement(
                                np.array(by_label[x][t])[:, None], np.array(by_label[y][t])[:, None]
                            )[0]
                            for t in tasks
                        ]
                    )
                )
                lo = hi = None
            ci = "-" if lo is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"
            rows.append(f"| {x} | {y} | {len(tasks)} | {p:.{digits}f} | {ci} |")
    if not rows:
        return []
    return [
        "| X | Y | tasks | P(X > Y) | 95% CI |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"probability of improvement (rliable): the chance that a run of X ends with a higher final {metric} "
        "than a run of Y, averaged over the tasks both ran; 0.5 = no difference; CI: stratified bootstrap",
    ]


def normalized_scores(stats: list[GroupStats], random: dict[str, float]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Final values normalised per task, (x - random_t) / (best_t - random_t), where best_t is the highest final
    value of any run of task t (0 = the random policy, 1 = the task's best run). Uses the tasks with a random value
    (and a best above it) and the algorithms that ran every one of them with the same number of runs; returns
    (tasks, {algo: [n_runs, n_tasks]})."""
    tasks = sorted({g.task for g in stats if g.task in random})
    best = {t: max(max(g.final) for g in stats if g.task == t) for t in tasks}
    tasks = [t for t in tasks if best[t] > random[t]]
    by_algo: dict[str, dict[str, list[float]]] = {}
    for g in stats:
        by_algo.setdefault(g.algo, {})[g.task] = g.final
    scores = {}
    for algo, per_task in sorted(by_algo.items()):
        if not tasks or any(t not in per_task for t in tasks) or len({len(per_task[t]) for t in tasks}) != 1:
            continue
        scores[algo] = np.array(
            [[(x - random[t]) / (best[t] - random[t]) for x in per_task[t]] for t in tasks]
        ).T  # [n_runs, n_tasks]
    return tasks, scores


def aggregate_table(stats: list[GroupStats], random: dict[str, float], metric: str, digits: int = 2) -> list[str]:
    """Markdown lines: per algorithm, the IQM and the mean of its normalised final values (`normalized_scores`) over
    all its runs and tasks, each with rliable's stratified bootstrap interval (Agarwal et al., 2021)."""
    tasks, scores = normalized_scores(stats, random)
    if not scores:
        return []
    rows = []
    for algo, x in scores.items():
        cells = []
        for aggregate in ("iqm", "mean"):
            point, lo, hi = stats_mod.bootstrap_ci(x, aggregate)
            ci = "-" if x.shape[0] < 2 else f"[{lo:.{digits}f}, {hi:.{digits}f}]"
            cells += [f"{point:.{digits}f}", ci]
        rows.append(f"| {algo} | {len(tasks)} | {x.shape[0]} | " + " | ".join(cells) + " |")
    return [
        f"Across tasks ({', '.join(tasks)}), final {metric} normalised per task: 0 = the random policy, 1 = the "
        "task's best final value of any run here:",
        "",
        "| algo | tasks | runs per task | IQM | 95% CI | mean | 95% CI |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "IQM: the interquartile mean over all runs and tasks (rliable); CI: stratified bootstrap over runs",
    ]


# ---------------------------------------------------------------- marl-eval export


def split_task(task: str) -> tuple[str, str]:
    """'mamujoco/HalfCheetah-6x1' -> ('mamujoco', 'halfcheetah-6x1') (marl-eval lower-cases names)."""
    env, _, name = task.partition("/")
    return env.lower(), (name or env).lower()


def marl_eval_data(
    runs: list[Run], metric: str = "eval_return", name: str = "episode_return"
) -> tuple[dict, list[str]]:
    """marl-eval's raw-data layout: env -> task -> algo -> run_i -> step_k / absolute_metrics.

    Returns (data, warnings). Each `step_k` holds `step_count` (env steps) and `[value]`: metrics.csv
    keeps the mean over the evaluation episodes, not every episode. `absolute_metrics` holds the
    per-episode returns of `racemarl eval` when the run directory has an eval.json, else the last
    evaluation's value.
    """
    check_metric(runs, metric)
    data: dict = {}
    warnings: list[str] = []
    for (task, algo), members in group_runs(runs).items():
        env_name, task_name = split_task(task)
        algo_runs: dict = {}
        for run in members:
            xs, ys = run.series(metric)
            if not ys:
                continue
            steps = {f"step_{k}": {"step_count": int(x), name: [float(y)]} for k, (x, y) in enumerate(zip(xs, ys))}
            absolute = [float(ys[-1])]
            eval_json = run.path / "eval.json"
            if eval_json.is_file():
                try:
                    absolute = [float(v) for v in json.loads(eval_json.read_text())["returns"]]
                except (KeyError, TypeError, ValueError) as e:
                    warnings.append(f"{eval_json}: unreadable ({e}); absolute metric = last evaluation")
            steps["absolute_metrics"] = {name: absolute}
            algo_runs[f"run_{len(algo_runs)}"] = steps
        if algo_runs:
            data.setdefault(env_name, {}).setdefault(task_name, {})[algo] = algo_runs
    if not data:
        raise RunDirError(f"no run has values of {metric!r} yet")
    for env_name, tasks in data.items():
        counts = {
            (t, a, r): len(steps) - 1
            for t, algos in tasks.items()
            for a, rs in algos.items()
            for r, steps in rs.items()
        }
        n_runs = {(t, a): len(rs) for t, algos in tasks.items() for a, rs in algos.items()}
        if len(set(counts.values())) > 1:
            warnings.append(
                f"{env_name}: runs have different numbers of evaluations "
                f"({min(counts.values())}–{max(counts.values())}); marl-eval needs equal counts"
            )
        if len(set(n_runs.values())) > 1:
            warnings.append(
                f"{env_name}: task/algorithm pairs have different numbers of runs; marl-eval needs equal counts"
            )
    return data, warnings


def export_marl_eval(
    runs: list[Run], out: str | Path, metric: str = "eval_return", name: str = "episode_return"
) -> tuple[Path, list[str]]:
    data, warnings = marl_eval_data(runs, metric, name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    return out, warnings
