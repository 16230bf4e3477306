"""Finding, loading and validating run directories (for eval, plot, table, export, info and sweep).
Grouping runs into experiments is `experiment/grouping.py`; `racemarl info` is `experiment/info.py`.

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
from typing import Literal

from racemarl.config import Config, ConfigError, from_dict, load_yaml

REQUIRED_FILES = ("config.yaml", "metrics.csv")
LATEST_CHECKPOINT = Path("checkpoints") / "latest.pt"
TRAIN_LOCK = ".train.lock"  # held by the process training a run (`FolderLock`)
LOCK_FILES = (TRAIN_LOCK, ".sweep.lock")  # never count as content of a folder


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


# ---------------------------------------------------------------- one process per folder


class FolderLock:
    """An exclusive lock on a folder, held by one process while it works there (a run being trained, a sweep):
    `flock` on a lock file in the folder that holds the owner's pid. The kernel drops the lock when its process
    dies, however it dies, so a lock left by a dead process never blocks. `acquire` raises RunDirError naming the
    process that holds it."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def holder(self) -> int | None:
        """The pid of the live process holding the lock, or None when nobody does (nothing is created)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None

    def acquire(self) -> FolderLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise RunDirError(
                f"another {self.what} (pid {other or '?'}) is working on {self.path.parent}; wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def has_content(path: Path) -> bool:
    """Whether the folder holds anything besides lock files."""
    return path.is_dir() and any(c.name not in LOCK_FILES for c in path.iterdir())


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


def check_preset_file(path: str | Path, what: str) -> Path:
    """A preset: a YAML file, or a shipped preset's name (`racemarl.config.resolve_preset`) -> its file. RunDirError
    if it is neither (listing the shipped presets) or cannot be read."""
    from racemarl.config import resolve_preset, shipped_presets

    resolved = resolve_preset(path)
    if not resolved.exists():
        raise RunDirError(f"{what} {path} does not exist; shipped presets: {', '.join(shipped_presets())}")
    return check_input_file(resolved, what)


def experiment_settings(cfg: Config) -> dict:
    """The config as flat dotted keys, without the settings that never change what is learned (the session's
    display, where the episodes are played, how often it checkpoints, and the hardware it computes on: the device
    and the number of PyTorch threads, which round differently but compute the same functions)."""
    from racemarl.config import SESSION_KEYS, to_dict

    flat = flatten(to_dict(cfg))
    return {
        k: v
        for k, v in flat.items()
        if k not in SESSION_KEYS
        and not k.startswith("rollout.")
        and k not in ("checkpoint_minutes", "device", "torch_threads")
    }


def check_new_run_dir(path: str | Path, cfg: Config) -> Path:
    """Before a new run starts in `path`: it must be new, empty, or an earlier start of this very run that
    never wrote a checkpoint (killed early). Anything else is refused, so no run or folder is overwritten."""
    path = check_output_dir(path)
    if not has_content(path):
        return path
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise RunDirError(f"{path} is not empty and holds no run; choose a new or empty folder")
    try:
        saved = from_dict(load_yaml(cfg_file), check_task=False)
    except ConfigError as e:
        raise RunDirError(f"{path} holds a run whose config.yaml is unreadable ({e}); choose another folder") from None
    what = f"a {saved.algo} run on {saved.env.task}, seed {saved.seed}"
    if (path / LATEST_CHECKPOINT).exists() or (path / "summary.json").exists():
        raise RunDirError(
            f"{path} already holds {what}; continue it with `racemarl train --resume {path}` "
            f"(racemarl.resume_run) or choose another folder"
        )
    mine, theirs = experiment_settings(cfg), experiment_settings(saved)
    mine.pop("total_steps"), theirs.pop("total_steps")
    if mine["precision"] == "auto":  # the earlier start saved what `auto` resolved to on this machine
        mine["precision"] = _resolved_auto_precision(cfg.device)
    for flat in (mine, theirs):  # and the number `auto` stands for on its task
        if flat.get("race.vmm_beta") == "auto":
            flat["race.vmm_beta"] = resolved_auto_vmm_beta(cfg)
    diff = [k for k in mine if mine[k] != theirs.get(k)]
    if diff:
        raise RunDirError(
            f"{path} holds the start of {what} with other settings ({', '.join(diff)}); choose another folder"
        )
    return path


def resolved_auto_vmm_beta(cfg: Config) -> float | Literal["auto"]:
    """The number `race.vmm_beta: auto` stands for on `cfg`'s task (`auto` itself when the task cannot be read
    here: the run then fails on its task, with its own message)."""
    from racemarl.config import resolve_vmm_beta
    from racemarl.envs import is_discrete_task

    try:
        discrete = is_discrete_task(
            cfg.env.task,
            agent_obsk=cfg.env.agent_obsk,
            max_episode_steps=cfg.env.max_episode_steps,
            kwargs=cfg.env.kwargs,
        )
    except Exception:
        return "auto"
    return resolve_vmm_beta("auto", discrete)


def _resolved_auto_precision(device: str) -> str:
    """What `precision: auto` resolves to for `device` here (`auto` itself when the device is not available: the
    run then fails on the device, with its own message)."""
    from racemarl.device import DeviceError, resolve_device
    from racemarl.precision import resolve_precision

    try:
        return resolve_precision("auto", resolve_device(device))
    except DeviceError:
        return "auto"


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
        steps = [v for r in self.rows if (v := r.get("env_steps")) is not None]
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
        config = from_dict(load_yaml(path / "config.yaml"), check_task=False)  # records need no environment
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


def parse_named_number(text: str, flag: str, form: str) -> tuple[str, float]:
    """``NAME=NUMBER`` (split at the last ``=``) -> (name, number), the form of `--baseline` and `--random`; a
    one-line RunDirError "`flag` must be `form`, got ..." otherwise."""
    name, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not name.strip() or not math.isfinite(number):
        raise RunDirError(f"{flag} must be {form}, got {text!r}")
    return name.strip(), number


def check_metric(runs: list[Run], metric: str) -> None:
    valid = numeric_columns(runs)
    if metric not in valid:
        known = any(metric in run.columns for run in runs)
        why = "has no values in these runs" if known else "is not a metrics.csv column"
        raise RunDirError(f"metric {metric!r} {why}; valid metrics: {', '.join(valid) or '(none: no evaluations yet)'}")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
