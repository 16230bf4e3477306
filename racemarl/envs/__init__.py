"""Multi-agent environments behind one interface, created from task names.

Task names look like ``<family>/<Scenario>[-<partition>]``, e.g. ``mamujoco/HalfCheetah-6x1`` or
``mamujoco/Hopper`` (single agent controlling the whole robot), ``smax/3m`` (JaxMARL's SMAX, JAX
StarCraft-like maps) or ``smac/3m`` (the real SMAC on StarCraft II). Simulator packages are imported
only by `make_env`, so this module imports without them.
"""
from __future__ import annotations

from collections.abc import Callable

from racemarl.envs.base import EnvSpec, MultiAgentEnv, StepResult
from racemarl.envs.mamujoco import (
    MAMUJOCO_PARTITIONS,
    mamujoco_config_error,
    mamujoco_task_name,
)
from racemarl.envs.smac import SMAC_MAPS, smac_config_error, smac_task_name
from racemarl.envs.smax import SMAX_MAPS, smax_config_error, smax_task_name

__all__ = [
    "EnvSpec",
    "StepResult",
    "MultiAgentEnv",
    "UnknownTaskError",
    "MissingDependencyError",
    "list_tasks",
    "parse_task",
    "make_env",
]


class UnknownTaskError(ValueError):
    """A task name that names no known task; the message (one line) lists the valid choices."""


class MissingDependencyError(ImportError):
    """The simulator package a task family needs is not installed; the message names the pip extra."""


# ---------------------------------------------------------------- family: mamujoco


def _list_mamujoco() -> list[str]:
    return [mamujoco_task_name(s, p) for s, parts in MAMUJOCO_PARTITIONS.items() for p in parts]


def _parse_mamujoco(task: str, rest: str) -> tuple[str, str | None]:
    scenario, sep, partition = rest.partition("-")
    error = mamujoco_config_error(scenario, partition if sep else None)
    if error is not None:
        raise UnknownTaskError(f"unknown task {task!r}: {error}")
    return scenario, (partition if sep else None)


def _make_mamujoco(
    scenario: str,
    partition: str | None,
    *,
    agent_obsk: int,
    max_episode_steps: int | None,
    render_mode: str | None,
) -> MultiAgentEnv:
    from racemarl.envs.mamujoco import _import_mamujoco

    try:
        import mujoco  # noqa: F401

        _import_mamujoco()  # imports gymnasium_robotics without its unrelated stderr notice
    except ImportError as e:
        raise MissingDependencyError(
            f"MaMuJoCo tasks need gymnasium-robotics and mujoco ({e}): pip install 'racemarl[mamujoco]'"
        ) from e
    from racemarl.envs.mamujoco import MaMuJoCoEnv

    return MaMuJoCoEnv(
        scenario,
        partition,
        agent_obsk=agent_obsk,
        max_episode_steps=1000 if max_episode_steps is None else max_episode_steps,
        render_mode=render_mode,
    )


# ---------------------------------------------------------------- family: smax (JaxMARL)


def _map_family(maps, task_name, config_error) -> tuple:
    """`list` and `parse` functions of a family of named maps (SMAX, SMAC): `<family>/<map>`, no partition."""

    def list_maps() -> list[str]:
        return [task_name(m) for m in maps]

    def parse(task: str, rest: str) -> tuple[str, None]:
        error = config_error(rest)
        if error is not None:
            raise UnknownTaskError(f"unknown task {task!r}: {error}")
        return rest, None

    return list_maps, parse


def _make_smax(
    map_name: str,
    partition: str | None,
    *,
    agent_obsk: int,
    max_episode_steps: int | None,
    render_mode: str | None,
) -> MultiAgentEnv:
    del partition, agent_obsk  # SMAX maps have no partitions; agent_obsk is a MaMuJoCo option
    if render_mode is not None:
        raise ValueError(f"smax/{map_name}: rendering is not supported (render_mode={render_mode!r})")
    try:
        import jax  # noqa: F401

        from racemarl.envs.smax import _import_smax

        _import_smax()
    except ImportError as e:
        raise MissingDependencyError(f"SMAX tasks need jaxmarl ({e}): pip install 'racemarl[smax]'") from e
    from racemarl.envs.smax import SmaxEnv

    return SmaxEnv(map_name, max_episode_steps=max_episode_steps)


