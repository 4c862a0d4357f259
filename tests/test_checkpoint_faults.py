"""Damaged checkpoints, healthy-checkpoint pruning, the run-directory lock and status.json (no ranks spawned)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.tiny_run import tiny_config
from train.checkpoint.checkpointer import Checkpointer
from train.checkpoint.files import (
    CheckpointDamaged,
    CheckpointWriter,
    checkpoint_name,
    damage,
    last_healthy,
    resolve_resume,
)
from train.faults.run_lock import RunDirectoryLocked, RunLock
from train.faults.status import read_status, write_status


def _writer(root: Path, keep_last: int = 2, keep_every_steps: int = 0) -> CheckpointWriter:
    return CheckpointWriter(root, keep_last, 0, lambda: None, keep_every_steps)


def _save(writer: CheckpointWriter, step: int, healthy: bool = True) -> Path:
    def write(directory: Path) -> None:
        (directory / "model.pt").write_bytes(bytes(range(256)) * 40)
        (directory / "deepspeed").mkdir()
        (directory / "deepspeed" / "shard_rank1.pt").write_bytes(b"s" * 999)

    meta = {"step": step, "health": {"healthy": healthy, "recent_loss": 1.0, "reason": "" if healthy else "blown up"}}
    return writer.save(step, write, meta)


def test_every_file_is_recorded_and_damage_names_the_file(tmp_path: Path) -> None:
    path = _save(_writer(tmp_path), 1)
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["files"]) == {"model.pt", "deepspeed/shard_rank1.pt"}
    assert damage(path) is None
    with (path / "deepspeed" / "shard_rank1.pt").open("r+b") as handle:  # truncated, as a full disk leaves it
        handle.truncate(500)
    shard = path / "deepspeed" / "shard_rank1.pt"
    assert damage(path) == f"{shard}: 500 bytes, 999 when written (truncated or replaced)"
    (path / "model.pt").write_bytes(bytes(reversed(range(256))) * 40)  # same size, other bytes
    (path / "deepspeed" / "shard_rank1.pt").write_bytes(b"s" * 999)
    assert "model.pt: checksum differs" in damage(path)


def test_latest_falls_back_to_the_newest_intact_checkpoint_and_says_which(tmp_path: Path, caplog) -> None:
    writer = _writer(tmp_path, keep_last=3)
    for step in (2, 4, 6):
        _save(writer, step)
    (tmp_path / checkpoint_name(6) / "model.pt").write_bytes(b"cut")
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(tmp_path, "latest") == tmp_path / checkpoint_name(4)
    assert "step_00000006 is damaged" in caplog.text and "model.pt: 3 bytes" in caplog.text
    (tmp_path / checkpoint_name(4) / "meta.json").write_text('{"step": 4, "fi')  # torn meta.json
    assert resolve_resume(tmp_path, "latest") == tmp_path / checkpoint_name(2)
    with pytest.raises(CheckpointDamaged, match=r"checkpoint.resume: .*step_00000006/model.pt: 3 bytes"):
        resolve_resume(tmp_path, str(tmp_path / checkpoint_name(6)))  # named explicitly: refused
    (tmp_path / checkpoint_name(2) / "model.pt").unlink()
    with pytest.raises(CheckpointDamaged, match="every checkpoint under .* is damaged"):
        resolve_resume(tmp_path, "latest")


def test_pruning_keeps_the_newest_healthy_checkpoint_and_milestones(tmp_path: Path) -> None:
    writer = _writer(tmp_path, keep_last=2, keep_every_steps=4)
    for step in range(1, 4):
        _save(writer, step)
    for step in range(4, 9):  # a diverging run keeps saving finite but blown-up weights
        _save(writer, step, healthy=False)
    kept = sorted(int(p.name[5:]) for p in tmp_path.glob("step_*"))
    assert kept == [3, 4, 7, 8]  # 3: the last healthy; 4: a milestone; 7, 8: keep_last
    assert last_healthy(tmp_path) == tmp_path / checkpoint_name(3)


def _hold(directory: str, ready: multiprocessing.Event) -> None:
    RunLock(directory).acquire()
    ready.set()
    time.sleep(60)


def test_a_second_job_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path: Path, caplog) -> None:
    ready = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunDirectoryLocked, match=rf"in use by another job \(host .*, pid {holder.pid}, started"):
            RunLock(tmp_path).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # gone without releasing: the kernel drops its lock, the file stays
        holder.join()
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert "taking over the lock of a job that is gone (host" in caplog.text and f"pid {holder.pid}" in caplog.text
    lock.release()
    caplog.clear()
    RunLock(tmp_path).acquire()  # released cleanly: no warning
    assert "taking over" not in caplog.text


def test_status_json_says_how_the_run_ended(tmp_path: Path) -> None:
    write_status(tmp_path / "run", 75, "preempted at step 6", 6)
    status = read_status(tmp_path / "run")
    assert (status["status"], status["exit_code"], status["step"]) == ("preempted", 75, 6)
    write_status(tmp_path / "run", 2, "config error: x", None)
    assert read_status(tmp_path / "run")["status"] == "config error"
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_health_compares_the_recent_loss_with_the_last_healthy_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config(str(tmp_path))
    checkpointer = Checkpointer(cfg, {}, 0, 1, lambda: None)
    first = checkpointer.health(torch.tensor([3.0, 2.0, float("nan"), 2.0], dtype=torch.float64), 0)
    assert first == {"healthy": True, "recent_loss": 7 / 3, "max_abs_weight": None, "reason": ""}  # NaN steps left out
    checkpointer.save({"step": 4, "health": first}, {}, lambda: True)
    assert checkpointer.health(torch.full((20,), 3.4), 0)["healthy"]  # within 1.5 x 2.33
    blown = checkpointer.health(torch.full((20,), 3.6), 0)
    assert not blown["healthy"] and "left its range (> 1.5 x 2.333)" in blown["reason"]
    streak = checkpointer.health(torch.full((20,), 1.0), 2)
    assert not streak["healthy"] and "streak of 2 non-finite steps" in streak["reason"]
    assert checkpointer.health(torch.tensor([]), 0)["healthy"]  # nothing trained since a restart
    assert checkpointer.health(torch.full((20,), 2.0), 0, 1e6)["healthy"]  # step 4 recorded no weights
    checkpointer.save({"step": 5, "health": checkpointer.health(torch.full((20,), 2.0), 0, 2.66)}, {}, lambda: True)
    assert checkpointer.health(torch.full((20,), 2.0), 0, 26.6)["healthy"]  # within 10 x 2.66
    jumped = checkpointer.health(torch.full((20,), 2.0), 0, 181.6)  # the probe's step 54: a low, finite loss
    assert not jumped["healthy"] and jumped["reason"] == (
        "largest |weight| 181.6 jumped past 10 x 2.66 (the last healthy checkpoint's, step_00000005)"
    )
    assert checkpointer.resume_advice().endswith(f"checkpoint.resume={tmp_path / 'checkpoints' / 'step_00000005'}")
