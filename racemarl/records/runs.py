"""Finding, loading and validating run directories (for eval, plot, table, export, info and sweep).

A run directory is what `racemarl train --out DIR` creates; it is recognised by its `config.yaml`
and `metrics.csv`. This module only reads files: it imports neither torch nor the simulators.
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from racemarl.config import Config, ConfigError, from_dict, load_yaml

REQUIRED_FILES = ("config.yaml", "metrics.csv")
LATEST_CHECKPOINT = Path("checkpoints") / "latest.pt"


class RunDirError(ValueError):
    """A user-facing problem with run directories, checkpoints, metrics or teams (one line)."""


class CheckpointError(RunDirError):
    """A checkpoint that cannot be used: missing, truncated, not a checkpoint, or holding unsafe objects."""


def missing_files(path: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (path / name).is_file()]


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and not missing_files(path)


def require_run_dir(path: str | Path) -> Path:
    """`path` as a Path if it is a run directory, else a RunDirError naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"{path} does not exist")
    if not path.is_dir():
        raise RunDirError(f"{path} is not a run directory (not a directory)")
    missing = missing_files(path)
    if missing:
        raise RunDirError(f"{path} is not a run directory (no {' and no '.join(missing)})")
    return path


# ---------------------------------------------------------------- output paths, checked before any work


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, what: str, path: Path) -> None:
    """A file can be created in `folder` (an existing directory); the probe file is removed at once."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".racemarl-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunDirError(f"{what} {path}: cannot write into {folder} ({e.strerror or e})") from None


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """`path` is, or can be created as, a writable directory (nothing is created); else RunDirError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{what} {path} is a file, not a folder")
    base = path if path.exists() else _nearest_existing(path)
    if not base.is_dir():
        raise RunDirError(f"{what} {path}: {base} is a file, not a folder")
    _probe_writable(base, what, path)
    return path


