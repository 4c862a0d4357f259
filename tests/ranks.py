"""The one harness for multi-rank tests: run a function on K fresh CPU rank processes (gloo) and collect the results.

Every rank starts like a process of `torchrun` / `accelerate launch` on a CPU machine: MASTER_ADDR/PORT,
RANK, LOCAL_RANK, WORLD_SIZE in the environment, ACCELERATE_USE_CPU=1 and one thread (2 ranks share a
2-core machine). Code that expects an open process group (losses, evaluation) asks the harness to join
one (`init_group=True`); code that joins it itself (the trainer's backends) does not.

Ranks are forked from a fork server that imported torch and the trainer once (`forkserver` start
method with a preload), so a rank starts in a fraction of a second instead of importing for 4 s; no
process group, thread pool or CUDA context exists in the server when it forks.

Usage: `from tests.ranks import run_on_ranks`; `fn(rank, world_size, *args)` must be defined at module
level (ranks import it by name) and return something `torch.save` can write.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.faults.rank_sync import free_port

REPO = Path(__file__).resolve().parents[1]  # the repository root, for every test
KILLED_EXIT_CODE = 17  # a rank "killed" on purpose by a test exits with this (os._exit: no cleanup)
multiprocessing.set_forkserver_preload(["tests.ranks", "train.trainer"])


def _rank_main(
    rank: int, fn: Callable[..., Any], world_size: int, port: int, init_group: bool, out_dir: str, args: tuple
) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "OMP_NUM_THREADS": "1",
            "ACCELERATE_USE_CPU": "1",
            "TORCH_EXTENSIONS_DIR": str(REPO / ".venv" / "torch_extensions"),
        }
    )
    torch.set_num_threads(1)
    multiprocessing.set_start_method("fork", force=True)  # loader workers start as under torchrun on Linux
    if init_group:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120))
    result = fn(rank, world_size, *args)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    if dist.is_initialized():  # leave no gloo thread running at interpreter exit
        dist.barrier()
        dist.destroy_process_group()
    # End as launched ranks do (train.cli.exit_process): multiprocessing's exit would SIGTERM the rank's loader
    # workers and wait for them, and they ignore SIGTERM (data.batching.WORKER_IGNORED_SIGNALS).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_on_ranks(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: tuple = (),
    *,
    init_group: bool = False,
    timeout: float = 300.0,
) -> list[Any]:
    """Per-rank results of `fn(rank, world_size, *args)`, each rank a fresh process.

    A rank's exception is re-raised here with its traceback; a run over `timeout` seconds raises
    TimeoutError (a hang must fail, not stall the suite). A rank that exits with KILLED_EXIT_CODE
    (a test's deliberate kill) stops the others and every result is None.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _rank_main,
            args=(fn, world_size, free_port(), init_group, out_dir, args),
            nprocs=world_size,
            join=False,
            start_method="forkserver",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=0.1):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{getattr(fn, '__name__', fn)} on {world_size} ranks ran over {timeout:.0f} s")
        except mp.ProcessExitedException as err:
            if err.exit_code != KILLED_EXIT_CODE:
                raise
            return [None] * world_size
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def die_after_logging(trainer: Any, kill_at: int) -> None:
    """Make a rank end like a SIGKILL (no cleanup, no final checkpoint) right after it logs step `kill_at`."""
    log = trainer.metrics.log

    def log_then_die(step: int, scalars: dict) -> None:
        log(step, scalars)
        if step == kill_at:
            os._exit(KILLED_EXIT_CODE)

    trainer.metrics.log = log_then_die
