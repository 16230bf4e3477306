"""The commands of `racemarl`: one function per subcommand (`_train`, `_eval`, `_sweep`, ...), called by `main`
with the parsed arguments. The parser and the error handling are in `racemarl/cli/__init__.py`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from racemarl.config import ConfigError, build_config, from_dict, load_yaml
from racemarl.envs import MissingDependencyError
from racemarl.envs.base import EnvFailure
from racemarl.records.runs import RunDirError


def _rollout_flags(args: argparse.Namespace) -> dict:
    """The `rollout` config values given by --backend, --workers and --ray-address (--ray-address implies ray)."""
    values = {"backend": args.backend, "workers": args.workers, "ray_address": args.ray_address}
    if args.ray_address is not None and args.backend is None:
        values["backend"] = "ray"
    return {k: v for k, v in values.items() if v is not None}


def _resume_config(args: argparse.Namespace, run_dir: Path):
    """The saved config of `run_dir` with what the resume command may change: a larger --total-steps, where the
    episodes are played, and the session's own settings. Flags that repeat the run's settings are accepted;
    flags that would change them are refused, naming them."""
    from racemarl.config import apply_dict, apply_override
    from racemarl.records.runs import check_preset_file, experiment_settings, require_run_dir, resolved_auto_vmm_beta
    from racemarl.train import RunError

    require_run_dir(run_dir)
    if args.out and Path(args.out).resolve() != run_dir.resolve():
        raise RunError("--resume continues the run in its own directory; drop --out")
    try:
        cfg = from_dict(load_yaml(run_dir / "config.yaml"))
    except ConfigError as e:
        raise RunError(f"{run_dir / 'config.yaml'}: {e}") from None
    wanted = from_dict(load_yaml(run_dir / "config.yaml"))
    if args.config:
        apply_dict(wanted, load_yaml(check_preset_file(args.config, "--config")))
    top = {
        "algo": args.algo,
        "seed": args.seed,
        "eval_interval": args.eval_interval,
        "eval_episodes": args.eval_episodes,
        "env": {"task": args.task} if args.task is not None else {},
    }
    apply_dict(wanted, {k: v for k, v in top.items() if v is not None})
    for assignment in args.set:
        apply_override(wanted, assignment)
    if args.precision is not None:
        wanted.precision = args.precision
    if wanted.precision == "auto":  # auto on a resume: the run keeps the precision it resolved when it started
        wanted.precision = cfg.precision
    if wanted.race.vmm_beta == "auto":  # the number it stands for on the run's task
        wanted.race.vmm_beta = resolved_auto_vmm_beta(wanted)
    saved_flat, wanted_flat = experiment_settings(cfg), experiment_settings(wanted)
    changed = [
        f"{k}={wanted_flat[k]} (the run has {saved_flat[k]})"
        for k in saved_flat
        if k != "total_steps" and wanted_flat[k] != saved_flat[k]
    ]
    if changed:
        raise RunError(
            f"--resume keeps the run's settings; these differ: {'; '.join(changed)}. Only a larger "
            "--total-steps, --device, torch_threads and where the episodes are played (--backend, --workers, "
            "--ray-address) may change"
        )
    if args.total_steps is not None:
        if args.total_steps < cfg.total_steps:
            raise RunError(
                f"--total-steps {args.total_steps} is smaller than the run's budget of {cfg.total_steps} "
                "env steps; a resume can only keep or extend it"
            )
        cfg.total_steps = args.total_steps
    cfg.checkpoint_minutes = wanted.checkpoint_minutes  # never changes what is learned
    cfg.device = args.device if args.device is not None else wanted.device  # checkpoints are device-independent
    cfg.torch_threads = wanted.torch_threads  # the saved one or --set's: another rounding of the same functions
    cfg.rollout = wanted.rollout  # the saved one, or as --set rollout.* changed it: never changes what is learned
    rollout = _rollout_flags(args)
    if rollout:  # the flags have the last word
        if "backend" in rollout:  # another backend: its own defaults unless given
            rollout = {"workers": 0, "ray_address": None, **rollout}
        for key, value in rollout.items():
            setattr(cfg.rollout, key, value)
    cfg.progress = wanted.progress and not args.no_progress  # --set progress=false or --no-progress
    return cfg.validate()


def _config_file(path: str | None) -> Path | None:
    """--config as a file (a shipped preset's name resolved), or None without it."""
    from racemarl.records.runs import check_preset_file

    return None if path is None else check_preset_file(path, "--config")


def _no_empty(args: argparse.Namespace, *names: str) -> None:
    """A flag given with an empty value (`--task ''`) is refused, not taken as absent (the default)."""
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"--{name.replace('_', '-')} needs a value, got an empty one")


