"""Backends in a registry: ddp (accelerate), deepspeed (accelerate DeepSpeedPlugin), fsdp2 (our fully_shard).

Adding a backend means one module with a `Backend` subclass (which answers every backend question:
precisions, optimizers, its own `backend.options` and launcher settings, resume on another world size, config
checks, memory estimate, local shards, learning rates, checkpoint consolidation) plus one line in `_REGISTRY`.
Modules are imported lazily (DeepSpeed is slow to import).
"""

from __future__ import annotations

import importlib
from typing import Any

from train.backends.base import Backend

# name -> (class, the named settings tests and benchmarks run it with: variant -> backend.options)
_REGISTRY: dict[str, tuple[str, dict[str, dict[str, str]]]] = {
    "ddp": ("train.backends.ddp:DDPBackend", {"": {}}),
    "deepspeed": (
        "train.backends.deepspeed:DeepSpeedBackend",
        {f"zero{s}": {"ds_config": f"ds_configs/zero{s}.json"} for s in (1, 2, 3)},
    ),
    "fsdp2": ("train.backends.fsdp2:FSDP2Backend", {"": {}}),
}
BACKENDS = tuple(_REGISTRY)


def variants() -> dict[str, dict[str, Any]]:
    """Every registered way to run a backend ('ddp', 'deepspeed:zero2', ...) -> its backend section: name, and
    options where it has any (ds_config paths relative to the repository); tests and benchmarks iterate over these."""
    return {
        f"{name}:{variant}" if variant else name: {"name": name} | ({"options": options} if options else {})
        for name, (_, named) in _REGISTRY.items()
        for variant, options in named.items()
    }


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass registered as `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"backend.name must be one of {BACKENDS}, got {name!r}")
    module, cls = _REGISTRY[name][0].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["BACKENDS", "Backend", "backend_class", "variants"]
