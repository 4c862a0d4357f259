"""CPU seconds of a process and its loader workers, from Linux /proc: what one core delivers, whatever else the
machine runs. Imports nothing but the standard library, so a peer's script (benchmarks/open_clip_data_peer.py, run
in the peer's environment) can import it from its own folder."""

from __future__ import annotations

import os


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def with_children(pid: int) -> list[int]:
    """`pid` and its descendants (loader workers), from /proc."""
    out = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [p for child in f.read().split() for p in with_children(int(child))]
    return out


def per_cpu_s(samples: int, cpu: float) -> float:
    """Samples per CPU-second; the kernel counts CPU time in ticks (10 ms), so a shorter run counts as one tick."""
    return samples / max(cpu, 1 / os.sysconf("SC_CLK_TCK"))
