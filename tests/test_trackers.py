"""logging.trackers offline: wandb in offline mode and MLflow's default SQLite store (the run directory's mlflow.db)
get the scalars of metrics.jsonl
from rank 0, and a resumed run continues the same tracked runs (their ids are kept in the checkpoint)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config
from train.config import LoggingConfig
from train.trackers import check_trackers

STEPS = 4


def _train(rank: int, world_size: int, out_dir: str, resume: bool) -> dict[str, str]:
    from train.trainer import Trainer

    os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = tiny_config(out_dir, "ddp", batch_size=8 // world_size)
    cfg.logging.trackers = ["wandb", "mlflow"]
    cfg.checkpoint.resume = "latest" if resume else None
    trainer = Trainer(cfg, FixedBatches(8, rank, world_size, STEPS))
    ids = trainer.metrics.run_ids()  # opened (or resumed) when the trainer starts
    if resume:
        trainer.fit()
    else:  # stop half-way, as a preempted job would
        trainer.train_steps(STEPS // 2)
        trainer.save_checkpoint()
    trainer.close()
    return ids


@pytest.mark.slow
def test_trackers_log_the_jsonl_scalars_and_resume_the_same_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    first = run_on_ranks(_train, 2, (str(out), False))
    second = run_on_ranks(_train, 2, (str(out), True))
    assert first[1] == {} and second[1] == {}  # rank 0 only
    assert set(first[0]) == {"wandb", "mlflow"} and first[0] == second[0]  # the same tracked runs continue
    assert any(p.name.endswith(first[0]["wandb"]) for p in (out / "wandb").iterdir())  # offline run directory

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert sorted(losses) == list(range(1, STEPS + 1))
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    history = {m.step: m.value for m in client.get_metric_history(first[0]["mlflow"], "train/loss")}
    assert history == pytest.approx(losses, rel=1e-12)
    assert client.get_run(first[0]["mlflow"]).info.status == "FINISHED"


def test_unknown_tracker_is_refused() -> None:
    with pytest.raises(ValueError, match="logging.trackers"):
        LoggingConfig(trackers=["comet"]).validate()


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from train.trackers import open_trackers

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"fastflip\[trackers\]"):
        open_trackers(["wandb"], Path("."), "p", "n", {}, {})


@pytest.mark.parametrize(
    "uri",
    [
        "databricks",
        "databricks-uc",
        "uc",
        "databricks://profile",
        "http://mlflow:5000",
        "sqlite:///runs/mlflow.db",
        "postgresql://u@db/mlflow",
    ],
)
def test_mlflow_stores_other_than_files_are_accepted(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    check_trackers(["mlflow"], tmp_path)


@pytest.mark.parametrize("uri", ["/runs/mlruns", "mlruns", "file:///runs/mlruns", "file:mlruns"])
def test_an_mlflow_file_store_is_refused(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ValueError, match="is a file store, which MLflow 3 refuses"):
        check_trackers(["mlflow"], tmp_path)
