"""Which departures from the reference loop matter: short one-seed runs of the old loop, the old loop with
each reference fix alone, and all fixes together (today's defaults), side by side.

Every variant is a `racemarl train` run with `--set` overrides on top of the old loop's values
(`racemarl.config.LEGACY_DEFAULTS`); `all` is the default config. A variant whose run folder already exists
in another benchmark (`--reuse NAME=RUN_DIR`, e.g. the first 40k steps of the 200k comparison run with the
same seed and evaluation schedule) is read from there instead of being trained again: the budget does not
change what happens before it.

    python benchmarks/diagnostics.py --total-steps 40000 --runs-dir ~/diag_runs \\
        --reuse all=~/bench_runs/race_vs_matd3_6x1_200k/mamujoco_HalfCheetah-6x1__race__s1

Runs one at a time and resumes interrupted runs (re-run the same command). Writes
benchmarks/results/diagnostics_6x1.json and .md, and docs/figures/diagnostics_6x1.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from learning import run_one  # noqa: E402

from racemarl.config import LEGACY_DEFAULTS  # noqa: E402


def _set(key: str, value) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def legacy_with(**fixed) -> list[str]:
    """The old loop's values, except the keys given (set to their new values)."""
    values = {**LEGACY_DEFAULTS, **fixed}
    return [_set(k, v) for k, v in values.items() if not k.startswith("discrete.")]


# name -> (algo, overrides, what it changes)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "legacy": ("race", legacy_with(), "this project's first loop"),
    "+warmup": ("race", legacy_with(**{"race.play_during_warmup": False}), "MARL-only warm-up"),
    "+critic": (
        "race",
        legacy_with(**{"net.critic_layer_norm": True, "learner.grad_clip": 10.0}),
        "LayerNorm critics/PeVFA + grad clip 10",
    ),
    "+champion": ("race", legacy_with(**{"race.champion_eval": "scored"}), "champion evaluated before updates"),
    "+operators": (
        "race",
        legacy_with(**{"race.parents_survive": True, "race.mutate_bias": False}),
        "reference evolution operators",
    ),
    "+fitness": ("race", legacy_with(**{"race.fitness_mc_prob": 0.5}), "theta 0.5 / H 200 PeVFA fitness"),
    "+small": (
        "race",
        legacy_with(
            **{
                "race.evolve_before_learning": True,
                "race.pevfa_target_encoder": "online",
                "race.pevfa_target_smoothing": False,
                "learner.marl_head_init_scale": 0.1,
            }
        ),
        "evolve first, PeVFA target online/unsmoothed, MARL heads x0.1",
    ),
    "all": ("race", [], "every fix (the defaults)"),
    "matd3-legacy": ("matd3", legacy_with(), "MATD3 without LayerNorm/clip/head scale"),
    "matd3": ("matd3", [], "MATD3 defaults"),
}


