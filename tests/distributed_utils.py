"""Run a function on K gloo ranks (CPU) from a test and collect each rank's return value.

`fn(rank, world_size, *args)` must be importable (module level) and return something
torch.save can write. Each rank uses one thread; a rank's exception fails the call with
the rank's traceback; a hang fails it after `timeout` seconds.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, fn: Callable[..., Any], world_size: int, init_method: str, out_dir: str, args: tuple) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        torch.save(fn(rank, world_size, *args), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable[..., Any], world_size: int = 2, args: tuple = (), timeout: float = 300.0) -> list[Any]:
    """Per-rank results of `fn(rank, world_size, *args)` run under a fresh gloo process group."""
    with tempfile.TemporaryDirectory() as out_dir:
        init_method = f"tcp://127.0.0.1:{free_port()}"
        context = mp.start_processes(_worker, args=(fn, world_size, init_method, out_dir, args),
                                     nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{getattr(fn, '__name__', fn)} on {world_size} ranks ran over {timeout:.0f} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
