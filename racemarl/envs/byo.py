"""Bring your own environment: ``pettingzoo/<module>:<factory>`` tasks, the built-in ``mpe/*`` tasks
(the cooperative MPE scenarios of ``mpe2``, continuous actions) and factories registered from a script
with `register_env`.

A factory is called with ``env.kwargs`` (``--set env.kwargs.KEY=VALUE``) and returns a PettingZoo
``ParallelEnv`` (wrapped by `PettingZooEnv`) or a racemarl `MultiAgentEnv` (used as it is).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from racemarl.envs.base import MissingDependencyError, MultiAgentEnv, UnknownTaskError

PETTINGZOO_EXTRA = "pip install 'racemarl[pettingzoo]'"

# Cooperative mpe2 scenarios (every agent shares the team's goal), task name -> mpe2 module. Left out:
# simple (one agent), collect_treasure (per-agent rewards) and the competitive ones (simple_adversary,
# simple_crypto, simple_push, simple_tag, simple_world_comm).
MPE_TASKS: dict[str, str] = {
    "simple_spread": "simple_spread_v3",
    "simple_speaker_listener": "simple_speaker_listener_v4",
    "simple_reference": "simple_reference_v3",
    "simple_formation": "simple_formation_v1",
    "simple_line": "simple_line_v1",
}
MPE_DEFAULT_EPISODE_LIMIT = 25  # mpe2's max_cycles default

_REGISTRY: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}
_TASK_RE = re.compile(r"[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+")


class BadTaskError(UnknownTaskError):
    """A pettingzoo/registered task that cannot be built; the one-line message says why and what works."""


def _missing(what: str, e: ImportError) -> MissingDependencyError:
    return MissingDependencyError(f"{what} need {e.name or 'pettingzoo'} ({e}): {PETTINGZOO_EXTRA}")


# ---------------------------------------------------------------- registration from a script


def register_env(task: str, factory: Callable[..., Any], **default_kwargs: Any) -> None:
    """Make `task` (``"<namespace>/<name>"``) build ``factory(**default_kwargs, **env.kwargs)``.

    The factory returns a PettingZoo ParallelEnv or a racemarl MultiAgentEnv. Registering a name again
    replaces it. The registration lives in this process: with ``--backend process`` register at the
    top level of your script (spawned workers import it again); Ray workers need a
    ``pettingzoo/<module>:<factory>`` task instead.
    """
    from racemarl.envs import builtin_families

    if not isinstance(task, str) or not _TASK_RE.fullmatch(task):
        raise BadTaskError(
            f"register_env: task name must look like 'namespace/name' (letters, digits, _ . -), got {task!r}"
        )
    namespace = task.split("/", 1)[0]
    if namespace in builtin_families():
        raise BadTaskError(
            f"register_env: {namespace!r} is a built-in task family; choose another namespace "
            f"(built-in: {', '.join(builtin_families())})"
        )
    if not callable(factory):
        raise BadTaskError(f"register_env: factory for {task!r} must be callable, got {type(factory).__name__}")
    _REGISTRY[task] = (factory, dict(default_kwargs))


def unregister_env(task: str) -> None:
    _REGISTRY.pop(task, None)


def registered_tasks() -> list[str]:
    return list(_REGISTRY)


def is_registered(task: str) -> bool:
    return task in _REGISTRY


# ---------------------------------------------------------------- pettingzoo/<module>:<factory>


def parse_pettingzoo(task: str, rest: str) -> tuple[str, None]:
    module, sep, attr = rest.rpartition(":")
    if not sep or not module or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", attr):
        raise BadTaskError(
            f"unknown task {task!r}: expected 'pettingzoo/<module>:<factory>' (e.g. "
            "'pettingzoo/mpe2.simple_spread_v3:parallel_env') or 'pettingzoo/<path/to/file.py>:<factory>'"
        )
    return rest, None


def _import_file(task: str, path: str):
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise BadTaskError(
            f"{task}: no such file {path!r}; expected 'pettingzoo/<path/to/file.py>:<factory>' or an importable module"
        )
    name = f"racemarl_user_env_{hashlib.sha1(str(file).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    if str(file.parent) not in sys.path:  # as when the file runs as a script: it may import its sibling files
        sys.path.append(str(file.parent))
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise BadTaskError(f"{task}: importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def _import_module(task: str, name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name != name and not name.startswith(e.name + "."):
            raise BadTaskError(f"{task}: module {name!r} needs {e.name!r}, which is not installed ({e})") from e
        raise BadTaskError(
            f"{task}: cannot import module {name!r} ({e}); 'pettingzoo/<module>:<factory>' needs a "
            "module on the Python path or a path to a .py file"
        ) from e
    except Exception as e:
        raise BadTaskError(f"{task}: importing module {name!r} failed: {type(e).__name__}: {e}") from e


def absolute_task(task: str) -> str:
    """A ``pettingzoo/<path/to/file.py>:<factory>`` task with a relative path, with the file's absolute path (as a
    run stores it, so that `eval` and `--resume` find the file from any folder); any other task as it is."""
    if not isinstance(task, str) or not task.startswith("pettingzoo/") or task in registered_tasks():
        return task
    where, sep, attr = task[len("pettingzoo/") :].rpartition(":")
    if not sep or not where.endswith(".py"):
        return task
    path = Path(where).expanduser()
    if path.is_absolute() or not path.is_file():
        return task
    return f"pettingzoo/{path.resolve()}:{attr}"


def resolve_factory(task: str, spec: str) -> Callable[..., Any]:
    """The callable named by '<module or file.py>:<attr>'."""
    where, _, attr = spec.rpartition(":")
    module = _import_file(task, where) if where.endswith(".py") else _import_module(task, where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BadTaskError(f"{task}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BadTaskError(f"{task}: {where}:{attr} is a {type(obj).__name__}, not a callable env factory")
    return obj


# ---------------------------------------------------------------- building


def build(
    task: str,
    factory: Callable[..., Any],
    kwargs: dict[str, Any],
    max_episode_steps: int | None,
    render_mode: str | None,
) -> MultiAgentEnv:
    """Call the factory and wrap a ParallelEnv in `PettingZooEnv`."""
    if render_mode is not None:
        raise ValueError(f"{task}: rendering is not supported for PettingZoo tasks (render_mode={render_mode!r})")
    try:
        import pettingzoo  # noqa: F401
    except ImportError as e:
        raise _missing("PettingZoo tasks", e) from e
    try:
        env = factory(**kwargs)
    except ImportError as e:
        raise BadTaskError(f"{task}: the env factory could not import {e.name or 'a module'} ({e}); install it") from e
    except Exception as e:
        raise BadTaskError(f"{task}: the env factory raised {type(e).__name__}: {e} (env.kwargs={kwargs})") from e
    if isinstance(env, MultiAgentEnv):
        if max_episode_steps is not None and env.spec.episode_limit != max_episode_steps:
            env.close()
            raise BadTaskError(
                f"{task}: the factory returned a MultiAgentEnv with its own time limit "
                f"({env.spec.episode_limit}); set it through env.kwargs, not env.max_episode_steps"
            )
        from racemarl.envs.base import GuardedEnv

        return GuardedEnv(env)
    from racemarl.envs.pettingzoo import IncompatibleEnvError, PettingZooEnv

    try:
        return PettingZooEnv(env, task, max_episode_steps=max_episode_steps)
    except IncompatibleEnvError as e:
        getattr(env, "close", lambda: None)()
        raise BadTaskError(str(e)) from e


def make_pettingzoo(
    task: str, spec: str, kwargs: dict[str, Any], max_episode_steps: int | None, render_mode: str | None
) -> MultiAgentEnv:
    return build(task, resolve_factory(task, spec), kwargs, max_episode_steps, render_mode)


def make_registered(
    task: str, kwargs: dict[str, Any], max_episode_steps: int | None, render_mode: str | None
) -> MultiAgentEnv:
    factory, defaults = _REGISTRY[task]
    return build(task, factory, {**defaults, **kwargs}, max_episode_steps, render_mode)


def make_mpe(
    scenario: str, kwargs: dict[str, Any], max_episode_steps: int | None, render_mode: str | None
) -> MultiAgentEnv:
    task = f"mpe/{scenario}"
    for key, instead in (
        ("continuous_actions", "pettingzoo/mpe2.<scenario>:parallel_env for discrete actions"),
        ("max_cycles", "env.max_episode_steps"),
    ):
        if key in kwargs:
            raise BadTaskError(f"{task}: env.kwargs.{key} is set by racemarl; use {instead}")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # mpe2 imports pygame, which greets on stdout
    try:
        module = importlib.import_module(f"mpe2.{MPE_TASKS[scenario]}")
    except ImportError as e:
        raise _missing("mpe/* tasks", e) from e
    limit = MPE_DEFAULT_EPISODE_LIMIT if max_episode_steps is None else int(max_episode_steps)
    return build(
        task, module.parallel_env, {**kwargs, "continuous_actions": True, "max_cycles": limit}, limit, render_mode
    )
