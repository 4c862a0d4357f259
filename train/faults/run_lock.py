"""One job per run directory: rank 0 holds an exclusive lock on `<run.output_dir>/run.lock` for the run's life.

Two jobs writing one directory (started together, or a requeued job started while the old one still runs)
would both train: metrics.jsonl gets every step twice, `latest` points at one job's checkpoint beside the
other's, and a save of the same step deletes the other's temporary directory mid-write. The lock is a POSIX
record lock (fcntl.lockf, which NFS v4 and Lustre honour), so the kernel releases it when the holder dies;
the file keeps the holder's host, pid and start time for the message, and a lock left by a job that is gone
is taken over with a warning.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from train.config_io import ConfigError
from train.faults.lock_probe import LOCK_FILE
from train.faults.rank_sync import from_main

logger = logging.getLogger("fastflip")


class RunDirectoryLocked(ConfigError):
    """Another live job holds the run directory."""


class RunLock:
    """Exclusive lock on a run directory; `acquire` raises RunDirectoryLocked naming the holder."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    @classmethod
    def for_run(cls, output_dir: str | Path, is_main: bool) -> RunLock | None:
        """Rank 0 takes the lock (and returns it); every rank raises RunDirectoryLocked when it is taken."""
        lock, error = cls(output_dir) if is_main else None, None
        if lock is not None:
            try:
                lock.acquire()
            except RunDirectoryLocked as err:
                error = str(err)
        error = from_main(error)
        if error is not None:
            raise RunDirectoryLocked(error)
        return lock

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(fd)
            os.close(fd)
            raise RunDirectoryLocked(
                f"{self.path.parent} is in use by another job ({holder}); wait for it to end, stop it, or choose "
                "another run.output_dir"
            ) from None
        previous = self._holder(fd)
        if previous != "unknown holder":
            logger.warning("%s: taking over the lock of a job that is gone (%s)", self.path, previous)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Clear the holder and unlock (also done by the kernel if the process dies)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"null")
        except (OSError, ValueError):
            return "unknown holder"
        if not isinstance(info, dict):
            return "unknown holder"
        return f"host {info.get('host')}, pid {info.get('pid')}, started {info.get('started')}"
