"""Collective timeouts: a hung rank ends the job with a message naming the rank and the operation.

Without a timeout a stopped rank (hung GPU, NFS stall, SIGSTOP) keeps the others waiting for the
backend defaults (30 min gloo, 10 min NCCL) and says nothing. The run uses two limits on every
process group: `backend.timeout_s` for setup, checkpointing and evaluation (slow, uneven work) and
`backend.step_timeout_s` while training steps run. gloo raises in the waiting rank, which
`watch` turns into CollectiveTimeout; NCCL's watchdog aborts the process with its own message
naming the collective (`WorkNCCL(..., OpType=...)`) after the same limit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import timedelta

import torch.distributed as dist

logger = logging.getLogger(__name__)

_KEY = "fastflip/timed_out/{rank}"
_REPORT_GRACE_S = 10.0  # how long survivors wait for each other to report before naming the silent ranks


class CollectiveTimeout(RuntimeError):
    """A collective did not complete in time: some rank stopped answering."""


def set_collective_timeout(seconds: float) -> None:
    """Apply `seconds` to every process group that exists now (the default one, FSDP's mesh, DeepSpeed's)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    timeout = timedelta(seconds=seconds)
    set_timeout = getattr(dist, "set_timeout", None) or dist.distributed_c10d._set_pg_timeout  # torch < 2.12
    for group in list(dist.distributed_c10d._world.pg_names):
        set_timeout(timeout, group)


def is_timeout(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("timed out" in text or "timeout" in text)


@contextlib.contextmanager
def watch(operation: str, seconds: float) -> Iterator[None]:
    """Turn a collective timeout inside the block into CollectiveTimeout naming the ranks that did not answer."""
    try:
        yield
    except RuntimeError as err:
        if not is_timeout(err) or isinstance(err, CollectiveTimeout):
            raise
        rank = dist.get_rank() if dist.is_initialized() else 0
        silent = silent_ranks(operation)
        who = f"rank(s) {', '.join(map(str, silent))} did not answer" if silent else "the silent rank is unknown"
        raise CollectiveTimeout(
            f"rank {rank}: a collective during {operation} did not complete within {seconds:g} s; {who} "
            "(stopped process, hung GPU or filesystem stall?). Raise backend.step_timeout_s / backend.timeout_s if "
            "the work is just slow; otherwise resume with checkpoint.resume=latest"
        ) from err


def silent_ranks(operation: str) -> list[int]:
    """Ranks that did not report a timeout of their own within a grace period, via the rendezvous store.

    Every rank that times out writes its key; a rank still blocked elsewhere or stopped never does. Empty
    when the store itself does not answer (e.g. it lives in the stopped rank).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return []
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=5))
        store.set(_KEY.format(rank=dist.get_rank()), operation)
        ranks = range(dist.get_world_size())
        deadline = time.monotonic() + _REPORT_GRACE_S
        while True:
            missing = [r for r in ranks if not store.check([_KEY.format(rank=r)])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)
    except (RuntimeError, ValueError) as err:
        logger.warning("could not ask the rendezvous store which rank is silent: %s", err)
        return []
