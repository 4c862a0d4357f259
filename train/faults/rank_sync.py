"""Host-side agreement between ranks: every rank reaches the same decision, or none does.

Checkpoint writing, resume resolution and the run's stop conditions must not diverge between
ranks (one rank raising while the others wait in a collective is a hang). These helpers issue
one small collective each and are no-ops in a single process without a process group.
"""

from __future__ import annotations

import socket
from typing import Any

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def comm_device() -> torch.device:
    """NCCL moves only CUDA tensors; gloo moves CPU tensors without a device synchronisation."""
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_ranks(flag: bool) -> bool:
    """True when `flag` is true on every rank (a logical AND; doubles as a barrier)."""
    if not distributed():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def largest(value: float) -> float:
    """The largest `value` over the ranks (a MAX all-reduce)."""
    if not distributed():
        return value
    box = torch.tensor([value], dtype=torch.float64, device=comm_device())
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return float(box.item())


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (what rank 0 decided, so ranks on a shared filesystem cannot disagree)."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=comm_device())
    return box[0]


def summed(counts: dict[str, int]) -> dict[str, int]:
    """Per-key sums of every rank's counters (keys may differ between ranks)."""
    if not distributed():
        return dict(counts)
    gathered: list[dict[str, int]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, counts)
    total: dict[str, int] = {}
    for part in gathered:
        for key, value in part.items():
            total[key] = total.get(key, 0) + int(value)
    return total


def free_port() -> int:
    """A TCP port free right now on localhost, for a one-process rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
