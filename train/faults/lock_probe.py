"""Whether another process holds a run directory's lock (train.faults.run_lock), torch-free for the start-up
signal handler."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "run.lock"


def held_elsewhere(output_dir: str | Path) -> bool:
    """Whether another process holds the run directory's lock. For a process on its way out only: POSIX drops a
    process's own record locks on a file when it closes any descriptor of it, as this probe does."""
    try:
        fd = os.open(Path(output_dir) / LOCK_FILE, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
