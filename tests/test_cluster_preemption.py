"""Preemption as users launch, with loader workers on (data.workers=1): the life of one run, played once.

An uninterrupted run through tools/slurm_train.sbatch is the reference. The run under test is then
- started with `accelerate launch`; while it trains, a second job on its run directory is refused; SIGTERM to the
  launcher (what it gets at a job's end, from scancel or the time limit) saves the step;
- requeued through tools/slurm_train.sbatch; SIGUSR1 to the batch script (`--signal=B:USR1@300`) saves the step and
  the script requeues the job;
- resumed with `accelerate launch`; SIGTERM to every process of the job at once (as `scancel` does) saves the step.
Each stop says "preempted" (exit 75) in status.json, and every resume continues the reference bit for bit: the
same loss at every step, none logged twice, and the last checkpoint equal to the reference's at that step.
The launches are shared between the tests below (each checks one event of that life).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.cluster_utils import crash_report, finish, job_env, logged_steps, start, wait_for_step, workers, write_recipe
from tests.ranks import REPO
from train.checkpoint.files import resolve_resume
from train.faults.rank_sync import free_port
from train.faults.status import read_status

pytestmark = pytest.mark.slow

SECTIONS = {"epochs": 6, "checkpoint": {"every_steps": 0}}  # 30 steps; only the signals save


@dataclass
class Stop:
    """One launch of the run under test, ended by a signal."""

    code: int
    out: str
    status: dict[str, Any]
    saved: int  # the step of the checkpoint `latest` names after it


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (ranks, their loader workers, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stand_ins(bin_dir: Path) -> Path:
    """srun (a process of its own that forwards signals to its task, as srun does, not `exec`), scontrol, and the
    user's environment (accelerate, python) on PATH."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"$@" &\ntask=$!\n'
        "trap 'kill -USR1 $task' USR1\ntrap 'kill -TERM $task' TERM\n"
        "wait $task; code=$?\nwhile kill -0 $task 2>/dev/null; do wait $task; code=$?; done\nexit $code\n"
    )
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\nif [ "$1" = show ]; then echo 127.0.0.1; else echo "$@" >> "$REQUEUE_LOG"; fi\n'
    )
    (bin_dir / "accelerate").symlink_to(REPO / ".venv" / "bin" / "accelerate")
    (bin_dir / "python").write_text(f'#!/bin/bash\nexec {REPO / ".venv" / "bin" / "python"} "$@"\n')
    for stub in ("srun", "scontrol", "python"):
        (bin_dir / stub).chmod(0o755)
    return bin_dir


