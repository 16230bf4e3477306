"""Typed, validated run configuration.

One `Config` holds everything a run needs. It is built from defaults, then an optional YAML preset,
then `--set dotted.key=value` overrides; unknown keys and wrong types are errors that name the valid
keys. The resolved config is written to every run directory as `config.yaml`.

The schema (the dataclasses and their validation) is in `schema.py`; dicts, YAML and overrides in `io.py`.
"""

from racemarl.config.io import (
    LEGACY_DEFAULTS,
    PRESETS_DIR,
    SESSION_KEYS,
    _unknown_key,
    apply_dict,
    apply_override,
    build_config,
    from_dict,
    load_yaml,
    resolve_preset,
    save_yaml,
    shipped_presets,
    to_dict,
)
from racemarl.config.schema import (
    ALGOS,
    MAX_SEED,
    ROLLOUT_BACKENDS,
    Config,
    ConfigError,
    DiscreteConfig,
    EnvConfig,
    LearnerConfig,
    LoggingConfig,
    NetConfig,
    RaceConfig,
    RolloutConfig,
    check_ranges,
    resolve_vmm_beta,
    valid_keys,
)

__all__ = [
    "ALGOS",
    "LEGACY_DEFAULTS",
    "MAX_SEED",
    "PRESETS_DIR",
    "ROLLOUT_BACKENDS",
    "SESSION_KEYS",
    "Config",
    "ConfigError",
    "DiscreteConfig",
    "EnvConfig",
    "LearnerConfig",
    "LoggingConfig",
    "NetConfig",
    "RaceConfig",
    "RolloutConfig",
    "apply_dict",
    "apply_override",
    "build_config",
    "check_ranges",
    "resolve_vmm_beta",
    "from_dict",
    "load_yaml",
    "resolve_preset",
    "save_yaml",
    "shipped_presets",
    "to_dict",
    "valid_keys",
    "_unknown_key",
]
