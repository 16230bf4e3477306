"""Multi-agent environments behind one interface, created from task names.

Task names look like ``<family>/<Scenario>[-<partition>]``, e.g. ``mamujoco/HalfCheetah-6x1`` or
``mamujoco/Hopper`` (single agent controlling the whole robot), ``smax/3m`` (JaxMARL's SMAX, JAX
StarCraft-like maps), ``smac/3m`` (the real SMAC on StarCraft II), ``mpe/simple_spread`` (mpe2's
cooperative particle tasks), ``pettingzoo/<module>:<factory>`` (any cooperative PettingZoo
ParallelEnv) or a name registered with `register_env`. Simulator packages are imported only by
`make_env`, so this module imports without them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from racemarl.envs.base import EnvSpec, MissingDependencyError, MultiAgentEnv, StepResult, UnknownTaskError
from racemarl.envs.byo import (
    MPE_TASKS,
    BadTaskError,
    is_registered,
    make_mpe,
    make_pettingzoo,
    make_registered,
    parse_pettingzoo,
    register_env,
    registered_tasks,
    unregister_env,
)
from racemarl.envs.mamujoco import (
    MAMUJOCO_PARTITIONS,
    mamujoco_config_error,
    mamujoco_task_name,
)
from racemarl.envs.smac import SMAC_MAPS, smac_config_error, smac_task_name
from racemarl.envs.smax_maps import smax_config_error, smax_map_names, smax_task_name

__all__ = [
    "EnvSpec",
    "StepResult",
    "MultiAgentEnv",
    "UnknownTaskError",
    "MissingDependencyError",
    "list_tasks",
    "parse_task",
    "make_env",
    "register_env",
    "unregister_env",
    "is_discrete_task",
    "BadTaskError",
]


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
    kwargs: dict[str, Any],
) -> MultiAgentEnv:
    _no_kwargs(f"mamujoco/{scenario}" + (f"-{partition}" if partition else ""), kwargs)
    from racemarl.envs.mamujoco import _import_mamujoco

    try:
        import mujoco  # noqa: F401

        _import_mamujoco()  # imports gymnasium_robotics without its unrelated stderr notice
    except ImportError as e:
        raise MissingDependencyError(
            f"MaMuJoCo tasks need gymnasium-robotics and mujoco ({e}): pip install 'racemarl[mamujoco]'"
        ) from e
    except Exception as e:  # mujoco loads the GL backend MUJOCO_GL names at import: a bad value or missing library
        gl = os.environ.get("MUJOCO_GL")
        if gl is None:
            raise
        why = " ".join(f"{type(e).__name__}: {e}".split())[:160]
        raise MissingDependencyError(
            f"mujoco cannot load with MUJOCO_GL={gl} ({why}); unset MUJOCO_GL (training needs no rendering) or "
            f"name a backend that works here: egl, or osmesa (apt-get install -y libosmesa6)"
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


def _map_family(
    maps, task_name, config_error
) -> tuple[Callable[[], list[str]], Callable[[str, str], tuple[str, None]]]:
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
    kwargs: dict[str, Any],
) -> MultiAgentEnv:
    del partition, agent_obsk  # SMAX maps have no partitions; agent_obsk is a MaMuJoCo option
    _no_kwargs(f"smax/{map_name}", kwargs)
    if render_mode is not None:
        raise ValueError(f"smax/{map_name}: rendering is not supported (render_mode={render_mode!r})")
    try:
        import jax  # noqa: F401

        from racemarl.envs.smax_core import _import_smax

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
    kwargs: dict[str, Any],
) -> MultiAgentEnv:
    del partition, agent_obsk
    _no_kwargs(f"smac/{map_name}", kwargs)
    if render_mode is not None:
        raise ValueError(f"smac/{map_name}: render_mode is not supported (SMAC saves replays instead)")
    from racemarl.envs.smac import SmacEnv, import_starcraft2env

    try:
        factory = import_starcraft2env()
    except ImportError as e:
        raise MissingDependencyError(str(e)) from e
    return SmacEnv(map_name, max_episode_steps=max_episode_steps, env_factory=factory)


def _no_kwargs(task: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise BadTaskError(
            f"{task}: env.kwargs ({', '.join(kwargs)}) are only for mpe/*, pettingzoo/* and registered "
            "tasks; this family takes its settings from env.* keys"
        )


# ---------------------------------------------------------------- families: mpe (mpe2), pettingzoo (any ParallelEnv)


def _parse_mpe(task: str, rest: str) -> tuple[str, None]:
    if rest not in MPE_TASKS:
        raise UnknownTaskError(
            f"unknown task {task!r}: valid mpe tasks: {', '.join(f'mpe/{t}' for t in MPE_TASKS)} "
            "(others: pettingzoo/mpe2.<module>:parallel_env)"
        )
    return rest, None


def _make_mpe(
    scenario: str,
    partition: str | None,
    *,
    agent_obsk: int,
    max_episode_steps: int | None,
    render_mode: str | None,
    kwargs: dict[str, Any],
) -> MultiAgentEnv:
    return make_mpe(scenario, kwargs, max_episode_steps, render_mode)


def _make_pettingzoo(
    spec: str,
    partition: str | None,
    *,
    agent_obsk: int,
    max_episode_steps: int | None,
    render_mode: str | None,
    kwargs: dict[str, Any],
) -> MultiAgentEnv:
    return make_pettingzoo(f"pettingzoo/{spec}", spec, kwargs, max_episode_steps, render_mode)


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
        self.make = make  # (scenario, partition, *, agent_obsk, max_episode_steps, render_mode, kwargs)


_FAMILIES: dict[str, _Family] = {
    "mamujoco": _Family(_list_mamujoco, _parse_mamujoco, _make_mamujoco),
    "smax": _Family(*_map_family(smax_map_names(), smax_task_name, smax_config_error), _make_smax),
    "smac": _Family(*_map_family(SMAC_MAPS, smac_task_name, smac_config_error), _make_smac),
    "mpe": _Family(lambda: [f"mpe/{t}" for t in MPE_TASKS], _parse_mpe, _make_mpe),
    # any module's factory: nothing to list
    "pettingzoo": _Family(lambda: [], parse_pettingzoo, _make_pettingzoo),
}
_DISCRETE = {"smax": True, "smac": True, "mamujoco": False, "mpe": False}  # the others: from the env's spec


def builtin_families() -> tuple[str, ...]:
    return tuple(_FAMILIES)


# ---------------------------------------------------------------- public API


def list_tasks() -> list[str]:
    """Every listed task name, e.g. "mamujoco/HalfCheetah-6x1", "smax/3m", "smac/3m", "mpe/simple_spread", and
    the registered ones (any "pettingzoo/<module>:<factory>" is valid too, but not listed)."""
    return [name for fam in _FAMILIES.values() for name in fam.list_tasks()] + registered_tasks()


def parse_task(task: str) -> tuple[str, str, str | None]:
    """Split and validate a task name into (family, scenario, partition); partition None = single agent."""
    if not isinstance(task, str):
        raise UnknownTaskError(f"task must be a string like 'mamujoco/HalfCheetah-6x1', got {task!r}")
    family, sep, rest = task.partition("/")
    if registered(task):
        return family, rest, None
    if not sep or family not in _FAMILIES:
        extra = f"; registered: {', '.join(registered_tasks())}" if registered_tasks() else ""
        raise UnknownTaskError(
            f"unknown task {task!r}: expected '<family>/<Scenario>[-<partition>]' with family one of: "
            f"{', '.join(_FAMILIES)} (e.g. 'mamujoco/HalfCheetah-6x1'), or a name registered with "
            f"racemarl.envs.register_env{extra}"
        )
    scenario, partition = _FAMILIES[family].parse(task, rest)
    return family, scenario, partition


def make_env(
    task: str,
    *,
    agent_obsk: int = 0,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> MultiAgentEnv:
    """Build the environment for `task`.

    Args:
        task: a name from `list_tasks()` (MaMuJoCo also accepts any "ManySegment*-NxM").
        agent_obsk: MaMuJoCo observation depth (joints away each agent observes); ignored by the
            other families.
        max_episode_steps: time limit; None = the task's default (1000 for MaMuJoCo, 100 for SMAX,
            the map's episode limit for SMAC, which cannot be exceeded).
        render_mode: e.g. "rgb_array" (MaMuJoCo only; the other families raise ValueError).
        kwargs: keyword arguments of the env factory (mpe/*, pettingzoo/* and registered tasks only).

    Raises:
        UnknownTaskError: the task name is not valid.
        MissingDependencyError: the simulator for the task's family is not installed.
        BadTaskError: a pettingzoo/registered task whose module, factory or env cannot be used.
    """
    kwargs = dict(kwargs or {})
    if registered(task):
        return make_registered(task, kwargs, max_episode_steps, render_mode)
    family, scenario, partition = parse_task(task)
    return _FAMILIES[family].make(
        scenario,
        partition,
        agent_obsk=agent_obsk,
        max_episode_steps=max_episode_steps,
        render_mode=render_mode,
        kwargs=kwargs,
    )


def registered(task: str) -> bool:
    """Whether `task` was registered with `register_env`."""
    return isinstance(task, str) and is_registered(task)


def is_discrete_task(task: str, **make_kwargs: Any) -> bool:
    """Whether `task` has discrete actions. Families of one kind answer from the name; for pettingzoo/*
    and registered tasks the env is built (with `make_env(task, **make_kwargs)`) and its spec read."""
    family = parse_task(task)[0]
    if family in _DISCRETE and not registered(task):
        return _DISCRETE[family]
    env = make_env(task, **make_kwargs)
    try:
        return env.spec.discrete
    finally:
        env.close()
