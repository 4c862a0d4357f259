"""Backends: ddp (accelerate), deepspeed (accelerate DeepSpeedPlugin), fsdp2 (our fully_shard)."""

from __future__ import annotations

from train.backends.base import Backend


def make_backend(name: str, precision: str, ds_config: dict | None = None) -> Backend:
    """Join the process group and return the backend; imports stay lazy (DeepSpeed is slow to import)."""
    if name == "ddp":
        from train.backends.ddp import DDPBackend

        return DDPBackend(precision)
    if name == "fsdp2":
        from train.backends.fsdp2 import FSDP2Backend

        return FSDP2Backend(precision)
    if name == "deepspeed":
        from train.backends.deepspeed import DeepSpeedBackend

        if ds_config is None:
            raise ValueError("backend deepspeed needs a resolved ds_config")
        return DeepSpeedBackend(precision, ds_config)
    raise ValueError(f"backend.name must be ddp, deepspeed or fsdp2, got {name!r}")


__all__ = ["Backend", "make_backend"]
