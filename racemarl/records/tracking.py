"""Optional experiment trackers: every metrics.csv row also goes to Weights & Biases and/or MLflow.

Off by default (config section `logging`); the packages are imported only when switched on, and a
missing package is a one-line error naming the pip extra.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from racemarl.config import ConfigError, LoggingConfig, apply_dict

TRACKING_IDS = "tracking.json"  # run ids of the trackers, so that a resumed run logs into the same run
TRACKING_EXTRA = "pip install 'racemarl[tracking]'"


class TrackingError(ConfigError):
    """A tracker is switched on but cannot be used (package missing)."""


def _logging_config_of(run_dir: Path) -> tuple[LoggingConfig, dict]:
    """The `logging` section of RUN_DIR/config.yaml (defaults if absent) and the whole config as a dict."""
    import yaml

    cfg = LoggingConfig()
    data: dict = {}
    path = run_dir / "config.yaml"
    if path.is_file():
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data.get("logging"), dict):
            apply_dict(cfg, data["logging"], "logging.")
    return cfg, data


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _load_ids(run_dir: Path) -> dict:
    path = run_dir / TRACKING_IDS
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _save_id(run_dir: Path, key: str, value: str) -> None:
    ids = _load_ids(run_dir)
    ids[key] = value
    (run_dir / TRACKING_IDS).write_text(json.dumps(ids, indent=2) + "\n")


class WandbTracker:
    name = "W&B"

    def __init__(self, run_dir: Path, cfg: LoggingConfig, config: dict, resumed: bool):
        try:
            import wandb
        except ImportError as e:
            raise TrackingError(f"logging.wandb is on but wandb is not installed ({e}): {TRACKING_EXTRA}") from e
        run_id = _load_ids(run_dir).get("wandb")
        if run_id is None:
            import uuid

            run_id = uuid.uuid4().hex[:12]
            _save_id(run_dir, "wandb", run_id)
        settings = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False)
        self.run = wandb.init(
            project=cfg.project,
            dir=str(run_dir),
            name=run_dir.name,
            id=run_id,
            resume="allow",
            mode=cfg.mode,
            config=config,
            settings=settings,
        )

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    name = "MLflow"

    def __init__(self, run_dir: Path, cfg: LoggingConfig, config: dict, resumed: bool):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise TrackingError(f"logging.mlflow is on but mlflow is not installed ({e}): {TRACKING_EXTRA}") from e
        self._metric = Metric
        uri = None  # online: MLFLOW_TRACKING_URI (or MLflow's default)
        if cfg.mode == "offline":
            # a local file store inside the run directory; MLflow 3 wants this opt-in for file stores
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(cfg.project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.project)
        run_id = _load_ids(run_dir).get("mlflow")
        if run_id is None:
            run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
            _save_id(run_dir, "mlflow", run_id)
            params = [Param(k, str(v)[:500]) for k, v in _flat(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[i : i + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, values: dict, step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(k, v, now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def make_trackers(run_dir: Path, cfg: LoggingConfig | None = None, resumed: bool = False) -> list:
    """The trackers switched on in `cfg` (default: RUN_DIR/config.yaml's `logging` section)."""
    saved, config = _logging_config_of(run_dir)
    cfg = cfg if cfg is not None else saved
    trackers: list = []
    try:
        if cfg.wandb:
            trackers.append(WandbTracker(run_dir, cfg, config, resumed))
        if cfg.mlflow:
            trackers.append(MlflowTracker(run_dir, cfg, config, resumed))
    except BaseException:
        for tracker in trackers:
            tracker.close()
        raise
    return trackers
