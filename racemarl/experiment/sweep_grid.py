"""The grid of a sweep: which (task, algo, seed) points it runs, with which presets, overrides and budgets
(`SweepSpec`), and how a point's run folder is named. Running the grid is `sweep.py`'s."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from racemarl.config import ALGOS, ConfigError, build_config, load_yaml


def parse_seeds(text: str) -> list[int]:
    """'1-5' -> [1, 2, 3, 4, 5]; '1,3,7' -> [1, 3, 7]; '1-3,9' works too."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part) if "-" in part.lstrip("-") else None
        try:
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise ValueError
                seeds += range(lo, hi + 1)
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(f"--seeds: cannot read {part!r}; use a range like 1-5 or a list like 1,3,7") from None
    if not seeds:
        raise ConfigError("--seeds: no seeds given")
    return list(dict.fromkeys(seeds))


def parse_names(text: str, what: str) -> list[str]:
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--{what}: nothing given")
    return list(dict.fromkeys(names))


def run_name(task: str, algo: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', task)}__{algo}__s{seed}"


@dataclass(frozen=True)
class Point:
    task: str
    algo: str
    seed: int

    @property
    def name(self) -> str:
        return run_name(self.task, self.algo, self.seed)

    def label(self) -> str:
        return f"{self.algo} {self.task} seed {self.seed}"


@dataclass
class SweepSpec:
    tasks: list[str]
    algos: list[str]
    seeds: list[int]
    total_steps: int | None
    """Env steps of each run; None = each task's preset's `total_steps` (needs `task_configs`)."""
    sets: list[str]
    config: str | None = None
    eval_interval: int | None = None
    eval_episodes: int | None = None
    task_configs: dict[str, str] = field(default_factory=dict)
    """A preset per task (instead of `config`), e.g. the paper grids of `racemarl.experiment.presets`."""
    preset: str | None = None
    """The name of the grid `task_configs` come from (recorded instead of them, so a restart may change the grid)."""

    def points(self) -> list[Point]:
        return [Point(t, a, s) for t in self.tasks for a in self.algos for s in self.seeds]

    def config_for(self, task: str) -> str | None:
        return self.task_configs.get(task, self.config)

    def steps_for(self, task: str) -> int:
        if self.total_steps is not None:
            return self.total_steps
        preset = self.config_for(task)
        steps = load_yaml(preset).get("total_steps") if preset else None
        if not isinstance(steps, int) or steps <= 0:
            raise ConfigError(f"--total-steps is required: {task} has no preset with a total_steps")
        return steps

    def folder_config(self) -> dict:
        """What every run of the folder shares (the budget and the grid may change between restarts)."""
        out: dict[str, Any] = {
            "config": None if self.config is None else str(Path(self.config).resolve()),
            "set": list(self.sets),
            "eval_interval": self.eval_interval,
            "eval_episodes": self.eval_episodes,
        }
        if self.preset:
            out["preset"] = self.preset
        elif self.task_configs:
            out["task_configs"] = {t: str(Path(c).resolve()) for t, c in self.task_configs.items()}
        return out

    def validate(self) -> None:
        from racemarl.envs import parse_task

        if self.total_steps is not None and self.total_steps <= 0:
            raise ConfigError("--total-steps must be positive")
        for task in self.tasks:
            self.steps_for(task)
        for algo in self.algos:
            if algo not in ALGOS:
                raise ConfigError(f"--algos: unknown algo {algo!r}; valid: {', '.join(ALGOS)}")
        for task in self.tasks:
            parse_task(task)  # UnknownTaskError names the valid tasks
        for p in self.points():  # the overrides must make a valid config for every grid point
            build_config(
                self.config_for(p.task),
                self.sets,
                algo=p.algo,
                seed=p.seed,
                total_steps=self.steps_for(p.task),
                eval_interval=self.eval_interval,
                eval_episodes=self.eval_episodes,
                env={"task": p.task},
            )
