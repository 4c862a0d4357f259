"""Experiment trackers beyond TensorBoard: Weights & Biases and MLflow, on rank 0 only.

They receive exactly the scalars of metrics.jsonl at the same steps. Each tracker's run id is returned
by `run_ids()` and stored in the checkpoint's meta.json, so a resumed run continues the same tracked run
instead of starting a new one. No tracker package is required by the project: a missing one is a clear
error naming the extra to install (`pip install 'fastflip[trackers]'`).

wandb honours its own environment (WANDB_MODE=offline, WANDB_DIR, WANDB_API_KEY); MLflow logs to
MLFLOW_TRACKING_URI (a server, or sqlite:///path.db), or to a file store under the run directory (`mlruns/`)
when that is unset (MLflow 3 asks for MLFLOW_ALLOW_FILE_STORE=true for that).
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Any, Protocol

TRACKERS = ("tensorboard", "wandb", "mlflow")
_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


class Tracker(Protocol):
    run_id: str

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _require(name: str) -> Any:
    try:
        return importlib.import_module(_PACKAGES[name])
    except ImportError as err:
        raise ImportError(f"logging.trackers includes {name!r} but the {_PACKAGES[name]} package is not installed: "
                          "pip install 'fastflip[trackers]'") from err  # fmt: skip


class WandbTracker:
    """One wandb run; `run_id` resumes it (resume="allow")."""

    def __init__(self, out_dir: Path, project: str, name: str, config: dict, run_id: str | None) -> None:
        wandb = _require("wandb")
        self.run = wandb.init(
            project=project, name=name, id=run_id, resume="allow", config=config,
            dir=os.environ.get("WANDB_DIR", str(out_dir)),
        )  # fmt: skip
        self.run_id = self.run.id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """One MLflow run in experiment `project`, through the client API (no global active-run state)."""

    def __init__(self, out_dir: Path, project: str, name: str, config: dict, run_id: str | None) -> None:
        _require("mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (out_dir / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment = self.client.get_experiment_by_name(project)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
            run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            params = [Param(k, str(v)[:500]) for k, v in _flatten(config).items()]
            for start in range(0, len(params), 100):  # MLflow's batch limit
                self.client.log_batch(run_id, params=params[start : start + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in scalars.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def open_trackers(
    names: list[str], out_dir: Path, project: str, name: str, config: dict, run_ids: dict[str, str]
) -> dict[str, Tracker]:
    """The wandb / mlflow trackers named in `names` (tensorboard is MetricsLogger's own), resuming `run_ids`."""
    classes = {"wandb": WandbTracker, "mlflow": MlflowTracker}
    return {n: classes[n](out_dir, project, name, config, run_ids.get(n)) for n in names if n in classes}
