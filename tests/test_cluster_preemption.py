"""Preemption as users launch: loader workers on (data.workers=1), signals to the launcher, to every process of the
job (as `scancel` does) and SIGUSR1 through tools/slurm_train.sbatch. Each saves the signal step, says
"preempted" (exit 75) in status.json, and the resumed run's losses equal an uninterrupted run's bit for bit.
A second job on the same run directory is refused while the first trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster_utils import crash_report, finish, job_env, run, start, wait_for_step, workers, write_recipe
from tests.ranks import REPO
from train.checkpoint.files import resolve_resume
from train.faults.rank_sync import free_port
from train.faults.status import read_status

pytestmark = pytest.mark.slow

SECTIONS = {"epochs": 3, "checkpoint": {"every_steps": 0}}  # 15 steps; only the signal saves


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


@pytest.fixture(scope="module")
def uninterrupted(shards: str, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    directory = tmp_path_factory.mktemp("uninterrupted")
    code, out = run(write_recipe(directory, shards, **SECTIONS))
    assert code == 0, crash_report(out)
    assert read_status(directory / "run")["status"] == "completed"
    return losses(directory / "run")


def _check_preempted_then_resume(run_dir: Path, out: str, reference: dict[int, float], resume: Callable) -> None:
    status = read_status(run_dir)
    assert status is not None and (status["status"], status["exit_code"]) == ("preempted", 75), crash_report(out)
    assert "killed by signal" not in out  # no loader worker died of the signal
    saved = resolve_resume(run_dir / "checkpoints", "latest")
    assert saved is not None and int(saved.name[5:]) == status["step"] == max(losses(run_dir)) >= 3
    resume()
    assert read_status(run_dir)["status"] == "completed"
    assert losses(run_dir) == reference  # bitwise: every step of the uninterrupted run, none twice


def test_sigterm_to_the_launcher_saves(shards, tmp_path, uninterrupted) -> None:
    recipe = write_recipe(tmp_path, shards, **SECTIONS)
    job = start(recipe)
    wait_for_step(tmp_path / "run", 3, job)
    os.kill(job.pid, signal.SIGTERM)  # what the launcher gets at a job's end, from scancel or the time limit
    code, out = finish(job)
    _check_preempted_then_resume(
        tmp_path / "run", out, uninterrupted, lambda: run(recipe, "checkpoint.resume=latest")
    )


def test_sigterm_to_every_process_of_the_job_saves(shards, tmp_path, uninterrupted) -> None:
    recipe = write_recipe(tmp_path, shards, **SECTIONS)
    job = start(recipe)
    wait_for_step(tmp_path / "run", 3, job)
    everyone = [job.pid, *descendants(job.pid)]
    assert len(everyone) >= 5  # the launcher, 2 ranks and their loader workers
    for pid in everyone:  # as scancel does: every process of the step at once
        os.kill(pid, signal.SIGTERM)
    code, out = finish(job)
    _check_preempted_then_resume(
        tmp_path / "run", out, uninterrupted, lambda: run(recipe, "checkpoint.resume=latest")
    )


def test_sbatch_requeues_on_sigusr1_and_the_requeued_job_continues_exactly(shards, tmp_path, uninterrupted) -> None:
    """tools/slurm_train.sbatch with stand-ins for srun (a process of its own that forwards signals to its task,
    as srun does, not `exec`) and scontrol."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"$@" &\ntask=$!\n'
        "trap 'kill -USR1 $task' USR1\ntrap 'kill -TERM $task' TERM\n"
        'wait $task; code=$?\nwhile kill -0 $task 2>/dev/null; do wait $task; code=$?; done\nexit $code\n'
    )
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\nif [ "$1" = show ]; then echo 127.0.0.1; else echo "$@" >> "$REQUEUE_LOG"; fi\n'
    )
    (bin_dir / "accelerate").symlink_to(REPO / ".venv" / "bin" / "accelerate")  # the user's environment
    (bin_dir / "python").write_text(f'#!/bin/bash\nexec {REPO / ".venv" / "bin" / "python"} "$@"\n')
    for stub in ("srun", "scontrol", "python"):
        (bin_dir / stub).chmod(0o755)
    recipe = write_recipe(tmp_path, shards, **SECTIONS)
    env = job_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}", REQUEUE_LOG=str(tmp_path / "requeued"), SLURM_JOB_ID="42",
        SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1", SLURM_NODEID="0", GPUS_PER_NODE="2",
        ACCELERATE_CONFIG=str(REPO / "ds_configs" / "accelerate_cpu_2proc.yaml"), MASTER_PORT=str(free_port()),
    )  # fmt: skip
    script = ["bash", str(REPO / "tools" / "slurm_train.sbatch"), str(recipe)]

    def sbatch() -> subprocess.Popen:
        return subprocess.Popen(script, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip

    job = sbatch()
    wait_for_step(tmp_path / "run", 3, job)
    job.send_signal(signal.SIGUSR1)  # `#SBATCH --signal=B:USR1@300`: the batch script alone is signalled
    code, out = finish(job)
    assert code == 0 and (tmp_path / "requeued").read_text().split() == ["requeue", "42"], crash_report(out)
    assert "run ended: preempted, exit code 75" in out

    def requeued() -> None:
        env["MASTER_PORT"] = str(free_port())
        code, out = finish(sbatch())
        assert code == 0 and "run ended: completed, exit code 0" in out, crash_report(out)

    _check_preempted_then_resume(tmp_path / "run", out, uninterrupted, requeued)
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "42"]  # a completed run is not requeued


def test_a_second_job_on_the_run_directory_is_refused_naming_the_first(shards, tmp_path) -> None:
    recipe = write_recipe(tmp_path, shards, epochs=2000, checkpoint={"every_steps": 0})  # outlasts the second's start
    first = start(recipe)
    wait_for_step(tmp_path / "run", 2, first)
    code, out = run(recipe)  # started while the first trains (two jobs at once, or a requeue while it still runs)
    assert code != 0 and "run directory in use: " in out, crash_report(out)
    assert f"pid {workers(first.pid)[0]}, started " in out  # rank 0 of the first job holds the lock
    assert first.poll() is None and read_status(tmp_path / "run") is None  # the first trains on, its status untouched
    os.kill(first.pid, signal.SIGTERM)
    code, out = finish(first)
    assert read_status(tmp_path / "run")["status"] == "preempted", crash_report(out)


def test_a_config_error_line_is_never_lost(tmp_path: Path) -> None:
    """20 launches of 2 ranks with a bad value: every one shows the one-line message (4 launches at a time)."""
    recipe = write_recipe(tmp_path, str(tmp_path / "no-shards"))
    for wave in range(5):
        jobs = [start(recipe, "optim.lr=-1") for _ in range(4)]
        for job in jobs:
            code, out = finish(job, timeout=120)
            assert code != 0 and "config error: " in out and "optim needs 0 <= lr_min <= lr" in out, (
                f"wave {wave}: {crash_report(out)}"
            )
