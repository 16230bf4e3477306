"""`make demo`: train a short run, then compare its final greedy evaluation with a random policy.

    python examples/demo.py                      # configs/demo.yaml into runs/demo
    python examples/demo.py --out runs/d2 --set seed=2

Uses only the public Python API (`racemarl.make_config`, `train_run`, `random_policy`, `load_run`) and
`racemarl.experiment.plot`. Writes the usual run directory plus `learning_curve.png` and `demo.json` (both numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import racemarl


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", default=str(root / "configs" / "demo.yaml"), help="YAML preset (default configs/demo.yaml)"
    )
    p.add_argument("--out", default="runs/demo", help="run directory to create (default runs/demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = racemarl.make_config(args.config, overrides=args.set)
        out = Path(args.out)
        from racemarl.records.runs import check_new_run_dir

        check_new_run_dir(out, cfg)  # before training: the figure and demo.json go there too
        print(f"training {cfg.algo} on {cfg.env.task} for {cfg.total_steps} env steps (seed {cfg.seed}) into {out}")
        summary = racemarl.train_run(cfg, out, progress=not args.no_progress)
        episodes = cfg.eval_episodes
        print(f"playing {episodes} episodes of a uniformly random policy on {cfg.env.task} ...")
        rand = racemarl.random_policy(
            cfg.env.task,
            episodes=episodes,
            seed=cfg.seed,
            max_episode_steps=cfg.env.max_episode_steps,
            agent_obsk=cfg.env.agent_obsk,
        )
    except (racemarl.ConfigError, racemarl.RunDirError, racemarl.RunError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    run = racemarl.load_run(out)
    last = run.rows[-1]
    trained = {
        "return": last["eval_return"],
        "return_std": last["eval_return_std"],
        "win_rate": last.get("eval_win_rate"),
    }
    baseline = {"return": rand["mean"], "return_std": rand["std"], "win_rate": rand.get("win_rate")}
    figure = out / "learning_curve.png"
    plot_with_baseline(run, baseline["return"], figure)
    (out / "demo.json").write_text(
        json.dumps(
            {"trained": trained, "random": baseline, "episodes": episodes, "env_steps": summary["total_env_steps"]},
            indent=2,
        )
        + "\n"
    )
    print()
    print(
        f"{cfg.env.task}, {episodes} greedy evaluation episodes each, after {summary['total_env_steps']} env steps "
        f"({summary['wall_time'] / 60:.1f} min):"
    )
    print(f"  {'':18}{'mean return':>14}{'std':>10}" + (f"{'win rate':>10}" if trained["win_rate"] is not None else ""))
    for name, r in (("trained (" + cfg.algo + ")", trained), ("random policy", baseline)):
        win = f"{r['win_rate']:>10.2f}" if r["win_rate"] is not None else ""
        print(f"  {name:18}{r['return']:>14.3f}{r['return_std']:>10.3f}{win}")
    print(f"learning curve: {figure}   all results: {out} (metrics.csv, summary.json, tb/, checkpoints/)")
    return 0


def plot_with_baseline(run, random_return: float, path: Path) -> None:
    """The run's eval_return (and win rate on discrete tasks) over env steps, with the random policy's level."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    xs, ys = run.series("eval_return")
    wx, wy = run.series("eval_win_rate")
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.plot(xs, ys, "o-", color="tab:red", label=f"{run.algo}: greedy eval return")
    ax.axhline(random_return, color="gray", ls="--", label="random policy")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return")
    if wy:
        ax2 = ax.twinx()
        ax2.plot(wx, wy, "s:", color="tab:blue", label=f"{run.algo}: win rate")
        ax2.set_ylabel("win rate")
        ax2.set_ylim(-0.02, 1.02)
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"{run.task}, seed {run.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
