"""Remote reads survive an outage: transient errors are retried with backoff for `data.webdataset.remote_retry_s`, each
retry logged; past that bound DataUnavailable ends the run with the requeueable status "data unavailable"
(exit 69: the trainer saves the current step first, tools/slurm_train.sbatch requeues the job).

Transient (an allow-list, `is_transient`): connection errnos, client libraries' connection errors and timeouts,
5xx answers. Everything else is raised at once: a missing file (FileNotFoundError), a refusal (PermissionError:
403 / access denied, see data/remote.py; botocore's missing credentials become AccessDenied too), a full or
read-only disk, and a shard that differs from its index (data/integrity.py)."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from data.integrity import OneLineError

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_WAIT_S, MAX_WAIT_S = 1.0, 30.0
# past data.webdataset.remote_retry_s: the last wait (MAX_WAIT_S at most) and the read that gives up
RETRY_MARGIN_S = 60.0


class DataUnavailable(OneLineError, OSError):
    """Remote data stayed unreachable for longer than data.webdataset.remote_retry_s."""


# errnos of a connection that failed or broke: a later attempt may succeed. Everything else an OSError carries
# (ENOSPC, EROFS, EACCES, ...) is a fault of this machine or of the request, and retrying cannot fix it.
CONNECTION_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EPIPE,
    }
)
# Client libraries' connection failures, by (top-level module, class name), matched along the class's MRO.
TRANSIENT_CLASSES = frozenset(
    {
        ("aiohttp", "ClientConnectionError"),  # refused, reset, server disconnected, server timeout
        ("botocore", "EndpointConnectionError"),
        ("botocore", "ConnectTimeoutError"),
        ("botocore", "ReadTimeoutError"),
        ("botocore", "ConnectionClosedError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    }
)
NEVER_TRANSIENT = ("Certificate", "SSL")  # a TLS failure is a connection error in aiohttp, but it stays
CREDENTIAL_CLASSES = frozenset({("botocore", "NoCredentialsError"), ("botocore", "PartialCredentialsError")})


def _is_one_of(err: BaseException, classes: frozenset[tuple[str, str]]) -> bool:
    return any((c.__module__.split(".")[0], c.__name__) in classes for c in type(err).__mro__)


def is_transient(err: BaseException) -> bool:
    """Connection refused / reset / unreachable, timeouts, 5xx answers: errors that a later attempt may not meet.
    An allow-list: a full or read-only disk, missing credentials or a missing file are never retried. fsspec's
    HTTP filesystem reports an unreachable server as FileNotFoundError raised from the connection error: its
    cause decides."""
    if isinstance(err, FileNotFoundError):
        return unreachable(err)
    if isinstance(err, PermissionError | IsADirectoryError | NotADirectoryError | OneLineError):
        return False
    if any(word in type(err).__name__ for word in NEVER_TRANSIENT):
        return False
    if isinstance(err, ConnectionError | TimeoutError) or _is_one_of(err, TRANSIENT_CLASSES):
        return True
    if isinstance(err, OSError) and err.errno in CONNECTION_ERRNOS:
        return True
    return _server_error(err)


def _server_error(err: BaseException) -> bool:
    """A 5xx answer: aiohttp's ClientResponseError (`status`), botocore's ClientError (`response`)."""
    status = getattr(err, "status", None)
    if status is None:
        status = (
            getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(getattr(err, "response", None), dict)
            else None
        )
    return isinstance(status, int) and 500 <= status < 600


def missing_credentials(err: BaseException) -> bool:
    """botocore found no (or half the) credentials: AccessDenied, never a retry or a missing shard."""
    return _is_one_of(err, CREDENTIAL_CLASSES)


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


def check_retry_bound(retry_s: float, step_timeout_s: float) -> None:
    """A rank retrying remote reads must give up (and end "data unavailable", requeued) before the other ranks'
    collectives time out waiting for it (which ends the job as "hung rank", never requeued)."""
    if retry_s + RETRY_MARGIN_S >= step_timeout_s:
        raise ValueError(
            f"data.webdataset.remote_retry_s ({retry_s:g} s) + {RETRY_MARGIN_S:g} s must stay below "
            f"backend.step_timeout_s ({step_timeout_s:g} s), or the other ranks time out first and the job ends "
            "'hung rank' instead of being requeued: lower data.webdataset.remote_retry_s or raise "
            "backend.step_timeout_s"
        )


class AccessDenied(PermissionError):
    """The store refused to serve a file (403 / access denied): credentials, not missing data."""


def access_denied(url: str, err: BaseException) -> AccessDenied:
    """One line naming the bucket (or host) and the credentials to check; dropping data is never the fix."""
    where = url.split("://", 1)[-1].split("/", 1)[0]
    kind = "bucket" if url.startswith(("s3://", "gs://", "gcs://", "az://", "abfs://")) else "host"
    said = str(err).strip().splitlines()[0] if str(err).strip() else "forbidden"
    return AccessDenied(
        f"access denied to {url} ({type(err).__name__}: {said}): "
        f"the credentials in use may not read {kind} {where!r}. Check them (AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY / AWS_PROFILE / ~/.aws, gcloud auth, FSSPEC_* settings) and the "
        f"{kind}'s policy; the shards exist but cannot be read with them"
    )


def retrying(action: Callable[[], T], what: str, retry_s: float) -> T:
    """`action()`, retried with doubling waits (1 s up to 30 s) while it fails transiently and `retry_s` has not
    passed since the first failure; then DataUnavailable naming `what` and the last error."""
    started, wait, attempt = None, FIRST_WAIT_S, 0
    while True:
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - sorted below: transient ones are retried
            if missing_credentials(err):
                raise access_denied(what, err) from None
            if not is_transient(err):
                raise
            now = time.monotonic()
            started = now if started is None else started
            left = retry_s - (now - started)
            attempt += 1
            if left <= 0:
                raise DataUnavailable(
                    f"{what} unreachable for {now - started:.0f} s (data.webdataset.remote_retry_s="
                    f"{retry_s:g}): {type(err).__name__}: {_first_line(err)}"
                ) from None
            pause = min(wait, left, MAX_WAIT_S)
            log.warning(
                "reading %s failed (%s: %s); retry %d in %.0f s (giving up after data.webdataset.remote_retry_s=%g s)",
                what,
                type(err).__name__,
                _first_line(err),
                attempt,
                pause,
                retry_s,
            )
            time.sleep(pause)
            wait *= 2


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
