"""Launch real training jobs the way a cluster does (`accelerate launch`, 2 CPU ranks) and poke them.

Each job is a tiny-model recipe YAML on real shards; tests send signals to the launcher or a worker,
stop a rank, or launch two "nodes" on localhost, then read exit codes, stderr and the run directory.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.ranks import REPO
from tests.tiny_run import tiny_recipe
from train.faults.rank_sync import free_port

ACCELERATE = str(REPO / ".venv" / "bin" / "accelerate")
CPU_CONFIG = str(REPO / "ds_configs" / "accelerate_cpu_2proc.yaml")


def write_recipe(directory: Path, shards: str, **sections: Any) -> Path:
    """The tiny run as a ddp recipe on `shards` (5 steps per epoch on 2 ranks x 4, one loader worker per rank as
    every shipped recipe has, checkpoints every 2 steps, 2 epochs) with `sections` merged in; returns its path."""
    base = {
        "data": {"batch_size": 4, "shuffle_window": 16, "workers": 1},
        "checkpoint": {"every_steps": 2, "keep_last": 3},
        "run": {"name": "cluster"},
        "epochs": 2,
    }
    raw = tiny_recipe(str(directory / "run"), shards, **base)
    for key, values in sections.items():
        raw[key] = raw.get(key, {}) | values if isinstance(values, dict) else values
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def job_env(**extra: str) -> dict[str, str]:
    return (
        os.environ
        | {
            "OMP_NUM_THREADS": "1",
            "ACCELERATE_USE_CPU": "1",
            "PYTHONPATH": str(REPO),
            "TORCH_EXTENSIONS_DIR": str(REPO / ".venv" / "torch_extensions"),
        }
        | extra
    )


def launch_args(port: int, *extra: str) -> list[str]:
    return [ACCELERATE, "launch", "--config_file", CPU_CONFIG, "--main_process_port", str(port), *extra]


def start(recipe: Path, *overrides: str, launcher: tuple[str, ...] = (), env: dict | None = None) -> subprocess.Popen:
    """`accelerate launch ... recipes/run_recipe.py --config recipe overrides` in its own process group."""
    cmd = [*launch_args(free_port(), *launcher), str(REPO / "recipes" / "run_recipe.py"), "--config", str(recipe)]
    return subprocess.Popen(
        [*cmd, *overrides],
        cwd=REPO,
        env=env or job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(job: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    """Exit code and output; a job still running after `timeout` s is killed (with its workers) and fails."""
    try:
        out, _ = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in workers(job.pid).values():  # they run in sessions of their own and hold the output pipe
            os.kill(pid, signal.SIGKILL)
        os.killpg(job.pid, signal.SIGKILL)
        out, _ = job.communicate()
        raise AssertionError(f"job ran over {timeout:.0f} s: {crash_report(out)}") from None
    return job.returncode, out


def finish_all(jobs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    """`finish` for jobs that run together (nodes of one job): all are awaited at once, and a failure
    shows the output of every one of them."""
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        outcomes = list(pool.map(lambda job: _outcome(job, timeout), jobs))
    if any(isinstance(o, AssertionError) for o in outcomes):
        texts = [str(o) if isinstance(o, AssertionError) else f"exit {o[0]}:\n{crash_report(o[1])}" for o in outcomes]
        raise AssertionError("\n".join(f"=== job {i} ===\n{t}" for i, t in enumerate(texts)))
    return outcomes


def _outcome(job: subprocess.Popen, timeout: float) -> tuple[int, str] | AssertionError:
    try:
        return finish(job, timeout)
    except AssertionError as err:
        return err


def run(recipe: Path, *overrides: str, timeout: float = 240) -> tuple[int, str]:
    return finish(start(recipe, *overrides), timeout)


def logged_steps(run_dir: Path) -> list[int]:
    """Training steps in metrics.jsonl, in file order (evaluation lines left out)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row["step"] for row in rows if "train/loss" in row]


def wait_for_step(run_dir: Path, step: int, job: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not any(s >= step for s in logged_steps(run_dir)):
        if job.poll() is not None:
            raise AssertionError(f"job ended (exit {job.returncode}) before step {step}:\n{job.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"step {step} not reached in {timeout:.0f} s")
        time.sleep(0.1)


def workers(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes (read from their environment)."""
    found = {}
    for child in Path("/proc").glob("[0-9]*"):
        try:
            if int((child / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher_pid:
                continue
            environ = dict(item.split("=", 1) for item in (child / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in environ:
            found[int(environ["RANK"])] = int(child.name)
    return found


def crash_report(out: str) -> str:
    """The part of a job's output that explains a crash: each worker's fatal-error dump (faulthandler's
    thread stacks, C++ `terminate called ...`) if there is one, and the end of the output."""
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if "Fatal Python error" in line or "terminate called" in line]
    dumps = ["\n".join(lines[max(i - 5, 0) : i + 60]) for i in starts]
    return "\n--- fatal error dump ---\n".join(["Output (fatal error dumps, then the end):", *dumps, out[-3000:]])
