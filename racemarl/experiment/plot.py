"""Learning curves of run directories: one panel per task, one line per algorithm.

`learning_curves` computes the data (pure, no matplotlib): for each group of runs the runs' curves are
smoothed, interpolated onto a common grid of env steps, and summarised by the mean over seeds and a
confidence band. `plot_curves` draws them with matplotlib's Agg backend.

Alignment. Runs evaluate when their env-step counter crosses a multiple of `eval_interval`, so runs
of one group are evaluated at slightly different steps (and partial runs stop early). The grid is
the union of all the group's evaluation steps inside the range that **every** run covers (from the
largest first step to the smallest last step); each run is linearly interpolated onto it. Nothing is
extrapolated: a group's curve ends where its shortest run ends. Runs evaluated at identical steps
are used as they are.

Groups. Runs are pooled as seeds only when every setting except the seed (and those that never change
what is learned, `racemarl.experiment.grouping.GROUPING_IGNORES`) is equal; a line's label is its algo followed by
the settings that tell the groups apart (see `racemarl.experiment.grouping.grouping`).

Bands. `ci="t"` (default): Student-t interval of the mean over seeds,
mean +- t_{(1+level)/2, n-1} * sd / sqrt(n), sd with n-1 degrees of freedom (scipy). `ci="bootstrap"`:
rliable's percentile stratified bootstrap of the mean over seeds (2000 resamples, fixed seed).
One seed gives no band (lo = hi = mean). A metric with a bounded range (the win rates, in [0, 1]) gets its band
clipped to that range: the t-interval of a few seeds' win rates reaches past 1 and below 0, where the mean cannot be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from racemarl.experiment.grouping import group_runs
from racemarl.experiment.stats import BOOTSTRAP_RESAMPLES, CI_METHODS, interval  # noqa: F401 - re-exported
from racemarl.records.runs import Run, RunDirError, check_metric, parse_named_number

# the same colour for an algorithm in every figure
FIXED_COLOURS = {
    "race": "tab:red",
    "matd3": "tab:blue",
    "facmac": "tab:purple",
    "ea": "tab:green",
    "merl": "tab:orange",
}
OTHER_COLOURS = ["tab:orange", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]


# ---------------------------------------------------------------- statistics (racemarl.experiment.stats: scipy, rliable)


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution (scipy)."""
    from scipy.stats import t

    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return float(t.ppf(p, df))