def _copy_fitness(run_dir: Path) -> list[tuple[int, float]]:
    """The injected MARL copy's per-generation fitness from TensorBoard (empty if not logged)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return []
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    if "generation/fitness_marl_copy" not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars("generation/fitness_marl_copy")]


def _at(curve: list[dict], step: int, key: str) -> float:
    """`key` of the last evaluation at or before `step` (NaN if none)."""
    rows = [r for r in curve if r["env_steps"] <= step and r.get(key) is not None]
    return float(rows[-1][key]) if rows else math.nan


def _mean_upto(curve: list[dict], step: int, key: str) -> float:
    """Mean of `key` over the evaluations at or before `step`: less noisy than one evaluation (NaN if none)."""
    ys = [float(r[key]) for r in curve if r["env_steps"] <= step and r.get(key) is not None]
    return sum(ys) / len(ys) if ys else math.nan


def _cell(x: float, digits: int) -> str:
    """A table cell: empty where the variant has no such value (MATD3 has no champion)."""
    return "" if math.isnan(x) else f"{x:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mamujoco/HalfCheetah-6x1")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--total-steps", type=int, default=40_000)
    ap.add_argument("--eval-interval", type=int, default=5_000)
    ap.add_argument("--at", type=int, default=None, help="the step the table reports (default: --total-steps)")
    ap.add_argument("--runs-dir", default=str(ROOT / "_runs"))
    ap.add_argument("--reuse", action="append", default=[], help="NAME=RUN_DIR: read this variant from a run")
    ap.add_argument("--name", default="diagnostics_6x1")
    ap.add_argument("--report-only", action="store_true", help="only tabulate the variants already run")
    args = ap.parse_args()
    args.at = args.total_steps if args.at is None else args.at
    reuse = {k: Path(v).expanduser() for k, v in (r.split("=", 1) for r in args.reuse)}
    runs_dir = Path(args.runs_dir).expanduser() / args.name
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    start = time.time()
    for name in args.variants.split(","):
        algo, sets, what = VARIANTS[name]
        out = reuse.get(name, runs_dir / name.replace("+", "plus_"))
        if args.report_only or name in reuse:
            if not (out / "metrics.csv").exists():
                continue
            from learning import _curve

            data = {"curve": _curve(out / "metrics.csv"), "run_dir": str(out)}
        else:
            extra = ["--eval-interval", str(args.eval_interval)] + [x for s in sets for x in ("--set", s)]
            data = run_one(args.task, algo, args.seed, args.total_steps, out, extra, runs_dir)
        copy = _copy_fitness(out)
        results[name] = {
            "algo": algo,
            "overrides": sets,
            "what": what,
            "run_dir": str(out),
            "curve": data["curve"],
            "marl": _at(data["curve"], args.at, "eval_return_marl"),
            "champion": _at(data["curve"], args.at, "eval_return_best_team"),
            "q_bias": _at(data["curve"], args.at, "q_bias_marl"),
            "marl_mean": _mean_upto(data["curve"], args.at, "eval_return_marl"),
            "champion_mean": _mean_upto(data["curve"], args.at, "eval_return_best_team"),
            "marl_copy_fitness": [v for s, v in copy if s <= args.at][-5:],
            "marl_copy_curve": copy,
        }
    md = [
        f"{args.task}, seed {args.seed}, evaluation every {args.eval_interval} steps; values at the last evaluation "
        f"at or before {args.at} env steps. MARL-copy fitness: mean of the last 5 generations' fitness of the "
        "injected MARL copy up to that step, full-episode generations only (runs logged before TensorBoard split "
        "`fitness_short` off, with `race.fitness_mc_prob` < 1, mix in short-rollout fitness there). Mean: the "
        "mean of all evaluations up to that step (an area under the curve, less noisy than one evaluation of 5 "
        "episodes).",
        "",
        "| variant | what changes | MARL team | champion | MARL team, mean | champion, mean | q_bias_marl "
        "| MARL-copy fitness |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        copy = f"{sum(r['marl_copy_fitness']) / len(r['marl_copy_fitness']):.0f}" if r["marl_copy_fitness"] else "-"
        cells = [
            _cell(r[k], digits)
            for k, digits in (("marl", 0), ("champion", 0), ("marl_mean", 0), ("champion_mean", 0), ("q_bias", 1))
        ]
        md.append(f"| {name} | {r['what']} | {' | '.join(cells)} | {copy} |")
    out = {
        "command": " ".join(["diagnostics.py"] + sys.argv[1:]),
        "task": args.task,
        "seed": args.seed,
        "at": args.at,
        "wall_time": time.time() - start,
        "variants": results,
    }
    (ROOT / "results" / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (ROOT / "results" / f"{args.name}.md").write_text("\n".join(md) + "\n")
    # Reused runs go on past the budget: the figure stops one RACE generation (6000 steps) after it.
    _figure(results, ROOT.parent / "docs" / "figures" / f"{args.name}.png", max_step=args.total_steps + 6000)
    print("\n".join(md))


def _figure(results: dict, path: Path, max_step: float = math.inf) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, r in results.items():
        curve = [c for c in r["curve"] if c["env_steps"] <= max_step]
        steps = [c["env_steps"] for c in curve]
        for ax, key in zip(axes, ("eval_return_marl", "eval_return_best_team", "q_bias_marl")):
            ys = [c.get(key) for c in curve]
            pts = [(s, y) for s, y in zip(steps, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=name)
    for ax, title in zip(axes, ("MARL team (greedy eval)", "champion (greedy eval)", "critic bias Q - MC return")):
        ax.set_title(title)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
