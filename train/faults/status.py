"""`<run.output_dir>/status.json`: how a run ended, for a batch script to act on.

`accelerate launch` and `torchrun` exit 1 whatever their ranks returned, so a script cannot tell a
preempted run (requeue it) from a diverged one or a config error (do not). The ranks write the
outcome here before they exit: {"status", "exit_code", "step", "message", "time", "host"}.
`tools/slurm_train.sbatch` requeues only on "preempted" and "data unavailable".
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from train.faults.exit_codes import status_of

STATUS_FILE = "status.json"


def write_status(
    output_dir: str | Path, exit_code: int, message: str, step: int | None, replace: bool = True
) -> Path | None:
    """Write the outcome atomically (a reader never sees half a file; ranks writing the same outcome race safely).
    With `replace=False` an existing status.json is kept (and None returned): a guess such as "preempted during
    start-up" never hides the real outcome another rank wrote (tools/slurm_train.sbatch deletes the file before
    it launches, so a job's first status wins)."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "status": status_of(exit_code),
        "exit_code": int(exit_code),
        "step": step,
        "message": message,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
    }
    if not replace:
        try:
            fd = os.open(directory / STATUS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(record, indent=2) + "\n")
        return directory / STATUS_FILE
    tmp = directory / f".{STATUS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, directory / STATUS_FILE)
    return directory / STATUS_FILE


def read_status(output_dir: str | Path) -> dict[str, Any] | None:
    path = Path(output_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
