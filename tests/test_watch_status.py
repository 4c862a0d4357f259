"""When the watcher considers a run ended: status.json, the newest checkpoint's time, and run.lock's holder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import torch

from evaluation.suite import Suite, Task
from evaluation.watch import Watcher
from train.faults.status import write_status


def _watcher(run: Path) -> Watcher:
    return Watcher(run, Suite("s", [Task("t", "zeroshot", "t")]), str(run), torch.device("cpu"))


def _lock(run: Path, pid: int, host: str | None = None) -> None:
    (run / "run.lock").write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": "x"}))


def test_the_run_ends_only_when_status_says_so_after_the_last_checkpoint_and_no_job_lives(tmp_path: Path) -> None:
    watcher = _watcher(tmp_path)
    assert not watcher.run_ended()  # no status yet: the job is starting
    meta = tmp_path / "checkpoints" / "step_00000002" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text("{}")
    write_status(tmp_path, 75, "preempted", 2)
    assert not watcher.run_ended()  # a preempted job is requeued
    write_status(tmp_path, 0, "completed", 2)
    os.utime(meta, (meta.stat().st_mtime + 10,) * 2)
    assert not watcher.run_ended()  # a checkpoint newer than the status: a later job wrote it
    os.utime(meta, (meta.stat().st_mtime - 20,) * 2)
    assert watcher.run_ended()
    _lock(tmp_path, os.getpid())  # a resumed job holds the run here, before its first checkpoint
    assert not watcher.run_ended()
    _lock(tmp_path, os.getpid(), host="another-host")  # elsewhere: only status.json can tell
    assert watcher.run_ended()
    gone = subprocess.Popen(["true"])
    gone.wait()
    _lock(tmp_path, gone.pid)
    assert watcher.run_ended()