def _train(args: argparse.Namespace) -> int:
    from racemarl.train import RunError, TrainingInterrupted, train

    _no_empty(args, "task", "out", "resume", "config", "device", "ray_address")
    if args.resume:
        run_dir = Path(args.resume)
        cfg = _resume_config(args, run_dir)
        from racemarl.experiment.sweep import run_state

        if run_state(run_dir, cfg.total_steps) == "finished":  # nothing to do: leave the finished run as it is
            print(
                f"run already finished: {run_dir} (its budget of {cfg.total_steps} env steps); nothing to do "
                "(a larger --total-steps extends it)"
            )
            return 0
    else:
        if not args.out:
            raise RunError("--out RUN_DIR is required")
        run_dir = Path(args.out)
        preset = _config_file(args.config)
        top = {
            "algo": args.algo,
            "seed": args.seed,
            "total_steps": args.total_steps,
            "eval_interval": args.eval_interval,
            "eval_episodes": args.eval_episodes,
            "env": {"task": args.task} if args.task is not None else {},
        }
        if args.no_progress:
            top["progress"] = False
        if _rollout_flags(args):
            top["rollout"] = _rollout_flags(args)
        if args.device is not None:
            top["device"] = args.device
        if args.precision is not None:
            top["precision"] = args.precision
        cfg = build_config(preset, args.set, **top)
    try:
        summary = train(cfg, run_dir, resume=bool(args.resume))
    except EnvFailure as e:  # the env's own failure: say what became of the run's folder
        ckpt = run_dir / "checkpoints" / "latest.pt"
        after = (
            f"the run can continue from its last checkpoint with `racemarl train --resume {run_dir}` once the "
            "environment is fixed"
            if ckpt.is_file()
            else "no checkpoint had been written, so nothing of the run was kept"
        )
        raise EnvFailure(f"{e}; {after}", detail=e.detail) from e
    except TrainingInterrupted as e:
        print(f"racemarl: {e}", file=sys.stderr)
        return 130 if e.signal_name == "SIGINT" else 143
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once
        has_ckpt = (run_dir / "checkpoints" / "latest.pt").is_file()
        print(
            "racemarl: interrupted; "
            + (
                f"resume from the last checkpoint with `racemarl train --resume {run_dir}`"
                if has_ckpt
                else f"no checkpoint was written yet; start again (the folder {run_dir} can be reused)"
            ),
            file=sys.stderr,
        )
        return 130
    print(f"run finished: {run_dir}  (metrics.csv, summary.json, tb/, checkpoints/)")
    win = f", final win rate {summary['final_eval_win_rate']:.2f}" if "final_eval_win_rate" in summary else ""
    print(
        f"final eval return {_num(summary['final_eval_return'])}, best {_num(summary['best_eval_return'])}{win}, "
        f"{summary['total_env_steps']} env steps in {summary['wall_time']:.0f} s"
    )
    if cfg.uses_marl and not summary.get("updates"):
        from racemarl.envs import is_discrete_task

        why = (
            f"fewer than discrete.batch_episodes={cfg.discrete.batch_episodes} episodes were collected"
            if is_discrete_task(cfg.env.task, **_env_kwargs(cfg))
            else f"it ended before learner.start_steps={cfg.learner.start_steps} env steps"
        )
        _warn([f"the learner made no updates: {why}; the result is that of an untrained team (raise --total-steps)"])
    return 0


def _env_kwargs(cfg) -> dict:
    from racemarl.acting.workers import env_kwargs

    return env_kwargs(cfg)


