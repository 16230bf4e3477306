"""Run outputs: metrics.csv (one row per evaluation), TensorBoard events, summary.json.

Every row also goes to the optional trackers of `racemarl.records.tracking` (W&B, MLflow) when switched on.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

from racemarl.config import LoggingConfig
from racemarl.records.tracking import make_trackers

COLUMNS = [
    "env_steps",
    "generation",
    "updates",
    "wall_time",
    "sps",
    "eval_return",
    "eval_return_std",
    "eval_return_marl",
    "eval_return_best_team",
    "train_return",
    "eval_win_rate",
    "eval_win_rate_marl",
    "eval_win_rate_best_team",
    "train_win_rate",
    "fitness_max",
    "fitness_mean",
    "fitness_min",
    "fitness_short",
    "injected_slot",
    "loss_critic",
    "loss_actor",
    "loss_pevfa",
    "loss_value",
    "loss_vfm",
    "loss_vmm",
    "mi_estimate",
    "q_marl",
    "mc_return_marl",
    "q_bias_marl",
    "grad_enc_actor",
    "grad_enc_vfm",
    "grad_enc_vmm",
]
WALL_CLOCK_COLUMNS = ("wall_time", "sps")


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        rows: list[dict] | None = None,
        purge_step: int | None = None,
        tracking: LoggingConfig | None = None,
    ):
        self.path = run_dir / "metrics.csv"
        self.rows: list[dict] = rows if rows is not None else []  # shared with the run state
        # W&B / MLflow: from `tracking`, else from the run's config.yaml (written before the logger)
        self.trackers = make_trackers(run_dir, tracking, resumed=purge_step is not None)
        self._rewrite()  # on resume: exactly the rows the checkpoint knows about
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a core dependency
            self.tb = None
        else:
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for row in self.rows:
                w.writerow(_format(row))

    def log_row(self, row: dict) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown metric columns {sorted(unknown)}")
        self.rows.append(row)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(_format(row))
        self.scalars(row, row["env_steps"], prefix="eval/")
        for tracker in list(self.trackers):
            values = {
                k: float(v)
                for k, v in row.items()
                if k != "env_steps" and isinstance(v, (int, float)) and math.isfinite(v)
            }
            try:
                tracker.log(values, int(row["env_steps"]))
            except Exception as e:  # noqa: BLE001 - a tracker must never stop training
                print(
                    f"racemarl: warning: {tracker.name} logging failed ({type(e).__name__}: {e}); "
                    f"it is off for the rest of this run",
                    file=sys.stderr,
                )
                self.trackers.remove(tracker)

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        if self.tb is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) and k != "env_steps":
                self.tb.add_scalar(prefix + k, v, step)

    def flush(self) -> None:
        """Write the buffered TensorBoard events to disk (before every checkpoint)."""
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception as e:  # noqa: BLE001
                print(f"racemarl: warning: closing {tracker.name} failed ({type(e).__name__}: {e})", file=sys.stderr)
        self.trackers = []


def _format(row: dict) -> dict:
    out = {}
    for k in COLUMNS:
        v = row.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out[k] = ""
        elif isinstance(v, float):
            out[k] = f"{v:.6g}"
        else:
            out[k] = v
    return out


def read_metrics(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return list(csv.DictReader(f))


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
