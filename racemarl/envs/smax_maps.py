"""SMAX map names: the maps JaxMARL's SMAX lists, SMAC-style unit mixes it can build, the paper's maps it cannot,
and the scenario of each (jax is imported only by `_scenario`, when an environment is built)."""

from __future__ import annotations

import re
from typing import Any

from racemarl.envs.base import unknown_map_error

# Every map JaxMARL's SMAX offers (jaxmarl 0.2: `smax_env.MAP_NAME_TO_SCENARIO`). The smacv2_* maps
# draw unit types and start positions at random each episode (SMACv2 style).
SMAX_MAPS: tuple[str, ...] = (
    "3m",
    "8m",
    "25m",
    "5m_vs_6m",
    "10m_vs_11m",
    "27m_vs_30m",
    "2s3z",
    "3s5z",
    "3s5z_vs_3s6z",
    "3s_vs_5z",
    "6h_vs_8z",
    "smacv2_5_units",
    "smacv2_10_units",
    "smacv2_20_units",
)

# Unit mixes: SMAX builds any mix of its six unit types. A map name in SMAC's style, "<allies>_vs_<enemies>"
# or "<units>" (the same units on both sides), each side a sequence of <count><unit>, e.g. 3s_vs_3z,
# 2s3z, 1M2m_vs_4zg. Unit letters follow SMAC's map names; the numbers are SMAX's unit type indices
# (jaxmarl 0.2 `SMAX.unit_type_names`: marine, marauder, stalker, zealot, zergling, hydralisk).
SMAX_UNITS: dict[str, tuple[int, str]] = {
    "m": (0, "marine"),
    "M": (1, "marauder"),
    "s": (2, "stalker"),
    "z": (3, "zealot"),
    "zg": (4, "zergling"),
    "h": (5, "hydralisk"),
}
# The paper's SMAC maps that SMAX can build but does not list itself.
SMAX_EXTRA_MAPS: tuple[str, ...] = ("3s_vs_3z",)
# The paper's SMAC maps SMAX cannot build, and the units it lacks.
SMAX_UNBUILDABLE_PAPER_MAPS: dict[str, str] = {
    "2s_vs_1sc": "spine crawler",
    "2c_vs_64zg": "colossus",
    "MMM": "medivac",
    "MMM2": "medivac",
    "so_many_baneling": "baneling",
}
_SIDE_TOKEN = re.compile(r"(\d+)(zg|[mMszh])")

SMAX_DEFAULT_EPISODE_LIMIT = 100  # SMAX(max_steps=100), the same for every map

# HeuristicEnemySMAX settings JaxMARL's SMAX baselines use (baselines/*/config/*smax*.yaml).
SMAX_BASELINE_KWARGS: dict[str, Any] = {
    "see_enemy_actions": True,
    "walls_cause_death": True,
    "attack_mode": "closest",
}


def smax_task_name(map_name: str) -> str:
    return f"smax/{map_name}"


def _parse_side(text: str) -> list[int] | None:
    """'2s3z' -> SMAX unit types [2, 2, 3, 3, 3]; None if `text` is not a sequence of <count><unit>."""
    units, end = [], 0
    for m in _SIDE_TOKEN.finditer(text):
        if m.start() != end or int(m.group(1)) < 1:
            return None
        units += [SMAX_UNITS[m.group(2)][0]] * int(m.group(1))
        end = m.end()
    return units if units and end == len(text) else None


def parse_unit_mix(map_name: str) -> tuple[list[int], list[int]] | None:
    """(ally unit types, enemy unit types) of a unit-mix map name like '3s_vs_3z' or '2s3z'; None if it is not one."""
    allies_text, sep, enemies_text = map_name.partition("_vs_")
    allies = _parse_side(allies_text)
    enemies = _parse_side(enemies_text) if sep else allies
    if allies is None or enemies is None:
        return None
    return allies, enemies


def smax_map_names() -> tuple[str, ...]:
    """The listed SMAX maps: SMAX's own and the paper's maps built from unit mixes."""
    return SMAX_MAPS + SMAX_EXTRA_MAPS


def smax_config_error(map_name: str) -> str | None:
    """A one-line explanation of why `map_name` is not a SMAX map, or None if it is."""
    if map_name in SMAX_MAPS or parse_unit_mix(map_name) is not None:
        return None
    units = ", ".join(f"{k}={name}" for k, (_, name) in SMAX_UNITS.items())
    why = ""
    if map_name in SMAX_UNBUILDABLE_PAPER_MAPS:
        why = f" (SMAX has no {SMAX_UNBUILDABLE_PAPER_MAPS[map_name]} units; use smac/{map_name} with StarCraft II)"
    return (
        str(unknown_map_error("SMAX", "smax", smax_map_names(), map_name))
        + why
        + f"; or a unit mix '<allies>_vs_<enemies>' / '<units>' of <count><unit> with units {units} "
        "(e.g. smax/3s_vs_3z, smax/1M2m_vs_4zg)"
    )


def _scenario(smax, map_name: str):
    """SMAX's scenario for a map it lists, else the one of a unit mix."""
    if map_name in SMAX_MAPS:
        return smax.map_name_to_scenario(map_name)
    import jax.numpy as jnp
    from jaxmarl.environments.smax.smax_env import Scenario

    mix = parse_unit_mix(map_name)
    assert mix is not None  # the task name was checked
    allies, enemies = mix
    return Scenario(
        unit_types=jnp.array(allies + enemies, dtype=jnp.uint8),
        num_allies=len(allies),
        num_enemies=len(enemies),
        smacv2_position_generation=False,
        smacv2_unit_type_generation=False,
    )
