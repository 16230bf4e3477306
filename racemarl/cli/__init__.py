"""The `racemarl` command line: the parser and `main` (errors that are the user's to fix print one line and
exit 2). The commands themselves are in `commands.py`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from racemarl.cli.commands import _config, _eval, _export, _info, _plot, _sweep, _table, _tasks, _train
from racemarl.config import ALGOS, ROLLOUT_BACKENDS, Config, ConfigError
from racemarl.envs import MissingDependencyError, UnknownTaskError
from racemarl.envs.base import TRACEBACK_ENV, EnvFailure
from racemarl.records.runs import RunDirError


class _Parser(argparse.ArgumentParser):
    """A usage error in one line, like every other bad input: `racemarl train: error: ... (see ...)`, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from racemarl import __version__

    p = _Parser(
        prog="racemarl",
        description="RACE (evolutionary MARL with shared encoders) and its "
        "baselines MATD3, FACMAC, EA and MERL: train, evaluate, sweep, plot.",
    )
    p.add_argument("--version", action="version", version=f"racemarl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a RACE / MATD3 / FACMAC / EA / MERL run")
    t.add_argument("--task", help="e.g. mamujoco/HalfCheetah-6x1 (see `racemarl tasks`)")
    d = Config()  # the defaults the help states
    t.add_argument("--algo", choices=ALGOS, help=f"default {d.algo}")
    t.add_argument("--seed", type=int, help=f"seeds every random draw of the run (default {d.seed})")
    t.add_argument("--total-steps", type=int, help=f"env steps of all teams together (default {d.total_steps})")
    t.add_argument("--out", help="run directory to create")
    t.add_argument(
        "--config",
        help="a YAML file or a shipped preset's name: demo, halfcheetah-6x1, paper/mamujoco-hopper-3x1, ... (configs/)",
    )
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, dotted keys for nested ones, e.g. learner.batch_size=128",
    )
    t.add_argument(
        "--eval-interval",
        type=int,
        metavar="STEPS",
        help="env steps between two evaluations (each writes a metrics.csv row and a checkpoint; default "
        f"{d.eval_interval})",
    )
    t.add_argument(
        "--eval-episodes", type=int, metavar="N", help=f"greedy episodes per evaluation (default {d.eval_episodes})"
    )
    t.add_argument(
        "--backend",
        choices=ROLLOUT_BACKENDS,
        help="where the training episodes are played: inline (in this process, default), process "
        "(local worker processes), ray (Ray actors); never changes what is learned",
    )
    t.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="rollout workers of --backend process or ray (default there: one per CPU core, at most one "
        "per episode of a generation); --backend inline plays in this process",
    )
    t.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="join this Ray cluster (implies --backend ray); default: a local Ray instance",
    )
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--device",
        help="where the learner and the replay buffer live: auto (default: CUDA when available), "
        "cpu, cuda, cuda:N; may change on --resume",
    )
    t.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="the learner's arithmetic: fp32 (default), bf16 (bfloat16 autocast, float32 weights and losses) "
        "or auto (bf16 where the device multiplies bfloat16 natively); a resumed run keeps its own",
    )
    t.set_defaults(func=_train)

    c = sub.add_parser("config", help="print the resolved config (defaults <- --config <- --set) as YAML")
    c.add_argument("--config", help="a YAML file or a shipped preset's name (as for train)")
    c.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (as for train), e.g. learner.batch_size=128; repeatable",
    )
    c.set_defaults(func=_config)

    k = sub.add_parser("tasks", help="list the tasks with their agents, observation, state and action sizes")
    k.add_argument("--names-only", action="store_true", help="only the names, one a line")
    k.add_argument("--agent-obsk", type=int, default=0, help="MaMuJoCo observation depth for the sizes (default 0)")
    k.set_defaults(func=_tasks)

    e = sub.add_parser("eval", help="greedy episodes of a saved run's team; JSON summary, optional MP4 video")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--checkpoint", metavar="PATH", help="default RUN_DIR/checkpoints/latest.pt")
    e.add_argument("--episodes", type=int, default=10, help="greedy episodes (default 10)")
    e.add_argument("--team", help="marl (default for race/matd3/facmac), best (default for ea) or a population slot K")
    e.add_argument("--video", metavar="FILE.mp4", help="record the first episode off-screen (MaMuJoCo)")
    e.add_argument("--seed", type=int, default=0, help="seed of the episodes' env seeds (default 0)")
    e.add_argument("--out", metavar="FILE.json", help="default RUN_DIR/eval.json")
    e.set_defaults(func=_eval)

    w = sub.add_parser("sweep", help="train a grid of tasks x algos x seeds as subprocesses; restartable")
    w.add_argument(
        "--preset",
        metavar="GRID",
        help="a paper grid: paper-mamujoco (Figure 2's 8 tasks) or paper-smax (Figure 3's maps SMAX can "
        "build); each task runs with its preset under configs/paper/ and its budget; --tasks, --algos, "
        "--seeds and --total-steps narrow or change it",
    )
    w.add_argument("--tasks", help="comma-separated task names (required without --preset)")
    w.add_argument("--algos", help="comma-separated, e.g. race,matd3 (default race; with --preset the paper's)")
    w.add_argument("--seeds", help="1-5 or 1,3,7 (default 1; with --preset 1-5)")
    w.add_argument("--total-steps", type=int, help="env steps of each run (required without --preset)")
    w.add_argument("--out", required=True, help="sweep folder (one run directory per grid point)")
    w.add_argument(
        "--workers",
        type=int,
        help="runs at a time (default: number of CPU cores; with --backend slurm: as many array tasks as Slurm grants)",
    )
    w.add_argument(
        "--backend",
        choices=("local", "ray", "slurm"),
        default="local",
        help="local subprocesses (default), Ray tasks, or one Slurm job-array task per run (docs/slurm.md)",
    )
    w.add_argument("--slurm-partition", metavar="NAME", help="Slurm partition of the array tasks (default: Slurm's)")
    w.add_argument(
        "--slurm-time",
        metavar="TIME",
        help="time limit of each task: minutes or [D-]HH:MM[:SS]; a task that reaches it checkpoints and is requeued",
    )
    w.add_argument("--slurm-cpus", type=int, default=1, metavar="N", help="CPUs per task (default 1)")
    w.add_argument("--slurm-mem", metavar="SIZE", help="memory per task, e.g. 8G (default: Slurm's)")
    w.add_argument("--slurm-gpus", type=int, default=0, metavar="N", help="GPUs per task (default 0)")
    w.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another sbatch option for every task, e.g. account=my_lab or qos=high (repeatable)",
    )
    w.add_argument(
        "--slurm-setup",
        action="append",
        default=[],
        metavar="LINE",
        help="a shell line run before each task, e.g. 'module load cuda' (repeatable)",
    )
    w.add_argument(
        "--no-wait",
        action="store_true",
        help="--backend slurm: submit and return; the same command run later follows and collects",
    )
    w.add_argument("--config", help="a YAML file or a shipped preset's name, for every run")
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    w.add_argument("--eval-interval", type=int, metavar="STEPS", help="as for train (default: the config's)")
    w.add_argument("--eval-episodes", type=int, metavar="N", help="as for train (default: the config's)")
    w.set_defaults(func=_sweep)

    def add_dirs(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "dirs", nargs="+", metavar="DIR", help="run directories or folders holding them (searched recursively)"
        )
        q.add_argument("--metric", default="eval_return", help="a numeric metrics.csv column (default eval_return)")

    g = sub.add_parser("plot", help="learning curves: a panel per task, a line per algo, mean and CI over seeds")
    add_dirs(g)
    g.add_argument("--out", required=True, metavar="FIG.png|.pdf|.svg")
    g.add_argument(
        "--smooth", type=int, default=1, metavar="W", help="moving average over W evaluations (default 1 = none)"
    )
    g.add_argument(
        "--ci", choices=("t", "bootstrap"), default="t", help="band: Student-t interval (default) or bootstrap"
    )
    g.add_argument("--level", type=float, default=0.95, help="confidence level of the band (default 0.95)")
    g.add_argument("--title")
    g.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="a dashed horizontal line in every panel, e.g. random=-25.6 (repeatable)",
    )
    g.add_argument(
        "--headline-only",
        action="store_true",
        help="leave out the dashed MARL-team lines that RACE and MERL runs get beside their headline eval_return "
        "(the better of the MARL team and the champion) and eval_win_rate",
    )
    g.set_defaults(func=_plot)

    b = sub.add_parser("table", help="final and best return per task and algo (mean ± s.e. over seeds)")
    add_dirs(b)
    b.add_argument("--format", choices=("md", "csv"), default="md")
    b.add_argument("--digits", type=int, default=1, help="decimals in the Markdown table (default 1)")
    b.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="use only evaluations made up to N env steps (a budget; RACE generations may overshoot it)",
    )
    b.add_argument(
        "--random",
        action="append",
        default=[],
        metavar="TASK=VALUE",
        help="a random policy's value of the metric on TASK (repeatable): adds the IQM across these tasks of the "
        "final values normalised between it (0) and the task's best run (1)",
    )
    b.add_argument("--out", metavar="FILE", help="write to a file instead of printing")
    b.set_defaults(func=_table)

    x = sub.add_parser("export", help="write the runs' evaluations in marl-eval's JSON format")
    add_dirs(x)
    x.add_argument("--out", required=True, metavar="results.json")
    x.add_argument("--name", default="episode_return", help="metric name in the JSON (default episode_return)")
    x.set_defaults(func=_export)

    i = sub.add_parser("info", help="a run's config, progress, last metrics, checkpoints and whether it finished")
    i.add_argument("run_dir", metavar="RUN_DIR")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=_info)
    return p


def _user_error(e: BaseException) -> bool:
    """Errors that are the user's to fix: one line, exit 2. RunError lives in racemarl.train, which (with
    torch) is only imported by the commands that train; an error of that class can only come from them."""
    train_mod = sys.modules.get("racemarl.train")
    known = (ConfigError, UnknownTaskError, MissingDependencyError, RunDirError, EnvFailure)
    return isinstance(e, known) or (train_mod is not None and isinstance(e, train_mod.RunError))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:  # e.g. `racemarl info RUN | head`: the reader has gone; end quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not complain
        except (OSError, ValueError):
            pass
        return 141
    except KeyboardInterrupt:
        if args.command == "sweep":
            print("racemarl: interrupted; run the same sweep command again to continue", file=sys.stderr)
        else:
            print("racemarl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _user_error(e):
            raise
        if os.environ.get(TRACEBACK_ENV) == "1":  # the full story, e.g. of a bug in the user's own env
            import traceback

            traceback.print_exception(e, file=sys.stderr)
            detail = getattr(e, "detail", None)
            if detail:
                print(f"in the rollout worker:\n{detail}", file=sys.stderr)
        message = " ".join(str(e).split())  # always one line
        print(f"racemarl: error: {message}", file=sys.stderr)
        return 2