def sbatch(recipe: Path, bin_dir: Path, requeue_log: Path) -> subprocess.Popen:
    """tools/slurm_train.sbatch as SLURM runs it on one node of 2 CPU ranks (job 42)."""
    env = job_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        REQUEUE_LOG=str(requeue_log),
        SLURM_JOB_ID="42",
        SLURM_JOB_NODELIST="localhost",
        SLURM_NNODES="1",
        SLURM_NODEID="0",
        GPUS_PER_NODE="2",
        ACCELERATE_CONFIG=str(REPO / "ds_configs" / "accelerate_cpu_2proc.yaml"),
        MASTER_PORT=str(free_port()),
    )
    return subprocess.Popen(
        ["bash", str(REPO / "tools" / "slurm_train.sbatch"), str(recipe)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stopped(run_dir: Path, code: int, out: str) -> Stop:
    status = read_status(run_dir)
    assert status is not None, crash_report(out)
    saved = resolve_resume(run_dir / "checkpoints", "latest")
    return Stop(code, out, status, -1 if saved is None else int(saved.name[5:]))


@dataclass
class Life:
    reference: Path  # the uninterrupted run's directory
    reference_out: str
    run: Path  # the run under test
    second: tuple[int, str, int]  # the refused second job: exit code, output, pid of the first job's rank 0
    first_status_then: dict | None  # the first job's status.json while the second was refused
    launcher: Stop
    sbatch: Stop
    everyone: Stop
    signalled: int  # processes that got SIGTERM in the last stop
    requeues: list[str]  # scontrol's log after each sbatch job: reference, then the run under test


@pytest.fixture(scope="module")
def life(shards: str, tmp_path_factory: pytest.TempPathFactory) -> Life:
    root = tmp_path_factory.mktemp("life")
    bin_dir, requeue_log = stand_ins(root / "bin"), root / "requeued"
    for name in ("reference", "chain"):
        (root / name).mkdir()
    # The reference keeps a checkpoint of every step (saving changes nothing of the training).
    reference = write_recipe(root / "reference", shards, epochs=6, checkpoint={"every_steps": 1, "keep_last": 100})
    code, reference_out = finish(sbatch(reference, bin_dir, requeue_log))
    assert code == 0 and "run ended: completed, exit code 0" in reference_out, crash_report(reference_out)
    requeues = [requeue_log.read_text() if requeue_log.exists() else ""]

    recipe = write_recipe(root / "chain", shards, **SECTIONS)
    run_dir = root / "chain" / "run"
    job = start(recipe)
    wait_for_step(run_dir, 3, job)
    holder = workers(job.pid)[0]
    paused = descendants(job.pid)  # the ranks and their workers: the first job holds the lock, and waits
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        code, out = finish(start(recipe))  # two jobs at once, or a requeue while the old one still runs
        second, first_status_then = (code, out, holder), read_status(run_dir)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    os.kill(job.pid, signal.SIGTERM)
    launcher = stopped(run_dir, *finish(job))

    job = sbatch(recipe, bin_dir, requeue_log)
    wait_for_step(run_dir, launcher.saved + 2, job)
    job.send_signal(signal.SIGUSR1)  # the batch script alone is signalled
    by_sbatch = stopped(run_dir, *finish(job))
    requeues.append(requeue_log.read_text())

    job = start(recipe, "checkpoint.resume=latest")
    wait_for_step(run_dir, by_sbatch.saved + 2, job)
    everyone = [job.pid, *descendants(job.pid)]
    for pid in everyone:  # as scancel does: every process of the step at once
        os.kill(pid, signal.SIGTERM)
    last = stopped(run_dir, *finish(job))
    return Life(
        root / "reference" / "run",
        reference_out,
        run_dir,
        second,
        first_status_then,
        launcher,
        by_sbatch,
        last,
        len(everyone),
        requeues,
    )


def _check_preempted(stop: Stop, after: int) -> None:
    assert (stop.status["status"], stop.status["exit_code"]) == ("preempted", 75), crash_report(stop.out)
    assert "killed by signal" not in stop.out  # no loader worker died of the signal
    assert stop.saved == stop.status["step"] > after  # the signal step was saved


def test_a_second_job_on_the_run_directory_is_refused_naming_the_first(life: Life) -> None:
    code, out, holder = life.second
    assert code != 0 and "run directory in use: " in out, crash_report(out)
    assert f"pid {holder}, started " in out  # rank 0 of the first job holds the lock
    assert life.first_status_then is None  # the first job's status was left alone; it trained on


def test_sigterm_to_the_launcher_saves(life: Life) -> None:
    _check_preempted(life.launcher, 2)


def test_sbatch_requeues_on_sigusr1_and_a_completed_run_is_not_requeued(life: Life) -> None:
    _check_preempted(life.sbatch, life.launcher.saved)
    assert "run ended: preempted, exit code 75" in life.sbatch.out and life.sbatch.code == 0
    assert life.requeues == ["", "requeue 42\n"]  # the reference (completed) was not requeued; this job was


def test_sigterm_to_every_process_of_the_job_saves(life: Life) -> None:
    assert life.signalled >= 5  # the launcher, 2 ranks and their loader workers
    _check_preempted(life.everyone, life.sbatch.saved)


def test_every_resume_continues_the_uninterrupted_run_exactly(life: Life) -> None:
    last = life.everyone.saved
    assert logged_steps(life.run) == list(range(1, last + 1))  # none twice, none missing
    reference = losses(life.reference)
    assert losses(life.run) == {step: reference[step] for step in range(1, last + 1)}  # bitwise
    name = f"step_{last:08d}"
    _assert_same_state(life.reference / "checkpoints" / name, life.run / "checkpoints" / name)


def _assert_same_state(expected: Path, got: Path) -> None:
    """Every state file of two checkpoints holds equal tensors and values (model, optimizer, loss, temperature,
    rng, data position)."""
    names = sorted(path.name for path in expected.glob("*.pt"))
    assert names == sorted(path.name for path in got.glob("*.pt")) and "model.pt" in names
    for name in names:
        a, b = (torch.load(d / name, map_location="cpu", weights_only=True) for d in (expected, got))
        _assert_equal(a, b, name)


def _assert_equal(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def torchrun(recipe: Path, *overrides: str) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 recipes/run_recipe.py --config recipe overrides` (the launcher accelerate
    launch runs inside it, without accelerate's own start-up)."""
    cmd = [
        str(REPO / ".venv" / "bin" / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(REPO / "recipes" / "run_recipe.py"),
        "--config",
        str(recipe),
        *overrides,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_a_config_error_line_is_never_lost(tmp_path: Path) -> None:
    """20 launches of 2 ranks with a bad value: every one shows the one-line message (4 launches at a time)."""
    recipe = write_recipe(tmp_path, str(tmp_path / "no-shards"))
    for wave in range(5):
        jobs = [torchrun(recipe, "optim.lr=-1") for _ in range(4)]
        for job in jobs:
            code, out = finish(job, timeout=120)
            assert code != 0 and "config error: " in out and "optim needs 0 <= lr_min <= lr" in out, (
                f"wave {wave}: {crash_report(out)}"
            )
