"""``metrics.jsonl`` and, with ``train.report_to``, the same numbers in TensorBoard or MLflow.

Every record the loop writes goes to ``RUN/metrics.jsonl`` first; with ``report_to: tensorboard`` its
numeric fields are also written as scalars (``train/loss``, ``validation/accuracy``, ...) at the record's
optimizer step into ``RUN/tensorboard``; with ``report_to: mlflow`` they are logged as MLflow metrics of one
run in a local file store ``RUN/mlruns`` (or wherever ``MLFLOW_TRACKING_URI`` points), with the recipe's
``train`` keys as parameters. Only rank 0 of a distributed run writes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from tuneforge.base.errors import UserError
from tuneforge.base.atomic import append_jsonl

# Fields of a metrics record that are positions, not measurements.
POSITION_FIELDS = ("step", "epoch")


def check_report_to(report_to: str) -> None:
    """UserError, before training, when the tracker's package is not installed."""
    package = {"tensorboard": "tensorboard", "mlflow": "mlflow"}.get(report_to)
    if package is None:
        return
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise UserError(f"train.report_to: {report_to} needs the '{package}' package "
                        f"(pip install 'tuneforge[tracking]'), or set train.report_to: none")


def scalar_name(key: str) -> str:
    """``validation_accuracy`` -> ``validation/accuracy``; training fields -> ``train/<key>``."""
    if key.startswith("validation_"):
        return "validation/" + key.removeprefix("validation_")
    return "train/" + key


class MetricsLog:
    """Appends records to metrics.jsonl and forwards their numbers to the configured tracker."""

    def __init__(self, run_dir: Path, report_to: str = "none", params: dict[str, Any] | None = None,
                 enabled: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.report_to = report_to if enabled else "none"
        self._writer = None
        self._mlflow = None
        if self.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        elif self.report_to == "mlflow":
            import mlflow

            if "MLFLOW_TRACKING_URI" not in os.environ:
                # MLflow 3 keeps its file store in maintenance mode behind this switch; it still is the one
                # store that needs no server and no database (MLFLOW_TRACKING_URI=sqlite:///... picks one).
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri((Path(run_dir) / "mlruns").resolve().as_uri())
            mlflow.set_experiment("tuneforge")
            if mlflow.active_run() is not None:  # a run left open by an earlier failed training in this process
                mlflow.end_run(status="FAILED")
            mlflow.start_run(run_name=Path(run_dir).name)
            if params:
                mlflow.log_params({key: str(value) for key, value in params.items()})
            self._mlflow = mlflow

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a line of metrics.jsonl) and log its numbers at its ``step``."""
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        numbers = {scalar_name(key): float(value) for key, value in record.items()
                   if key not in POSITION_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool)
                   and math.isfinite(float(value))}
        step = int(record.get("step", 0))
        if self._writer is not None:
            for name, value in numbers.items():
                self._writer.add_scalar(name, value, global_step=step)
            self._writer.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics({name.replace("/", "_"): value for name, value in numbers.items()}, step=step)

    def close(self, status: str = "FINISHED") -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._mlflow is not None:
            self._mlflow.end_run(status=status)
            self._mlflow = None
