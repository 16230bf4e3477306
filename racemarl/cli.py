"""The `racemarl` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from racemarl.config import ALGOS, ConfigError, build_config, from_dict, load_yaml
from racemarl.envs import MissingDependencyError, UnknownTaskError


def _train(args: argparse.Namespace) -> int:
    from racemarl.train import RunError, train

    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.exists():
            raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
        if args.out and Path(args.out) != run_dir:
            raise RunError("--resume continues the run in its own directory; drop --out")
        cfg = from_dict(load_yaml(cfg_path))
        given = {"env.task": (args.task, cfg.env.task), "algo": (args.algo, cfg.algo), "seed": (args.seed, cfg.seed)}
        for key, (flag, saved) in given.items():
            if flag is not None and flag != saved:
                raise RunError(f"--resume: the run was started with {key}={saved}, not {flag}")
        if args.set or args.config or args.eval_interval or args.eval_episodes:
            raise RunError("--resume takes the run's saved config; only --total-steps may change it")
        if args.total_steps is not None:
            cfg.total_steps = args.total_steps
        cfg.progress = not args.no_progress
        cfg.validate()
    else:
        if not args.out:
            raise RunError("--out RUN_DIR is required")
        run_dir = Path(args.out)
        if (run_dir / "checkpoints").exists():
            raise RunError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
        top = {
            "algo": args.algo, "seed": args.seed, "total_steps": args.total_steps,
            "eval_interval": args.eval_interval, "eval_episodes": args.eval_episodes,
            "env": {"task": args.task} if args.task else {},
        }
        if args.no_progress:
            top["progress"] = False
        cfg = build_config(args.config, args.set, **top)
    summary = train(cfg, run_dir, resume=bool(args.resume))
    print(f"run finished: {run_dir}  (metrics.csv, summary.json, tb/, checkpoints/)")
    print(f"final eval return {summary['final_eval_return']:.1f}, best {summary['best_eval_return']:.1f}, "
          f"{summary['total_env_steps']} env steps in {summary['wall_time']:.0f} s")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from racemarl.envs import list_tasks

    for t in list_tasks():
        print(t)
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    from racemarl.config import to_dict

    cfg = build_config(args.config, args.set)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="racemarl", description="RACE: evolutionary MARL with shared encoders.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a RACE / MATD3 / EA run")
    t.add_argument("--task", help="e.g. mamujoco/HalfCheetah-6x1 (see `racemarl tasks`)")
    t.add_argument("--algo", choices=ALGOS)
    t.add_argument("--seed", type=int)
    t.add_argument("--total-steps", type=int, help="env steps of all teams together")
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--config", help="YAML preset (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, dotted keys for nested ones, e.g. learner.batch_size=128")
    t.add_argument("--eval-interval", type=int)
    t.add_argument("--eval-episodes", type=int)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    c = sub.add_parser("config", help="print the resolved config (defaults <- --config <- --set) as YAML")
    c.add_argument("--config", help="YAML preset")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.set_defaults(func=_config)

    k = sub.add_parser("tasks", help="list the available tasks")
    k.set_defaults(func=_tasks)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from racemarl.train import RunError

    try:
        return args.func(args)
    except (ConfigError, UnknownTaskError, MissingDependencyError, RunError) as e:
        print(f"racemarl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("racemarl: interrupted; resume with `racemarl train --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