def _num(v: float | None) -> str:
    return "-" if v is None else (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")


def _tasks_cache_file(agent_obsk: int) -> tuple[Path, dict]:
    """Where `racemarl tasks` keeps its table, and the key it must match: the sizes only change with
    racemarl and the simulator packages, so a table built once is reused until one of them changes."""
    from importlib import metadata

    from racemarl import __version__

    versions: dict[str, str | None] = {}
    for package in ("gymnasium-robotics", "mujoco", "jaxmarl", "smac", "pettingzoo", "mpe2"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "racemarl"
    return root / "tasks.json", {"racemarl": __version__, "packages": versions, "agent_obsk": agent_obsk}


def _task_rows(agent_obsk: int) -> tuple[list[tuple[str, ...]], dict[str, str]]:
    import json

    from racemarl.envs import list_tasks, make_env

    cache, key = _tasks_cache_file(agent_obsk)
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key and saved.get("tasks") == list_tasks():
            return [tuple(r) for r in saved["rows"]], saved["missing"]
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    rows: list[tuple[str, ...]] = []
    missing: dict[str, str] = {}
    for t in list_tasks():
        family = t.split("/", 1)[0]
        if family in missing:
            continue
        try:
            env = make_env(t, agent_obsk=agent_obsk)
        except MissingDependencyError as e:
            missing[family] = str(e)
            continue
        s = env.spec
        env.close()
        rows.append(
            (t, str(s.n_agents), ",".join(map(str, s.obs_dims)), str(s.state_dim), ",".join(map(str, s.act_dims)))
        )
    try:  # a cache that cannot be written only costs time
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "tasks": list_tasks(), "rows": rows, "missing": missing}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return rows, missing


def _tasks(args: argparse.Namespace) -> int:
    from racemarl.envs import list_tasks

    if args.names_only:
        for t in list_tasks():
            print(t)
        return 0
    if args.agent_obsk < 0:
        raise ConfigError(f"--agent-obsk must be >= 0, got {args.agent_obsk}")
    rows, missing = _task_rows(args.agent_obsk)
    header = ("task", "agents", "obs sizes (per agent)", "state", "action sizes (per agent)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"(observation sizes with agent_obsk={args.agent_obsk}; --agent-obsk K for others)")
    for family, why in missing.items():
        print(f"({family}/* not shown: {why}; `racemarl tasks --names-only` lists their names)")
    return 0


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"racemarl: warning: {line}", file=sys.stderr)


def _eval(args: argparse.Namespace) -> int:
    from racemarl.experiment.evaluate import evaluate_run

    r = evaluate_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        episodes=args.episodes,
        team=args.team,
        seed=args.seed,
        video=args.video,
        out=args.out,
    )
    print(
        f"{r['algo']} on {r['task']}, team {r['team']}, checkpoint at {r['env_steps']} env steps "
        f"(generation {r['generation']})"
    )
    print(
        f"return over {r['episodes']} greedy episodes: mean {r['mean']:.2f} ± {r['std']:.2f} (std), "
        f"min {r['min']:.2f}, max {r['max']:.2f}" + (f", win rate {r['win_rate']:.2f}" if "win_rate" in r else "")
    )
    if "video" in r:
        print(f"video of the first episode ({r['video_frames']} frames): {r['video']}")
    print(f"written: {r['out']}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from racemarl.experiment.sweep import Sweep, SweepSpec, parse_names, parse_seeds

    _no_empty(args, "out", "config", "preset", "tasks", "algos", "seeds")

    task_configs, config = {}, None
    if args.preset:
        from racemarl.experiment.presets import paper_grid

        if args.config:
            raise ConfigError("--preset gives every task its own preset; drop --config (use --set to change values)")
        grid = paper_grid(args.preset)
        tasks = parse_names(args.tasks, "tasks") if args.tasks else list(grid.presets)
        outside = [t for t in tasks if t not in grid.presets]
        if outside:
            raise ConfigError(
                f"--tasks: {', '.join(outside)} not in --preset {grid.name}; its tasks: {', '.join(grid.presets)}"
            )
        task_configs = {t: str(grid.preset_path(t)) for t in tasks}
        algos = parse_names(args.algos, "algos") if args.algos else grid.available_algos()
        seeds = parse_seeds(args.seeds or grid.seeds)
    else:
        config = args.config and str(_config_file(args.config))  # a shipped preset's name: its file, for every run
        missing = [flag for flag, v in (("--tasks", args.tasks), ("--total-steps", args.total_steps)) if v is None]
        if missing:
            raise ConfigError(f"racemarl sweep needs {' and '.join(missing)} (or --preset with one of the paper grids)")
        tasks, algos, seeds = (
            parse_names(args.tasks, "tasks"),
            parse_names(args.algos or "race", "algos"),
            parse_seeds(args.seeds or "1"),
        )
    spec = SweepSpec(
        tasks=tasks,
        algos=algos,
        seeds=seeds,
        total_steps=args.total_steps,
        sets=list(args.set),
        config=config,
        eval_interval=args.eval_interval,
        eval_episodes=args.eval_episodes,
        task_configs=task_configs,
        preset=args.preset,
    )
    slurm = None
    given = [
        f
        for f, v in (
            ("--slurm-partition", args.slurm_partition),
            ("--slurm-time", args.slurm_time),
            ("--slurm-cpus", args.slurm_cpus != 1),
            ("--slurm-mem", args.slurm_mem),
            ("--slurm-gpus", args.slurm_gpus),
            ("--slurm-option", args.slurm_option),
            ("--slurm-setup", args.slurm_setup),
            ("--no-wait", args.no_wait),
        )
        if v
    ]
    if args.backend == "slurm":
        from racemarl.experiment.slurm import SlurmOptions

        slurm = SlurmOptions(
            partition=args.slurm_partition,
            time=args.slurm_time,
            cpus=args.slurm_cpus,
            mem=args.slurm_mem,
            gpus=args.slurm_gpus,
            options=list(args.slurm_option),
            setup=list(args.slurm_setup),
        )
        slurm.validate()
    elif given:
        raise ConfigError(f"{', '.join(given)}: only with --backend slurm")
    return Sweep(spec, args.out, workers=args.workers, backend=args.backend, slurm=slurm, wait=not args.no_wait).run()


def _plot(args: argparse.Namespace) -> int:
    from racemarl.experiment.grouping import duplicate_seeds, grouping
    from racemarl.experiment.plot import learning_curves, marl_team_curves, parse_baseline, plot_curves
    from racemarl.records.runs import check_output_file, load_runs

    check_output_file(args.out, "--out", (".png", ".pdf", ".svg"))
    baselines = [parse_baseline(b) for b in args.baseline]
    runs = load_runs(args.dirs)
    _warn(duplicate_seeds(runs))
    curves = learning_curves(runs, args.metric, smooth=args.smooth, ci=args.ci, level=args.level)
    marl = {} if args.headline_only else marl_team_curves(runs, args.metric, args.smooth, args.ci, args.level)
    out = plot_curves(
        curves,
        args.out,
        metric=args.metric,
        ci=args.ci,
        level=args.level,
        smooth=args.smooth,
        title=args.title,
        baselines=baselines,
        marl_curves=marl,
    )
    shown = [(k, c, "") for k, c in curves.items()] + [(k, c, ": MARL team") for k, c in marl.items()]
    for (task, algo), c, team in shown:
        last = f"{c.mean[-1]:.1f} at {int(c.x[-1])} env steps" if len(c.x) else "no common range"
        print(f"{task} {algo}{team}: {c.n_seeds} seed(s), last mean {last}")
    print(grouping(runs).note())
    _warn_without(runs, args.metric)
    print(f"written: {out}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from racemarl.experiment.grouping import duplicate_seeds
    from racemarl.experiment.report import results_table
    from racemarl.records.runs import check_output_file, load_runs

    if args.digits < 0:
        raise RunDirError(f"--digits must be >= 0, got {args.digits}")
    if args.max_steps is not None and args.max_steps < 0:
        raise RunDirError(f"--max-steps must be >= 0, got {args.max_steps}")
    if args.out:
        check_output_file(args.out)
    random = parse_task_values(args.random, "--random")
    runs = load_runs(args.dirs)
    unknown = sorted(set(random) - {r.config.env.task for r in runs})
    if unknown:
        raise RunDirError(f"--random names a task that none of these runs trained: {', '.join(unknown)}")
    _warn(duplicate_seeds(runs))
    text = results_table(
        runs, args.metric, fmt=args.format, digits=args.digits, max_steps=args.max_steps, random=random
    )
    _warn_without(runs, args.metric)
    if args.out:
        Path(args.out).write_text(text)
        print(f"written: {args.out}")
    else:
        print(text, end="")
    return 0


def parse_task_values(items: list[str], flag: str) -> dict[str, float]:
    """`TASK=VALUE` strings -> {task: value}; a one-line RunDirError for a malformed or repeated one."""
    from racemarl.records.runs import parse_named_number

    out: dict[str, float] = {}
    for item in items:
        task, number = parse_named_number(item, flag, "TASK=NUMBER (e.g. mamujoco/Hopper-3x1=18.2)")
        if task in out:
            raise RunDirError(f"{flag} gives {task} twice")
        out[task] = number
    return out


def _warn_without(runs, metric: str) -> None:
    from racemarl.experiment.grouping import groups_without

    left_out = groups_without(runs, metric)
    if left_out:
        why = " (MaMuJoCo tasks have no win rate)" if "win_rate" in metric else ""
        _warn([f"left out, no values of {metric}{why}: {', '.join(left_out)}"])


def _export(args: argparse.Namespace) -> int:
    from racemarl.experiment.grouping import duplicate_seeds
    from racemarl.experiment.report import export_marl_eval
    from racemarl.records.runs import check_output_file, load_runs

    if not args.name.strip():
        raise RunDirError("--name must not be empty: it is the metric's key in marl-eval's JSON")
    check_output_file(args.out)
    runs = load_runs(args.dirs)
    _warn(duplicate_seeds(runs))
    out, warnings = export_marl_eval(runs, args.out, args.metric, args.name)
    _warn(warnings)
    print(f"written: {out} ({len(runs)} runs, marl-eval format, metric {args.metric} as {args.name})")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from racemarl.experiment.info import run_info

    info = run_info(args.run_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from racemarl.experiment.info import format_info

    print(format_info(info))
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    from racemarl.config import to_dict

    cfg = build_config(_config_file(args.config), args.set)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