# ---------------------------------------------------------------- family: smac (StarCraft II)


def _make_smac(
    map_name: str,
    partition: str | None,
    *,
    agent_obsk: int,
    max_episode_steps: int | None,
    render_mode: str | None,
) -> MultiAgentEnv:
    del partition, agent_obsk
    if render_mode is not None:
        raise ValueError(f"smac/{map_name}: render_mode is not supported (SMAC saves replays instead)")
    from racemarl.envs.smac import SmacEnv, import_starcraft2env

    try:
        factory = import_starcraft2env()
    except ImportError as e:
        raise MissingDependencyError(str(e)) from e
    return SmacEnv(map_name, max_episode_steps=max_episode_steps, env_factory=factory)


class _Family:
    """How to list, parse and build the tasks of one family (e.g. "mamujoco")."""

    def __init__(
        self,
        list_tasks: Callable[[], list[str]],
        parse: Callable[[str, str], tuple[str, str | None]],
        make: Callable[..., MultiAgentEnv],
    ) -> None:
        self.list_tasks = list_tasks
        self.parse = parse  # (full task name, text after "<family>/") -> (scenario, partition)
        self.make = make  # (scenario, partition, *, agent_obsk, max_episode_steps, render_mode)


_FAMILIES: dict[str, _Family] = {
    "mamujoco": _Family(_list_mamujoco, _parse_mamujoco, _make_mamujoco),
    "smax": _Family(*_map_family(SMAX_MAPS, smax_task_name, smax_config_error), _make_smax),
    "smac": _Family(*_map_family(SMAC_MAPS, smac_task_name, smac_config_error), _make_smac),
}


# ---------------------------------------------------------------- public API


def list_tasks() -> list[str]:
    """Every valid task name, e.g. "mamujoco/HalfCheetah-6x1", "mamujoco/HalfCheetah", "smax/3m", "smac/3m"."""
    return [name for fam in _FAMILIES.values() for name in fam.list_tasks()]


def parse_task(task: str) -> tuple[str, str, str | None]:
    """Split and validate a task name into (family, scenario, partition); partition None = single agent."""
    if not isinstance(task, str):
        raise UnknownTaskError(f"task must be a string like 'mamujoco/HalfCheetah-6x1', got {task!r}")
    family, sep, rest = task.partition("/")
    if not sep or family not in _FAMILIES:
        raise UnknownTaskError(
            f"unknown task {task!r}: expected '<family>/<Scenario>[-<partition>]' with family one of: "
            f"{', '.join(_FAMILIES)} (e.g. 'mamujoco/HalfCheetah-6x1')"
        )
    scenario, partition = _FAMILIES[family].parse(task, rest)
    return family, scenario, partition


def make_env(
    task: str,
    *,
    agent_obsk: int = 0,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
) -> MultiAgentEnv:
    """Build the environment for `task`.

    Args:
        task: a name from `list_tasks()` (MaMuJoCo also accepts any "ManySegment*-NxM").
        agent_obsk: MaMuJoCo observation depth (joints away each agent observes); ignored by the
            other families.
        max_episode_steps: time limit; None = the task's default (1000 for MaMuJoCo, 100 for SMAX,
            the map's episode limit for SMAC, which cannot be exceeded).
        render_mode: e.g. "rgb_array" (MaMuJoCo only; SMAX and SMAC raise ValueError).

    Raises:
        UnknownTaskError: the task name is not valid.
        MissingDependencyError: the simulator for the task's family is not installed.
    """
    family, scenario, partition = parse_task(task)
    return _FAMILIES[family].make(
        scenario,
        partition,
        agent_obsk=agent_obsk,
        max_episode_steps=max_episode_steps,
        render_mode=render_mode,
    )
