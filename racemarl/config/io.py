"""Reading and writing the config: the valid keys, `--set dotted.key=value` overrides with type coercion, dicts
and YAML files, the defaults of runs written before a key existed (`LEGACY_DEFAULTS`), and `build_config`."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from racemarl.config.schema import Config, ConfigError, _field_types, valid_keys

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The presets shipped inside the package (`configs/` in a clone is a link to it)."""


def shipped_presets() -> list[str]:
    """Names of the shipped presets, e.g. ``demo`` or ``paper/mamujoco-hopper-3x1``."""
    return sorted(p.relative_to(PRESETS_DIR).with_suffix("").as_posix() for p in PRESETS_DIR.rglob("*.yaml"))


def resolve_preset(path: str | Path) -> Path:
    """`path` itself if it exists, else the shipped preset it names: ``paper/mamujoco-hopper-3x1``, with or
    without ``.yaml``, or a clone's path ``configs/...`` (so the README's commands work from any folder and from
    an installed package). Unchanged if none exists: the caller reports it."""
    given = Path(path)
    if given.exists():
        return given
    name = given.as_posix().removeprefix("configs/")
    for candidate in (PRESETS_DIR / name, PRESETS_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return given


def _type_name(tp: Any) -> str:
    """How an error names one option of a union: `float`, `null`, `'auto'`."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp`, allowing int -> float."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not {' or '.join(_type_name(o) for o in typing.get_args(tp))}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, key) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _mapping_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Dotted keys of the mapping-valued fields (e.g. `env.kwargs`), whose entries `--set` may set one by one."""
    keys = []
    for name, tp in _field_types(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            keys += _mapping_keys(tp, f"{prefix}{name}.")
        elif typing.get_origin(tp) is dict:
            keys.append(prefix + name)
    return keys


def _is_mapping_entry(key: str) -> bool:
    """`env.kwargs.N`: one entry of a mapping-valued field."""
    return any(key.startswith(m + ".") and len(key) > len(m) + 1 for m in _mapping_keys())


def _unknown_key(key: str) -> ConfigError:
    return ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(valid_keys())}")


def apply_dict(obj: Any, data: dict, prefix: str = "") -> None:
    """Merge a nested dict (e.g. a YAML preset) into a config object, validating every key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    types_ = _field_types(type(obj))
    for name, value in data.items():
        key = prefix + str(name)
        if name not in types_:
            raise _unknown_key(key)
        tp = types_[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            apply_dict(getattr(obj, name), value, key + ".")
        elif typing.get_origin(tp) is dict:  # mappings merge: `--set env.kwargs.A=1 --set env.kwargs.B=2`
            setattr(obj, name, {**getattr(obj, name), **_coerce(value, tp, key)})
        else:
            setattr(obj, name, _coerce(value, tp, key))


def apply_override(cfg: Config, assignment: str) -> None:
    """Apply one `dotted.key=value` override; the value is parsed as YAML (so 1e-3, true, [1,2] work)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if key not in valid_keys() and not _is_mapping_entry(key):
        raise _unknown_key(key)
    apply_key(cfg, key, yaml.safe_load(raw) if raw.strip() else "")


def apply_key(cfg: Config, key: str, value: Any) -> None:
    """Set one dotted key (`learner.batch_size`, or an entry of a mapping such as `env.kwargs.continuous`) to an
    already parsed value, validating it."""
    key = str(key).strip()
    if key not in valid_keys() and not _is_mapping_entry(key):
        raise _unknown_key(key)
    nested: dict = {}
    cursor = nested
    mapping = next((m for m in _mapping_keys() if key.startswith(m + ".")), None)
    parts = key.split(".") if mapping is None else [*mapping.split("."), key[len(mapping) + 1 :]]
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    apply_dict(cfg, nested)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# Keys added after racemarl 0.1, with the value that reproduces a 0.1 run. A saved config (a run's
# config.yaml or checkpoint) without one of them was made before it existed: it gets this value, not the
# new default, so old runs resume, evaluate and load exactly as they were trained.
LEGACY_DEFAULTS: dict[str, Any] = {
    "net.critic_layer_norm": False,
    "learner.grad_clip": 0.0,
    "race.mutate_bias": True,
    "race.parents_survive": False,
    "race.play_during_warmup": True,
    "race.champion_eval": "updated",
    "race.evolve_before_learning": False,
    "race.pevfa_target_encoder": "target",
    "race.pevfa_target_smoothing": True,
    "race.fitness_mc_prob": 1.0,
    "learner.marl_head_init_scale": 1.0,
    "discrete.vmm_time_reduction": "mean",
    "net.fast_tanh": False,
    "precision": "fp32",
    "race.pevfa_twin_embeddings": False,
    "discrete.pevfa_target_encoder": "target",
    "discrete.value_target": "one_step",
}


def _has_key(data: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def from_dict(data: dict, check_task: bool = True) -> Config:
    """A saved config: keys it lacks take their `LEGACY_DEFAULTS` value if they have one, else the default.
    `check_task=False`: the task need not be one this process can build (reading a run's records)."""
    cfg = Config()
    legacy = [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in LEGACY_DEFAULTS.items()
        if not _has_key(data, k)
    ]
    for assignment in legacy:
        apply_override(cfg, assignment)
    apply_dict(cfg, data)
    return cfg.validate(check_task)


def load_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a YAML file") from None
    except (PermissionError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"config file {path} cannot be read ({type(e).__name__})") from None
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())  # one line
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not a {type(data).__name__}")
    return data


# Settings of one session, not of the experiment: never written to config.yaml, ignored when runs are compared.
SESSION_KEYS = ("progress",)


def save_yaml(cfg: Config, path: str | Path) -> None:
    data = {k: v for k, v in to_dict(cfg).items() if k not in SESSION_KEYS}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def build_config(preset: str | Path | None = None, overrides: Sequence[str] = (), **top_level: Any) -> Config:
    """Defaults <- preset YAML (a file or a shipped preset's name) <- explicit top-level values (CLI flags) <-
    --set overrides."""
    cfg = Config()
    if preset is not None:
        apply_dict(cfg, load_yaml(resolve_preset(preset)))
    apply_dict(cfg, {k: v for k, v in top_level.items() if v is not None})
    for assignment in overrides:
        apply_override(cfg, assignment)
    return cfg.validate()
