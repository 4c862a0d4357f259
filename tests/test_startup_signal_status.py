"""The start-up signal handler (train.faults.preemption.preempt_during_startup) never hides a real outcome: when a
rank fails in setup and writes its status, the launcher SIGTERMs the others, and they must not turn the failure
into "preempted" (which tools/slurm_train.sbatch would requeue forever); nor may it write into a run directory
another job holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ranks import REPO
from tests.tiny_run import tiny_recipe
from train.faults.status import read_status, write_status

# A rank still starting: the start-up handler is installed; it says so, then waits for the launcher's signal.
STARTING_RANK = """
import sys, time
from train.faults.preemption import preempt_during_startup
preempt_during_startup(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


pytestmark = pytest.mark.slow  # every test here spawns a rank or a lock holder


def _signalled_while_starting(run: Path) -> tuple[int, str]:
    """(exit code, stderr) of a starting rank that gets SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOCAL_RANK": "1"}
    rank = subprocess.Popen(
        [sys.executable, "-c", STARTING_RANK, str(run)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert rank.stdout.readline().strip() == "ready"
    rank.send_signal(signal.SIGTERM)
    _, err = rank.communicate(timeout=30)
    return rank.returncode, err


def test_a_rank_failed_in_setup_keeps_its_status_when_the_others_are_signalled(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_status(run, 2, "config error: data.path /nowhere does not exist", None)  # rank 0 failed in setup
    code, err = _signalled_while_starting(run)
    assert code == 75, err
    status = read_status(run)
    assert (status["status"], status["exit_code"]) == ("config error", 2), status


def test_a_signal_while_starting_writes_preempted_when_nothing_else_did(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, err = _signalled_while_starting(run)
    assert code == 75 and "preempted during start-up" in err, err
    assert read_status(run)["status"] == "preempted"


def test_a_signal_while_starting_leaves_another_jobs_run_directory_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom train.faults.run_lock import RunLock\n"
            "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
            str(run),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _signalled_while_starting(run)
    finally:
        holder.kill()
        holder.wait()
    assert code == 75, err
    assert read_status(run) is None  # the other job's directory got no "preempted"


def test_supervise_ends_the_startup_handler_when_setup_fails(tmp_path: Path) -> None:
    """After supervise caught this rank's own error (a check across sections, after train.cli read the recipe), a
    signal takes its default action (no 'preempted')."""
    script = """
import os, signal, sys
from train.cli import parse_args
from train.config import read_config
from train.faults.preemption import preempt_during_startup
from train.supervise import supervise
preempt_during_startup(sys.argv[1])
args = parse_args(["--config", sys.argv[2]], "")
assert supervise(args, read_config(args.config, args.overrides)) == 2
os.kill(os.getpid(), signal.SIGTERM)
"""
    run, recipe = tmp_path / "run", tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(str(run), data={"image_size": 64})))  # the tiny model takes 32 px
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOCAL_RANK": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(run), str(recipe)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
    assert read_status(run) is None