def check_output_file(path: str | Path, what: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """`path` can be written as a file (its folders may be missing; nothing is created); else RunDirError."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise RunDirError(f"{what} must end in {', '.join(suffixes)}, got {path.name}")
    if path.is_dir():
        raise RunDirError(f"{what} {path} is a folder, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise RunDirError(f"{what} {path}: the file is not writable")
        _probe_writable(path.parent, what, path)
        return path
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise RunDirError(f"{what} {path}: {base} is a file, not a folder")
    _probe_writable(base, what, path)
    return path


def check_input_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"{what} {path} does not exist")
    if not path.is_file():
        raise RunDirError(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise RunDirError(f"{what} {path} is not readable")
    return path


def experiment_settings(cfg: Config) -> dict:
    """The config as flat dotted keys, without the settings that never change what is learned."""
    from racemarl.config import SESSION_KEYS, to_dict

    flat = _flatten(to_dict(cfg))
    return {k: v for k, v in flat.items()
            if k not in SESSION_KEYS and not k.startswith("rollout.") and k not in ("checkpoint_minutes", "device")}


def check_new_run_dir(path: str | Path, cfg: Config) -> Path:
    """Before a new run starts in `path`: it must be new, empty, or an earlier start of this very run that
    never wrote a checkpoint (killed early). Anything else is refused, so no run or folder is overwritten."""
    path = check_output_dir(path)
    if not path.is_dir() or not any(path.iterdir()):
        return path
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise RunDirError(f"{path} is not empty and holds no run; choose a new or empty folder")
    try:
        saved = from_dict(load_yaml(cfg_file))
    except ConfigError as e:
        raise RunDirError(f"{path} holds a run whose config.yaml is unreadable ({e}); choose another folder") from None
    what = f"a {saved.algo} run on {saved.env.task}, seed {saved.seed}"
    if (path / LATEST_CHECKPOINT).exists() or (path / "summary.json").exists():
        raise RunDirError(f"{path} already holds {what}; continue it with `racemarl train --resume {path}` "
                          f"(racemarl.resume_run) or choose another folder")
    mine, theirs = experiment_settings(cfg), experiment_settings(saved)
    mine.pop("total_steps"), theirs.pop("total_steps")
    diff = [k for k in mine if mine[k] != theirs.get(k)]
    if diff:
        raise RunDirError(f"{path} holds the start of {what} with other settings ({', '.join(diff)}); "
                          f"choose another folder")
    return path


def _number(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


@dataclass
class Run:
    """One run directory, read from disk."""

    path: Path
    config: Config
    columns: list[str]  # the header of metrics.csv
    rows: list[dict[str, float | None]]  # metrics.csv, numbers parsed, "" -> None
    summary: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.config.env.task

    @property
    def algo(self) -> str:
        return self.config.algo

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def finished(self) -> bool:
        """summary.json exists and covers the configured budget."""
        if self.summary is None:
            return False
        steps = self.summary.get("total_env_steps")
        return steps is None or steps >= self.config.total_steps

    @property
    def env_steps(self) -> int:
        """Env steps at the last evaluation (0 before the first)."""
        if self.summary is not None and self.summary.get("total_env_steps") is not None:
            return int(self.summary["total_env_steps"])
        steps = [r["env_steps"] for r in self.rows if r.get("env_steps") is not None]
        return int(steps[-1]) if steps else 0

    @property
    def checkpoint(self) -> Path:
        return self.path / LATEST_CHECKPOINT

    @property
    def diverged(self) -> bool:
        """The run stopped on a non-finite loss (it left checkpoints/last_good.pt and did not finish)."""
        return (self.path / "checkpoints" / "last_good.pt").is_file() and not self.finished

    def series(self, metric: str) -> tuple[list[float], list[float]]:
        """(env_steps, values) of the rows where `metric` has a value."""
        xs, ys = [], []
        for r in self.rows:
            x, y = r.get("env_steps"), r.get(metric)
            if x is not None and y is not None:
                xs.append(x)
                ys.append(y)
        return xs, ys


def read_metrics_table(path: Path) -> tuple[list[str], list[dict[str, float | None]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [{k: _number(v) for k, v in row.items() if k is not None} for row in reader]
        return list(reader.fieldnames or []), rows


def load_run(path: str | Path) -> Run:
    path = require_run_dir(path)
    try:
        config = from_dict(load_yaml(path / "config.yaml"))
    except ConfigError as e:
        raise RunDirError(f"{path / 'config.yaml'}: {e}") from e
    columns, rows = read_metrics_table(path / "metrics.csv")
    if "env_steps" not in columns:
        raise RunDirError(f"{path / 'metrics.csv'} has no env_steps column")
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path / 'summary.json'} is not valid JSON ({e})") from e
    return Run(path=path, config=config, columns=columns, rows=rows, summary=summary)


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories given directly or found below the given directories (e.g. a sweep folder)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise RunDirError(f"{p} does not exist")
        if is_run_dir(p):
            found.append(p)
            continue
        if not p.is_dir():
            raise RunDirError(f"{p} is not a run directory or a folder of runs")
        below = sorted(c.parent for c in p.rglob("config.yaml") if is_run_dir(c.parent))
        if not below:
            raise RunDirError(
                f"{p} holds no run directories (a run directory has {' and '.join(REQUIRED_FILES)}; "
                f"{p} has no {' and no '.join(missing_files(p))})"
            )
        found += below
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    return [Path(p) for p in unique]


def load_runs(paths: list[str | Path]) -> list[Run]:
    return [load_run(p) for p in find_run_dirs(paths)]


def numeric_columns(runs: list[Run]) -> list[str]:
    """Columns of metrics.csv that hold a number in at least one row of one run (header order)."""
    columns: dict[str, None] = {}
    for run in runs:
        for c in run.columns:
            if any(r.get(c) is not None for r in run.rows):
                columns.setdefault(c, None)
    return list(columns)


def check_metric(runs: list[Run], metric: str) -> None:
    valid = numeric_columns(runs)
    if metric not in valid:
        known = any(metric in run.columns for run in runs)
        why = "has no values in these runs" if known else "is not a metrics.csv column"
        raise RunDirError(f"metric {metric!r} {why}; valid metrics: {', '.join(valid) or '(none: no evaluations yet)'}")


# Settings that never change what a run learns or how it is measured; runs differing only in these (and
# the seed) are samples of one experiment. Everything else that differs splits the runs into groups.
GROUPING_IGNORES = ("seed", "total_steps", "eval_interval", "torch_threads", "checkpoint_minutes", "progress",
                    "rollout.*", "logging.*")


def grouping_settings(run: Run) -> dict:
    """The settings that define a run's experiment (everything but GROUPING_IGNORES)."""
    flat = _flatten(to_dict_config(run.config))
    out = {}
    for k, v in flat.items():
        if k in GROUPING_IGNORES or any(k.startswith(g[:-1]) for g in GROUPING_IGNORES if g.endswith("*")):
            continue
        out[k] = tuple(v) if isinstance(v, list) else v
    out["diverged"] = run.diverged
    return out


def to_dict_config(cfg: Config) -> dict:
    from racemarl.config import to_dict

    return to_dict(cfg)


def _value_text(v) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


@dataclass
class Grouping:
    """How runs were grouped: groups keyed (task, label); the settings that tell the groups apart."""

    groups: dict[tuple[str, str], list[Run]]
    differing: list[str]  # setting keys (besides task and algo) whose values differ between groups

    def note(self) -> str:
        n_runs = sum(len(v) for v in self.groups.values())
        what = (f"groups differ in {', '.join(self.differing)}" if self.differing
                else "the groups differ only in task and algo")
        return (f"{n_runs} run(s) in {len(self.groups)} group(s): runs are pooled as seeds only when every setting "
                f"but {', '.join(GROUPING_IGNORES)} is equal; {what}")


def grouping(runs: list[Run]) -> Grouping:
    """Runs grouped by task, algo and every other setting except GROUPING_IGNORES (members sorted by seed,
    then path). A group's label is its algo, followed by the settings that differ between groups, and
    '(diverged)' for runs that stopped on a non-finite loss."""
    settings = {id(r): grouping_settings(r) for r in runs}
    keys = sorted({k for s in settings.values() for k in s} - {"env.task", "algo", "diverged"})
    differing = [k for k in keys if len({_value_text(s.get(k)) for s in settings.values()}) > 1]
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        st = settings[id(run)]
        parts = [run.algo] + [f"{k}={_value_text(st.get(k))}" for k in differing]
        if run.diverged:
            parts.append("(diverged)")
        groups.setdefault((run.task, " ".join(parts)), []).append(run)
    ordered = {k: sorted(v, key=lambda r: (r.seed, str(r.path))) for k, v in sorted(groups.items())}
    return Grouping(ordered, differing)


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs grouped by (task, label), see `grouping`; the label is the algo when nothing else differs."""
    return grouping(runs).groups


def groups_without(runs: list[Run], metric: str) -> list[str]:
    """'task label' of the groups none of whose runs has a value of `metric` (e.g. win rates on MaMuJoCo)."""
    return [f"{task} {label}" for (task, label), members in group_runs(runs).items()
            if not any(run.series(metric)[0] for run in members)]


def duplicate_seeds(runs: list[Run]) -> list[str]:
    """Warnings for seeds that occur in more than one run directory of the same group."""
    out = []
    for (task, label), members in group_runs(runs).items():
        seen: dict[int, list[Path]] = {}
        for run in members:
            seen.setdefault(run.seed, []).append(run.path)
        out += [f"{label} on {task} seed {seed} appears {len(ps)} times ({', '.join(map(str, ps))}); "
                f"each counts as a separate sample" for seed, ps in seen.items() if len(ps) > 1]
    return out


# ---------------------------------------------------------------- racemarl info


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_info(path: str | Path) -> dict:
    """What `racemarl info` shows, as a dict (JSON-ready)."""
    from racemarl.config import Config, to_dict

    run = load_run(path)
    cfg = run.config
    last = next((r for r in reversed(run.rows) if r.get("env_steps") is not None), None)
    defaults = _flatten(to_dict(Config()))
    skip = {"algo", "seed", "total_steps", "env.task", "progress", "eval_interval", "eval_episodes"}
    overrides = {k: v for k, v in _flatten(to_dict(cfg)).items() if k not in skip and defaults.get(k) != v}
    ckpt_dir = run.path / "checkpoints"
    checkpoints = {}
    if ckpt_dir.is_dir():
        checkpoints = {c.name: c.stat().st_size for c in sorted(ckpt_dir.glob("*.pt"))}
    s = run.summary or {}
    env_steps = s.get("total_env_steps", None if last is None else int(last["env_steps"]))
    return {
        "run_dir": str(run.path),
        "task": run.task, "algo": run.algo, "seed": run.seed,
        "total_steps": cfg.total_steps, "eval_interval": cfg.eval_interval, "eval_episodes": cfg.eval_episodes,
        "overrides": overrides,
        "env_steps": env_steps or 0,
        "generation": s.get("generations", None if last is None else _int(last.get("generation"))),
        "updates": s.get("updates", None if last is None else _int(last.get("updates"))),
        "wall_time": s.get("wall_time", None if last is None else last.get("wall_time")),
        "evaluations": sum(1 for r in run.rows if r.get("env_steps") is not None),
        "last_metrics": {k: v for k, v in (last or {}).items() if v is not None},
        "checkpoints": checkpoints,
        "finished": run.finished,
        "summary": run.summary,
    }


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def format_info(info: dict) -> str:
    total = info["total_steps"]
    steps = info["env_steps"]
    pct = 100.0 * steps / total if total else 0.0
    lines = [
        ("run", info["run_dir"]),
        ("task", info["task"]),
        ("algo", info["algo"]),
        ("seed", str(info["seed"])),
        ("budget", f"{total} env steps; evaluation every {info['eval_interval']} env steps, "
                   f"{info['eval_episodes']} episode(s)"),
        ("config", ", ".join(f"{k}={v}" for k, v in info["overrides"].items()) or "defaults"),
        ("progress", f"{steps} / {total} env steps ({pct:.1f}%), generation {info['generation'] if info['generation'] is not None else '-'}, "
                     f"updates {info['updates'] if info['updates'] is not None else '-'}, "
                     f"wall time {_duration(info['wall_time'])}, {info['evaluations']} evaluation(s)"),
    ]
    m = info["last_metrics"]
    if m:
        lines.append(("last eval", ", ".join(f"{k}={_short(v)}" for k, v in m.items())))
    else:
        lines.append(("last eval", "none yet"))
    ck = info["checkpoints"]
    lines.append(("checkpoints", ", ".join(f"{k} ({_size(v)})" for k, v in ck.items()) or "none"))
    if info["finished"]:
        s = info["summary"] or {}
        lines.append(("finished", f"yes: final eval return {_short(s.get('final_eval_return'))}, "
                                  f"best {_short(s.get('best_eval_return'))}, mean {_short(s.get('mean_sps'))} env steps/s"))
    else:
        cont = f"racemarl train --resume {info['run_dir']}" if "latest.pt" in ck else "start it again (no checkpoint)"
        lines.append(("finished", f"no (continue with: {cont})"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def _short(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(v)
