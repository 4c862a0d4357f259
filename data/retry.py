"""Remote reads survive an outage: transient errors are retried with backoff for `data.remote_retry_s`, each
retry logged; past that bound DataUnavailable ends the run with the requeueable status "data unavailable"
(exit 69: the trainer saves the current step first, tools/slurm_train.sbatch requeues the job).

Not transient, so never retried: a missing file (FileNotFoundError), a refusal (PermissionError: 403 / access
denied, see data/remote.py) and a shard that differs from its index (data/integrity.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from data.integrity import OneLineError

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_WAIT_S, MAX_WAIT_S = 1.0, 30.0
EXIT_DATA_UNAVAILABLE = 69  # EX_UNAVAILABLE


class DataUnavailable(OneLineError, OSError):
    """Remote data stayed unreachable for longer than data.remote_retry_s."""


def is_transient(err: BaseException) -> bool:
    """Connection refused / reset, timeouts, 5xx answers: errors that a later attempt may not meet. fsspec's HTTP
    filesystem reports an unreachable server as FileNotFoundError raised from the connection error: its cause
    decides."""
    if isinstance(err, FileNotFoundError):
        return unreachable(err)
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError | OneLineError):
        return False
    if isinstance(err, OSError | TimeoutError | ConnectionError):
        return True
    module = type(err).__module__.split(".")[0]
    return module in ("aiohttp", "botocore", "urllib3", "requests", "fsspec", "s3fs", "gcsfs")


def unreachable(err: FileNotFoundError) -> bool:
    """Whether a FileNotFoundError stands for a server that did not answer (fsspec's HTTP filesystem raises it
    from the connection error), not for a missing file (a 404, S3's NoSuchKey)."""
    cause = err.__cause__
    if cause is None or isinstance(cause, FileNotFoundError | PermissionError):
        return False
    if isinstance(cause, ConnectionError | TimeoutError | OSError):
        return True
    name = type(cause).__name__
    return type(cause).__module__.startswith("aiohttp") and any(w in name for w in ("Connect", "Disconnect", "Timeout"))


def retrying(action: Callable[[], T], what: str, retry_s: float) -> T:
    """`action()`, retried with doubling waits (1 s up to 30 s) while it fails transiently and `retry_s` has not
    passed since the first failure; then DataUnavailable naming `what` and the last error."""
    started, wait, attempt = None, FIRST_WAIT_S, 0
    while True:
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - sorted below: transient ones are retried
            if not is_transient(err):
                raise
            now = time.monotonic()
            started = now if started is None else started
            left = retry_s - (now - started)
            attempt += 1
            if left <= 0:
                raise DataUnavailable(f"{what} unreachable for {now - started:.0f} s (data.remote_retry_s="
                                      f"{retry_s:g}): {type(err).__name__}: {_first_line(err)}") from None
            pause = min(wait, left, MAX_WAIT_S)
            log.warning("reading %s failed (%s: %s); retry %d in %.0f s (giving up after data.remote_retry_s=%g s)",
                        what, type(err).__name__, _first_line(err), attempt, pause, retry_s)  # fmt: skip
            time.sleep(pause)
            wait *= 2


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
