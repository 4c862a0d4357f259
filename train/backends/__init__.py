"""Backends in a registry: ddp (accelerate), deepspeed (accelerate DeepSpeedPlugin), fsdp2 (our fully_shard).

Adding a backend means one module with a `Backend` subclass (which answers every backend question:
precisions, optimizers, resume on another world size, config checks, memory estimate, checkpoint
consolidation) plus one line in `_REGISTRY`. Modules are imported lazily (DeepSpeed is slow to import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from train.backends.base import Backend

if TYPE_CHECKING:
    from train.config import TrainConfig

_REGISTRY = {
    "ddp": "train.backends.ddp:DDPBackend",
    "deepspeed": "train.backends.deepspeed:DeepSpeedBackend",
    "fsdp2": "train.backends.fsdp2:FSDP2Backend",
}
BACKENDS = tuple(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass registered as `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"backend.name must be one of {BACKENDS}, got {name!r}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_backend(cfg: TrainConfig, hidden_size: int) -> Backend:
    """Join the process group of the configured backend."""
    return backend_class(cfg.backend.name).create(cfg, hidden_size)


__all__ = ["BACKENDS", "Backend", "backend_class", "make_backend"]
