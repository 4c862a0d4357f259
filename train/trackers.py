"""Experiment trackers: TensorBoard, Weights & Biases and MLflow, on rank 0 only.

They receive exactly the scalars of metrics.jsonl at the same steps. Each tracker's run id (wandb, MLflow) is
returned by `MetricsLogger.run_ids()` and stored in the checkpoint's meta.json, so a resumed run continues the
same tracked run instead of starting a new one; TensorBoard's run is its directory (`<run dir>/tensorboard`),
where a resumed run hides what a crashed one logged after the resumed step. wandb and MLflow are not required
by the project: a missing one is a clear error naming the extra to install (`pip install 'fastflip[trackers]'`).

wandb honours its own environment (WANDB_MODE=offline, WANDB_DIR, WANDB_API_KEY); MLflow logs to
MLFLOW_TRACKING_URI (a server, or sqlite:///path.db), or, when that is unset, to the SQLite store MLflow 3
recommends, `<run dir>/mlflow.db` (`mlflow ui --backend-store-uri sqlite:///<run dir>/mlflow.db`).
`check_trackers` (torch-free) checks the packages and the store before a launched run loads torch; a tracker
that fails to open or log raises TrackerError, reported in one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}
# What each tracker imports besides its own package (MLflow's SQLite store: SQLAlchemy and its migrations).
_NEEDS = {"wandb": ("wandb",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}
MLFLOW_DB = "mlflow.db"


class TrackerError(RuntimeError):
    """A tracker that cannot start or log (missing package, refused store, unreachable server): one line."""


def mlflow_uri(out_dir: Path) -> str:
    """MLFLOW_TRACKING_URI, else the run directory's SQLite store (MLflow 3's recommended local backend)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out_dir / MLFLOW_DB).resolve()}"


NAMED_STORES = ("databricks", "databricks-uc", "uc")  # tracking URIs MLflow reads as a store's name, not a path


def check_trackers(names: list[str], out_dir: Path) -> None:
    """Before torch loads: every named tracker's packages import, and MLflow's store is one MLflow 3 accepts.
    Raises ValueError naming logging.trackers and the fix."""
    for name in names:
        missing = [m for m in _NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(
                f"logging.trackers includes {name!r} but {', '.join(missing)} is not installed: "
                "pip install 'fastflip[trackers]'"
            )
    if "mlflow" in names:
        uri = mlflow_uri(out_dir)
        scheme = urllib.parse.urlparse(uri).scheme  # as MLflow reads it: a one-letter scheme is a Windows drive
        file_store = uri not in NAMED_STORES and (scheme in ("", "file") or len(scheme) == 1)
        if file_store and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
            raise ValueError(
                f"MLFLOW_TRACKING_URI={uri} is a file store, which MLflow 3 refuses; unset it (the run "
                f"logs to sqlite:///{out_dir}/{MLFLOW_DB}), point it at sqlite:///PATH.db or a server, "
                "or export MLFLOW_ALLOW_FILE_STORE=true"
            )


class Tracker(Protocol):
    run_id: str  # "" when there is nothing to resume by (TensorBoard)

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _require(name: str) -> Any:
    try:
        return importlib.import_module(_PACKAGES[name])
    except ImportError as err:
        raise ImportError(
            f"logging.trackers includes {name!r} but the {_PACKAGES[name]} package is not installed: "
            "pip install 'fastflip[trackers]'"
        ) from err


class TensorBoardTracker:
    """Event files under `<run dir>/tensorboard`; a run resumed at `resume_step` hides the later steps a crashed run
    logged there (purge_step), so no step appears twice."""

    run_id = ""

    def __init__(self, out_dir: Path, resume_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One wandb run; `run_id` resumes it (resume="allow")."""

    def __init__(self, out_dir: Path, project: str, name: str, config: dict, run_id: str | None) -> None:
        wandb = _require("wandb")
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            config=config,
            dir=os.environ.get("WANDB_DIR", str(out_dir)),
        )
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

        uri = mlflow_uri(out_dir)
        if uri == f"sqlite:///{(out_dir / MLFLOW_DB).resolve()}" and not (out_dir / MLFLOW_DB).exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / MLFLOW_DB).touch()  # SQLite would create it 0644 whatever the umask; an empty file is a new db
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
        metrics = [Metric(mlflow_name(key), float(value), now, step) for key, value in scalars.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def mlflow_name(key: str) -> str:
    """MLflow refuses '@' in metric names (in-loop `eval/text_to_image_R@1`, clip_benchmark's recall@k): `_at_`."""
    return key.replace("@", "_at_")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def open_trackers(
    names: list[str],
    out_dir: Path,
    project: str,
    name: str,
    config: dict,
    run_ids: dict[str, str],
    resume_step: int = 0,
) -> dict[str, Tracker]:
    """The trackers named in `names`, resuming `run_ids` (wandb, mlflow) and the step `resume_step`; when one fails
    to start, those already open are closed."""
    classes = {"wandb": WandbTracker, "mlflow": MlflowTracker}
    opened: dict[str, Tracker] = {}
    try:
        for n in dict.fromkeys(names):
            if n == "tensorboard":
                opened[n] = TensorBoardTracker(out_dir, resume_step)
                continue
            try:
                opened[n] = classes[n](out_dir, project, name, config, run_ids.get(n))
            except ImportError:
                raise
            except Exception as err:  # the tracker's own exception types (MlflowException, wandb.Error, ...)
                raise TrackerError(f"logging.trackers: {n} could not start: {_first_line(err)}") from err
    except BaseException:
        for tracker in opened.values():
            tracker.close()
        raise
    return opened


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
