"""Helpers for trainer tests: launch Trainer on K spawned CPU ranks, fixed synthetic batches, tiny configs."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data.config import DataConfig
from tests.distributed_utils import free_port
from train.config import (
    BackendConfig,
    CheckpointConfig,
    LoggingConfig,
    ModelSection,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from train.losses import LossConfig

REPO = Path(__file__).resolve().parents[1]


def _worker(rank: int, fn: Callable[..., Any], world_size: int, port: int, out_dir: str, args: tuple) -> None:
    """Set the environment a launcher (torchrun / accelerate launch) would set; the backend joins the group."""
    os.environ.update({
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "1", "TORCH_EXTENSIONS_DIR": str(REPO / ".venv" / "torch_extensions"),
    })  # fmt: skip
    torch.set_num_threads(1)
    result = fn(rank, world_size, *args)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    if dist.is_initialized():  # leave no gloo threads running at interpreter exit
        dist.barrier()
        dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world_size: int, args: tuple = (), timeout: float = 300.0) -> list[Any]:
    """Per-rank results of `fn(rank, world_size, *args)`.

    A rank's exception is re-raised here with its traceback. A rank that exits with
    KILLED_EXIT_CODE (a test's deliberate kill) stops the others and every result is None.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _worker, args=(fn, world_size, free_port(), out_dir, args), nprocs=world_size, join=False,
            start_method="spawn",
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{fn.__name__} on {world_size} ranks ran over {timeout:.0f} s")
        except mp.ProcessExitedException as err:
            if err.exit_code != KILLED_EXIT_CODE:
                raise
            return [None] * world_size
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


KILLED_EXIT_CODE = 17  # what a rank "killed" on purpose by a test exits with (os._exit: no cleanup)


class FixedBatches:
    """Synthetic pairs with a fixed global batch per step; rank r takes rows [r*B, (r+1)*B) of it.

    Implements the TrainLoader interface the trainer uses (set_epoch, iteration, state_dict, ...).
    """

    def __init__(self, global_batch: int, rank: int, world_size: int, steps: int, num_samples: int = 48,
                 image_size: int = 32, context_length: int = 77, seed: int = 0) -> None:  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(num_samples, 3, image_size, image_size, generator=g)
        self.tokens = torch.randint(1, 49000, (num_samples, context_length), generator=g)
        self.tokens[:, 0] = 49406
        self.tokens[:, 8] = 49407
        self.tokens[:, 9:] = 0
        self.order = [torch.randperm(num_samples, generator=g)[:global_batch] for _ in range(steps)]
        self.local = global_batch // world_size
        self.rank = rank
        self.num_samples = num_samples
        self.steps_per_epoch = steps
        self.epoch, self.position = 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self):
        while self.position < self.steps_per_epoch:
            rows = self.order[self.position][self.rank * self.local : (self.rank + 1) * self.local]
            self.position += 1
            yield {"images": self.images[rows], "tokens": self.tokens[rows], "index": rows.clone()}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int], strict: bool = True) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def skipped_counts(self) -> dict[str, int]:
        return {}


def tiny_config(out_dir: str, backend: str = "ddp", batch_size: int = 8, **loss: Any) -> TrainConfig:
    """A tiny fp32 run; `loss` fields override FastCLIP-v3 defaults."""
    ds_config = str(REPO / "ds_configs" / f"{backend.split(':')[1]}.json") if backend.startswith("deepspeed") else ""
    return TrainConfig(
        run=RunConfig(name="test", output_dir=out_dir, seed=0),
        model=ModelSection(name="tiny"),
        data=DataConfig(path="synthetic", batch_size=batch_size, workers=0, image_size=32),
        loss=LossConfig(**({"name": "fastclip", "version": "v3", "lr_tau": 1e-3, "rho": 6.5} | loss)),
        optim=OptimConfig(lr=1e-3, warmup_steps=2, grad_clip=1.0),
        backend=BackendConfig(name=backend.split(":")[0], ds_config=ds_config),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=5),
        logging=LoggingConfig(every_steps=1, tensorboard=False),
    )
