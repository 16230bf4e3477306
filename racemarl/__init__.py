"""racemarl: RACE (ICML 2023), evolutionary algorithms + multi-agent RL with shared encoders.

The Python API (see `racemarl.api` and docs/reference/api.md): `make_config`, `train_run`, `resume_run`, `evaluate_run`,
`load_metrics`, `load_run`, `random_policy`, and the errors they raise. They are imported on first use,
so `import racemarl` (and the command line) stays fast.
"""

__version__ = "0.1.0"

_API = ("make_config", "train_run", "resume_run", "evaluate_run", "load_metrics", "load_run", "random_policy")
_ERRORS = {
    "ConfigError": "racemarl.config",
    "RunDirError": "racemarl.records.runs",
    "CheckpointError": "racemarl.records.runs",
    "RunError": "racemarl.train",
    "TrainingInterrupted": "racemarl.train",
    "Config": "racemarl.config",
}
__all__ = ["__version__", *_API, *_ERRORS]


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module("racemarl.api"), name)
    if name in _ERRORS:
        return getattr(importlib.import_module(_ERRORS[name]), name)
    raise AttributeError(f"module 'racemarl' has no attribute {name!r}")
