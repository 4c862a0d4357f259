"""Helpers for trainer tests: fixed synthetic batches and tiny configs (spawn ranks with tests.conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data.config import DataConfig
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
