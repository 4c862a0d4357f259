"""The one tiny run of the tests (a recipe dict, as a TrainConfig or a YAML file) and fixed synthetic batches."""

from __future__ import annotations

from typing import Any

import torch

from tests.ranks import REPO
from train.backends import variants
from train.config import TrainConfig
from train.config_io import from_dict


class FixedBatches:
    """Synthetic pairs with a fixed global batch per step; rank r takes rows [r*B, (r+1)*B) of it.

    Implements the data.types.TrainStream protocol the trainer uses (set_epoch, iteration, state_dict, ...).
    """

    keys_are_rows = True  # the index is the row

    def __init__(
        self,
        global_batch: int,
        rank: int,
        world_size: int,
        steps: int,
        num_samples: int = 48,
        image_size: int = 32,
        context_length: int = 77,
        seed: int = 0,
    ) -> None:
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

    def close(self) -> None:
        """No worker processes to stop."""


def tiny_recipe(out_dir: str, data_path: str = "synthetic", **sections: Any) -> dict[str, Any]:
    """The tiny fp32 FastCLIP-v3 run as a recipe dict; `sections` are merged into (or replace) its sections."""
    raw: dict[str, Any] = {
        "run": {"name": "test", "output_dir": out_dir, "seed": 0},
        "model": {"name": "tiny"},
        "data": {"path": data_path, "batch_size": 8, "workers": 0, "image_size": 32},
        "loss": {"name": "fastclip", "version": "v3", "lr_tau": 1e-3, "rho": 6.5},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "grad_clip": 1.0},
        "backend": {"name": "ddp"},
        "checkpoint": {"every_steps": 0, "keep_last": 5},
        "logging": {"every_steps": 1, "tensorboard": False},
    }
    for key, values in sections.items():
        raw[key] = raw.get(key, {}) | values if isinstance(values, dict) else values
    return raw


def backend_settings(variant: str) -> dict[str, Any]:
    """The backend section of a registered variant ('ddp', 'deepspeed:zero3', ...), with an absolute ds_config."""
    settings = dict(variants()[variant])
    if "ds_config" in settings.get("options", {}):
        settings["options"] = settings["options"] | {"ds_config": str(REPO / settings["options"]["ds_config"])}
    return settings


def one_variant_per_backend() -> list[str]:
    """Each registered backend once, in its most sharded variant (DeepSpeed: ZeRO-3)."""
    last = {variant.split(":")[0]: variant for variant in variants()}
    return list(last.values())


def tiny_config(out_dir: str, backend: str = "ddp", batch_size: int = 8, **loss: Any) -> TrainConfig:
    """The tiny run on `backend` (a registered variant); `loss` fields override FastCLIP-v3's."""
    raw = tiny_recipe(out_dir, data={"batch_size": batch_size}, backend=backend_settings(backend))
    raw["loss"] |= loss
    return from_dict(TrainConfig, raw, "tiny_config")