def confidence_band(
    values: np.ndarray, ci: str = "t", level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values `[n_seeds, n_points]` -> (mean, lo, hi), each `[n_points]` (see `racemarl.experiment.stats.interval`)."""
    return interval(values, ci, level)


def metric_range(metric: str) -> tuple[float, float] | None:
    """The range a metric's values (and so its mean) cannot leave: [0, 1] for the win rates; None if unbounded."""
    return (0.0, 1.0) if "win_rate" in metric else None


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over the last `window` evaluations (fewer at the start)."""
    y = np.asarray(y, dtype=float)
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    start = np.maximum(idx - window, 0)
    return (c[idx] - c[start]) / (idx - start)


# ---------------------------------------------------------------- curves


@dataclass
class Curve:
    task: str
    algo: str  # the group's label: its algo, then the settings that tell the groups apart
    x: np.ndarray  # env steps (the common grid)
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_seeds: int
    seeds: list[int]


def align(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Runs' (x, y) -> (grid, values `[n_runs, len(grid)]`) by linear interpolation (see module doc)."""
    start = max(float(x[0]) for x, _ in series)
    end = min(float(x[-1]) for x, _ in series)
    if start > end:
        return np.array([]), np.zeros((len(series), 0))
    grid = np.unique(np.concatenate([x for x, _ in series]))
    grid = grid[(grid >= start) & (grid <= end)]
    return grid, np.stack([np.interp(grid, x, y) for x, y in series])


def learning_curves(
    runs: list[Run], metric: str = "eval_return", smooth: int = 1, ci: str = "t", level: float = 0.95
) -> dict[tuple[str, str], Curve]:
    """Mean curve and confidence band over seeds per (task, algo); groups without data are left out."""
    check_metric(runs, metric)
    if smooth < 1:
        raise RunDirError(f"--smooth must be >= 1, got {smooth}")
    if not 0.0 < level < 1.0:
        raise RunDirError(f"confidence level must be in (0, 1), got {level}")
    curves = {}
    for (task, algo), members in group_runs(runs).items():
        series, seeds = [], []
        for run in members:
            xs, ys = run.series(metric)
            if not xs:
                continue
            x = np.asarray(xs, dtype=float)
            order = np.argsort(x, kind="stable")
            series.append((x[order], moving_average(np.asarray(ys, dtype=float)[order], smooth)))
            seeds.append(run.seed)
        if not series:
            continue
        grid, values = align(series)
        mean, lo, hi = confidence_band(values, ci, level)
        bounds = metric_range(metric)
        if bounds is not None:
            lo, hi = np.clip(lo, *bounds), np.clip(hi, *bounds)
        curves[(task, algo)] = Curve(task, algo, grid, mean, lo, hi, len(series), seeds)
    if not curves:
        raise RunDirError(f"no run has values of {metric!r} yet")
    return curves


def marl_team_curves(
    runs: list[Run], metric: str = "eval_return", smooth: int = 1, ci: str = "t", level: float = 0.95
) -> dict[tuple[str, str], Curve]:
    """For a headline metric (`eval_return`, `eval_win_rate`: RACE's and MERL's are the better of the MARL team and
    the champion on the same episodes), the MARL team's own curve (`eval_return_marl`, ...) of every group of
    population runs that train one; {} for other metrics or runs without a MARL team beside a population."""
    from racemarl.experiment.report import MARL_TEAM_METRIC
    from racemarl.records.runs import numeric_columns

    twin = MARL_TEAM_METRIC.get(metric)
    both = [r for r in runs if r.config.uses_population and r.config.uses_marl]
    if twin is None or not both or twin not in numeric_columns(both):
        return {}
    return learning_curves(both, twin, smooth=smooth, ci=ci, level=level)


# ---------------------------------------------------------------- drawing


def _steps_label(x: float, _pos: int = 0) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def parse_baseline(text: str) -> tuple[str, float]:
    """``LABEL=VALUE`` (e.g. ``random=-25.6``) -> (label, value); RunDirError with the expected form otherwise."""
    return parse_named_number(text, "--baseline", "LABEL=NUMBER (e.g. random=-25.6)")


def plot_curves(
    curves: dict[tuple[str, str], Curve],
    out: str | Path,
    metric: str = "eval_return",
    ci: str = "t",
    level: float = 0.95,
    smooth: int = 1,
    title: str | None = None,
    baselines: Sequence[tuple[str, float]] = (),
    marl_curves: dict[tuple[str, str], Curve] | None = None,
) -> Path:
    """One panel per task, one line per algorithm (same colour in every panel), shaded band; each baseline
    (label, value), e.g. a random policy's return, is a dashed horizontal line in every panel. `marl_curves`
    (`marl_team_curves`): the MARL teams of population methods, dashed in their algorithm's colour, no band."""
    try:
        import matplotlib
    except ImportError as e:
        raise RunDirError("plotting needs matplotlib: pip install 'racemarl[plot]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise RunDirError(f"--out must end in .png, .pdf or .svg, got {out.name}")
    tasks = sorted({t for t, _ in curves})
    algos = sorted({a for _, a in curves})  # the groups' labels: the algo, then the settings that differ
    others = [a for a in algos if a not in FIXED_COLOURS]
    colours = {a: FIXED_COLOURS.get(a) or OTHER_COLOURS[others.index(a) % len(OTHER_COLOURS)] for a in algos}
    ncols = min(len(tasks), 3)
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.8 * nrows), squeeze=False)
    band = f"{level:.0%} t-interval" if ci == "t" else f"{level:.0%} bootstrap CI"
    for ax, task in zip(axes.flat, tasks):
        for algo in algos:
            c = curves.get((task, algo))
            if c is None or len(c.x) == 0:
                continue
            ax.plot(
                c.x,
                c.mean,
                color=colours[algo],
                lw=1.8,
                label=f"{algo} (n={c.n_seeds})",
                marker="o" if len(c.x) == 1 else None,
            )
            if c.n_seeds > 1:
                ax.fill_between(c.x, c.lo, c.hi, color=colours[algo], alpha=0.2, lw=0)
            m = (marl_curves or {}).get((task, algo))
            if m is not None and len(m.x):
                ax.plot(m.x, m.mean, color=colours[algo], lw=1.3, ls="--", label=f"{algo}: MARL team (n={m.n_seeds})")
        for i, (label, value) in enumerate(baselines):
            ax.axhline(value, color="0.35", lw=1.2, ls=("--", ":", "-.")[i % 3], label=label)
        ax.set_title(task.removeprefix("mamujoco/"), fontsize=11)
        ax.set_xlabel("env steps")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    smooth_txt = f", moving average over {smooth} evaluations" if smooth > 1 else ""
    fig.suptitle(title or f"{metric}: mean over seeds, shaded {band}{smooth_txt}", fontsize=11, wrap=True)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
