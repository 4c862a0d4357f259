"""tools/evaluate.py --watch beside a launched 2-rank training job that is preempted once and resumed, while the
watcher itself is killed once and restarted: every checkpoint is evaluated exactly once, its results land at its
step in metrics.jsonl (once), TensorBoard and the watcher's own file, and equal a direct evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evaluation.models import load_checkpoint
from evaluation.suite import get_suite
from evaluation.suite_runner import flat_scalars, run_suite
from evaluation.watch import ID_KEY, RESULTS, WATCH_DIR, read_rows
from tests.cluster_utils import crash_report, finish, job_env, start, wait_for_step, write_recipe
from tests.ranks import REPO
from tests.suite_fixtures import build_suite
from tools.plot_run import plot_runs, read_run
from train.faults.status import read_status

pytestmark = pytest.mark.slow


def _watcher(run_dir: Path, suite: Path, data_root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tools" / "evaluate.py"),
            "--watch",
            str(run_dir),
            "--suite",
            str(suite),
            "--data-root",
            str(data_root),
            "--device",
            "cpu",
            "--batch-size",
            "64",
            "--poll-s",
            "0.3",
        ],
        cwd=REPO,
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait(predicate, what: str, watcher: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if watcher.poll() is not None:
            raise AssertionError(
                f"the watcher ended (exit {watcher.returncode}) before {what}:\n{watcher.stdout.read()[-4000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:.0f} s")
        time.sleep(0.2)


def test_watcher_follows_a_preempted_and_resumed_run(
    shards: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the run's MLflow tracker: a file store in the run dir
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = build_suite(tmp_path / "suite", fashion_n=40, digits_n=40)
    recipe = write_recipe(
        tmp_path, shards, epochs=3, checkpoint={"every_steps": 2, "keep_last": 100}, logging={"trackers": ["mlflow"]}
    )  # 15 steps
    run_dir = tmp_path / "run"
    own = run_dir / WATCH_DIR / RESULTS

    job = start(recipe)
    wait_for_step(run_dir, 1, job)
    watcher = _watcher(run_dir, data.suite_file, data.root)
    wait_for_step(run_dir, 5, job)
    os.kill(job.pid, signal.SIGTERM)  # preemption: the job saves its step and ends "preempted"
    _, out = finish(job)  # the launcher exits 1 whatever its ranks return; status.json tells
    assert read_status(run_dir)["status"] == "preempted", crash_report(out)

    _wait(lambda: len(read_rows(own)) >= 1, "a first evaluated checkpoint", watcher)
    os.killpg(watcher.pid, signal.SIGKILL)  # the watcher dies too (mid-suite or between checkpoints)
    watcher.communicate()
    assert watcher.poll() is not None and read_status(run_dir)["status"] == "preempted"
    watcher = _watcher(run_dir, data.suite_file, data.root)  # restarted while the run is between jobs

    code, out = finish(start(recipe, "checkpoint.resume=latest"))
    assert (code, read_status(run_dir)["status"]) == (0, "completed"), crash_report(out)
    watcher_out, _ = watcher.communicate(timeout=300)
    assert watcher.returncode == 0, watcher_out[-3000:]

    published = sorted(int(p.name.removeprefix("step_")) for p in (run_dir / "checkpoints").glob("step_*"))
    assert published[-1] == 15 and len(published) >= 7
    rows = read_rows(own)
    assert sorted(r["step"] for r in rows) == published, "every checkpoint evaluated exactly once"
    metrics = read_rows(run_dir / "metrics.jsonl")
    suite_rows = [r for r in metrics if ID_KEY in r]
    assert sorted(r["step"] for r in suite_rows) == published, "one metrics.jsonl row per checkpoint, at its step"
    assert sorted(r["step"] for r in metrics if "train/loss" in r) == list(range(1, 16))  # training rows untouched
    for row in rows:
        assert row["samples"] == row["step"] * 8  # 2 ranks x 4
        assert row["results"]["summary"]["tasks_averaged"] == 3
    assert any((run_dir / "tensorboard" / WATCH_DIR).glob("events.out.tfevents.*"))
    from mlflow.tracking import MlflowClient

    from train.trackers import mlflow_uri

    run_id = json.loads((run_dir / "checkpoints" / "step_00000015" / "meta.json").read_text())["trackers"]["mlflow"]
    client = MlflowClient(tracking_uri=mlflow_uri(run_dir))  # the run's own store (SQLite)
    for name in ("suite/fashion-mnist/acc1", "suite/photos/image_retrieval_recall_at_5"):
        history = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in history) == published, f"{name} in the run's MLflow run, once per checkpoint"

    series, mains = read_run(run_dir)
    assert mains == [
        "suite/fashion-mnist/acc1",
        "suite/digits/mean_per_class_recall",
        "suite/photos/mean_recall@1",
        "suite/average",
    ]
    assert sorted(series["suite/average"]) == published and sorted(series["train/loss"]) == list(range(1, 16))
    png = plot_runs([run_dir], tmp_path / "curves.png")
    assert png.stat().st_size > 10_000

    last = load_checkpoint(run_dir / "checkpoints" / "step_00000015")
    direct = flat_scalars(
        run_suite(get_suite(str(data.suite_file)), str(data.root), last, torch.device("cpu"), None, 64)
    )
    logged = next(r for r in suite_rows if r["step"] == 15)
    for key, value in direct.items():
        assert logged[f"suite/{key}"] == pytest.approx(value, abs=1e-9), key
