"""The paper's experiment grids (`racemarl sweep --preset paper-mamujoco|paper-smax`).

Each grid is tasks x algorithms x seeds; every task has its preset under `configs/paper/` (budget,
evaluation schedule, settings, each value with its source). The preset files ship inside the package
(`racemarl/configs/paper/`; `configs/` in a clone links there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from racemarl.config import PRESETS_DIR, ConfigError

PAPER_DIR = PRESETS_DIR / "paper"


@dataclass(frozen=True)
class Grid:
    name: str
    presets: dict[str, str]  # task -> preset file name under configs/paper/
    algos: tuple[str, ...]  # in the paper's order; those not in racemarl.config.ALGOS are skipped
    seeds: str
    about: str

    def preset_path(self, task: str) -> Path:
        return PAPER_DIR / self.presets[task]

    def available_algos(self) -> list[str]:
        from racemarl.config import ALGOS

        return [a for a in self.algos if a in ALGOS]


# The paper's figures do not say how many seeds each curve has; 5 is this project's choice.
PAPER_SEEDS = "1-5"

GRIDS: dict[str, Grid] = {
    "paper-mamujoco": Grid(
        name="paper-mamujoco",
        presets={
            "mamujoco/HalfCheetah-2x3": "mamujoco-halfcheetah-2x3.yaml",
            "mamujoco/HalfCheetah-6x1": "mamujoco-halfcheetah-6x1.yaml",
            "mamujoco/Hopper-3x1": "mamujoco-hopper-3x1.yaml",
            "mamujoco/Ant-2x4": "mamujoco-ant-2x4.yaml",
            "mamujoco/Ant-2x4d": "mamujoco-ant-2x4d.yaml",
            "mamujoco/Ant-4x2": "mamujoco-ant-4x2.yaml",
            "mamujoco/Humanoid-9|8": "mamujoco-humanoid-9-8.yaml",
            "mamujoco/HumanoidStandup-9|8": "mamujoco-humanoidstandup-9-8.yaml",
        },
        # Figure 2's methods: RACE, MERL, MATD3, FACMAC, EA only. MERL runs once racemarl.config.ALGOS has "merl".
        algos=("race", "merl", "matd3", "facmac", "ea"),
        seeds=PAPER_SEEDS,
        about="the eight MA-MuJoCo tasks of Figure 2, 1M env steps each",
    ),
    "paper-smax": Grid(
        name="paper-smax",
        presets={
            "smax/2s3z": "smax-2s3z.yaml",
            "smax/3s5z": "smax-3s5z.yaml",
            "smax/3s_vs_3z": "smax-3s-vs-3z.yaml",
        },
        # Figure 3's methods: RACE, MERL, FACMAC, EA only. racemarl's MERL is continuous-only (train.py refuses it on
        # discrete tasks); once it runs on SMAX, add "merl" after "race" here:
        algos=("race", "facmac", "ea"),
        seeds=PAPER_SEEDS,
        about="the paper's SMAC maps SMAX can build (Figure 3), 1M or 2M env steps each",
    ),
}


def paper_grid(name: str) -> Grid:
    """The grid called `name`; ConfigError naming the valid ones otherwise, or if its presets are missing."""
    if name not in GRIDS:
        raise ConfigError(f"--preset: unknown preset {name!r}; valid: {', '.join(GRIDS)}")
    grid = GRIDS[name]
    missing = [f for f in grid.presets.values() if not (PAPER_DIR / f).is_file()]
    if missing:
        raise ConfigError(
            f"--preset {name}: preset files {', '.join(missing)} not found in {PAPER_DIR} "
            "(an incomplete installation: reinstall racemarl)"
        )
    return grid
