"""A job signalled while its ranks start (before the first step): every rank ends "preempted" in status.json, so
tools/slurm_train.sbatch requeues it (the launched job, 2 CPU ranks with loader workers)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster_utils import crash_report, finish, logged_steps, start, workers, write_recipe
from train.faults.status import read_status

pytestmark = pytest.mark.slow


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (the start-up handler is installed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_sigterm_before_the_first_step_leaves_a_preempted_status(shards: str, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, shards)
    job = start(recipe)
    deadline = time.monotonic() + 120
    while True:  # both ranks have read the config (and handle SIGTERM) and are still starting: torch loads
        ranks = workers(job.pid)
        try:
            if len(ranks) == 2 and all(catches_sigterm(pid) for pid in ranks.values()):
                break
        except OSError:
            pass
        assert job.poll() is None and time.monotonic() < deadline, crash_report(job.stdout.read())
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGTERM)  # the launcher forwards it to the ranks
    code, out = finish(job)
    status = read_status(tmp_path / "run")
    assert status is not None, crash_report(out)
    assert (status["status"], status["exit_code"], status["step"]) == ("preempted", 75, None), status
    assert "before training began" in status["message"] and logged_steps(tmp_path / "run") == []
    assert "preempted during start-up" in out  # one line per rank says what happened
