"""Whole jobs under `accelerate launch` (2 CPU ranks): preemption, crashes, divergence, hung ranks, two nodes.

Each test plays one probe of a cluster's day: a signal before the time limit, SIGKILL, NaN from a far
too large lr, a stopped rank, a multi-node launch, and checks what the job leaves behind.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.cluster_utils import (
    crash_report,
    finish,
    finish_all,
    logged_steps,
    run,
    start,
    wait_for_step,
    workers,
    write_recipe,
)
from train.checkpoint.consolidate import consolidated_state_dict
from train.checkpoint.files import resolve_resume
from train.faults.rank_sync import free_port

pytestmark = pytest.mark.slow


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_killed_run_resumes_past_a_damaged_checkpoint_without_repeating_logged_steps(shards, tmp_path) -> None:
    recipe = write_recipe(tmp_path, shards, checkpoint={"every_steps": 2})
    job = start(recipe)
    wait_for_step(tmp_path / "run", 6, job)
    for pid in workers(job.pid).values():
        os.kill(pid, signal.SIGKILL)
    finish(job)
    assert max(logged_steps(tmp_path / "run")) >= 6  # steps 5.. were logged, then lost with the crash
    newest = resolve_resume(tmp_path / "run" / "checkpoints", "latest")
    with (newest / "loss_rank1.pt").open("r+b") as shard:  # the crash also cut the newest checkpoint's file
        shard.truncate(100)
    code, out = run(recipe, "checkpoint.resume=latest")
    assert code == 0, crash_report(out)
    assert f"checkpoint {newest.name} is damaged ({newest / 'loss_rank1.pt'}: 100 bytes" in out
    assert f"resumed from {newest.parent / f'step_{int(newest.name[5:]) - 2:08d}'}" in out
    assert logged_steps(tmp_path / "run") == list(range(1, 11))


def test_divergence_stops_with_a_message_and_no_nan_checkpoint(shards: str, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, shards, optim={"lr": 1e3, "warmup_steps": 0, "grad_clip": 0.0})
    code, out = run(recipe)
    assert code != 0 and "exitcode  : 3" in out, crash_report(out)
    assert "diverged: 5 non-finite steps in a row" in out and "grad norm" in out and "lr 1000" in out
    assert "healthy checkpoint" in out  # where to resume from (or that none was written)
    rows = [r for r in _metrics(tmp_path / "run") if "train/nonfinite_steps" in r]
    assert rows and rows[-1]["train/nonfinite_steps"] >= 4  # the 5th skip stops the run before its log line
    latest = resolve_resume(tmp_path / "run" / "checkpoints", "latest")
    if latest is not None:  # whatever was published holds finite weights
        assert all(torch.isfinite(v).all() for v in consolidated_state_dict(latest)[0].values())


def test_a_stopped_rank_ends_the_job_naming_rank_and_operation(shards: str, tmp_path: Path) -> None:
    recipe = write_recipe(  # no checkpoints: the stop must land in a training step (step_timeout_s), not in a save
        tmp_path, shards, epochs=40, backend={"name": "ddp", "step_timeout_s": 4.0}, checkpoint={"every_steps": 0}
    )
    job = start(recipe)
    wait_for_step(tmp_path / "run", 3, job)
    ranks = workers(job.pid)
    os.kill(ranks[1], signal.SIGSTOP)  # a hung GPU or an NFS stall looks like this
    began = time.monotonic()
    try:
        while Path(f"/proc/{ranks[0]}").exists() and time.monotonic() - began < 60:
            time.sleep(0.2)
        ended = time.monotonic() - began
    finally:
        # The launcher would SIGTERM the stopped rank, wait TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 s) and SIGKILL it.
        with_stopped_gone(ranks[1])
    code, out = finish(job, timeout=60)
    assert code != 0 and ended < 60, crash_report(out)
    assert "hung rank: rank 0: a collective during training step" in out and "rank(s) 1 did not answer" in out


def with_stopped_gone(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_two_nodes_train_and_resume_as_one_node(shards: str, tmp_path: Path) -> None:
    """2 "nodes" of 1 process on localhost (the multi-node launch of docs/cluster.md), then 1 node of 2 processes."""
    recipe = write_recipe(tmp_path, shards, checkpoint={"every_steps": 2, "keep_last": 10})
    port = free_port()
    nodes = [
        start(
            recipe,
            launcher=(
                "--num_machines",
                "2",
                "--machine_rank",
                str(node),
                "--num_processes",
                "2",
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                str(port),
            ),
        )
        for node in (0, 1)
    ]
    results = finish_all(nodes)
    assert all(code == 0 for code, _ in results), "\n".join(crash_report(out) for _, out in results)
    two_nodes = {r["step"]: r["train/loss"] for r in _metrics(tmp_path / "run") if "train/loss" in r}
    assert sorted(two_nodes) == list(range(1, 11))
    step4 = tmp_path / "run" / "checkpoints" / "step_00000004"
    code, out = run(recipe, f"run.output_dir={tmp_path / 'one_node'}", f"checkpoint.resume={step4}")
    assert code == 0, crash_report(out)
    one_node = {r["step"]: r["train/loss"] for r in _metrics(tmp_path / "one_node") if "train/loss" in r}
    assert one_node == {step: two_nodes[step] for step in range(5, 11)}  # bitwise: same ranks, same data
