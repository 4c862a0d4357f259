"""tools/slurm_train.sbatch with stand-ins for srun, scontrol and the launcher: what reaches the recipe, and what
the script does with each outcome a run writes in status.json (no training: the launcher stand-in records its
arguments and writes the status a run would)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.ranks import REPO
from tests.test_cluster_preemption import stand_ins
from tests.tiny_run import tiny_recipe

pytestmark = pytest.mark.slow  # each job starts python twice (the config check, the status read)

HOSTILE = (
    "run.name=x;touch PWNED",
    "run.name=$(touch PWNED2)",
    "data.path=/data/cc/{000..002}.tar",
    "run.name=lab run `touch PWNED3` 1",
)


def _setup(tmp_path: Path, status: dict | None, sleep: float = 0) -> tuple[Path, Path, dict[str, str]]:
    """A recipe, the stand-ins (accelerate: records argv, sleeps, writes `status`), and the job's environment."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(str(tmp_path / "run"), "/data/cc")))
    bin_dir = stand_ins(tmp_path / "bin")
    (bin_dir / "accelerate").unlink()
    (bin_dir / "accelerate").write_text(
        '#!/bin/bash\nprintf "%s\\0" "$@" > "$ARGS_LOG"\nsleep "$FAKE_SLEEP"\n'
        'if [ -n "$FAKE_STATUS" ]; then mkdir -p "$RUN_DIR"; echo "$FAKE_STATUS" > "$RUN_DIR/status.json"; fi\nexit 1\n'
    )
    (bin_dir / "accelerate").chmod(0o755)
    env = os.environ | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "REQUEUE_LOG": str(tmp_path / "requeued"),
        "ARGS_LOG": str(tmp_path / "args"),
        "FAKE_STATUS": json.dumps(status) if status else "",
        "FAKE_SLEEP": str(sleep),
        "RUN_DIR": str(tmp_path / "run"),
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "GPUS_PER_NODE": "2",
    }
    return recipe, bin_dir, env


def _sbatch(recipe: Path, env: dict[str, str], *overrides: str, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(REPO / "tools" / "slurm_train.sbatch"), str(recipe), *overrides],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _status(step: int | None, status: str, code: int) -> dict:
    return {"status": status, "exit_code": code, "step": step, "message": ""}


def test_overrides_reach_the_recipe_as_typed_and_never_run(tmp_path: Path) -> None:
    recipe, _, env = _setup(tmp_path, _status(5, "completed", 0))
    job = _sbatch(recipe, env, *HOSTILE, "logging.project=my lab project")
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out
    args = (tmp_path / "args").read_text().split("\0")[:-1]
    assert args[args.index("--config") :] == [
        "--config",
        str(recipe),
        "checkpoint.resume=latest",
        *HOSTILE,
        "logging.project=my lab project",
    ]
    assert not list(REPO.glob("PWNED*")) and not list(tmp_path.glob("PWNED*"))
    assert args[args.index("--machine_rank") + 1] == "0" and args[args.index("--num_processes") + 1] == "2"


@pytest.mark.parametrize(
    ("status", "last_line", "requeued", "code"),
    [
        (
            _status(12, "preempted", 75),
            "preempted at step 12, saved; requeued job 42, which resumes with checkpoint.resume=latest",
            True,
            0,
        ),
        (
            _status(7, "data unavailable", 69),
            "data unavailable at step 7, saved; requeued job 42, which resumes with checkpoint.resume=latest",
            True,
            0,
        ),
        (
            _status(None, "data unavailable", 69),
            "data unavailable before the first step, nothing new to save; requeued job 42",
            True,
            0,
        ),
        (_status(3, "config error", 2), "run ended: config_error, exit code 2", False, 2),
        (_status(30, "completed", 0), "run ended: completed, exit code 0", False, 0),
    ],
)
def test_each_outcome_ends_in_one_line_and_only_transient_ones_are_requeued(
    tmp_path: Path, status: dict, last_line: str, requeued: bool, code: int
) -> None:
    recipe, _, env = _setup(tmp_path, status)
    job = _sbatch(recipe, env)
    out, _ = job.communicate(timeout=60)
    assert out.strip().splitlines()[-1].startswith(last_line) and job.returncode == code, out
    assert (tmp_path / "requeued").exists() == requeued


def test_data_unavailable_is_requeued_a_bounded_number_of_times(tmp_path: Path) -> None:
    recipe, _, env = _setup(tmp_path, _status(7, "data unavailable", 69))
    job = _sbatch(recipe, env | {"SLURM_RESTART_COUNT": "3"})
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 69 and "not requeued: job 42 already ran 3 times" in out, out
    assert not (tmp_path / "requeued").exists()


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_before_any_status_is_requeued(tmp_path: Path, sig: signal.Signals) -> None:
    """The job is signalled while its ranks start (no status.json yet): the script still requeues."""
    recipe, _, env = _setup(tmp_path, None, sleep=30)
    job = _sbatch(recipe, env)
    deadline = time.monotonic() + 30
    while not (tmp_path / "args").exists():  # the launcher stand-in runs
        assert time.monotonic() < deadline and job.poll() is None
        time.sleep(0.05)
    job.send_signal(sig)
    out, _ = job.communicate(timeout=60)
    assert out.strip().splitlines()[-1] == (
        "preempted before the first step: nothing new to save; requeued job 42 (it resumes from the last checkpoint, "
        "if any)"
    ), out
    assert job.returncode == 0 and (tmp_path / "requeued").read_text() == "requeue 42\n"
