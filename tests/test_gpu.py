"""The GPU tier (skipped without CUDA): one bf16 step per backend, and no host synchronisation in a step.

Run it on a GPU machine with `pytest -m gpu tests` (device normalisation vs the host path is checked
on CUDA by tests/test_device_inputs.py, which runs there too).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import pytest
import torch

from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config
from train.backends import variants

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _gpu_trainer(
    out_dir: str, backend: str, steps: int, loss: dict | None = None, mask_ratio: float = 0.0, **logging: Any
) -> Any:
    from train.trainer import Trainer

    os.environ.pop("ACCELERATE_USE_CPU", None)  # the test harness sets it for CPU ranks
    cfg = tiny_config(out_dir, backend, **(loss or {}))
    cfg.backend = dataclasses.replace(cfg.backend, precision="bf16")
    cfg.logging = dataclasses.replace(cfg.logging, **logging)
    cfg.flip = dataclasses.replace(cfg.flip, mask_ratio=mask_ratio)
    return Trainer(cfg, FixedBatches(8, 0, 1, steps))


def _bf16_run(rank: int, world_size: int, out_dir: str, backend: str) -> dict[str, Any]:
    trainer = _gpu_trainer(out_dir, backend, steps=3)
    try:
        result = trainer.fit()
        return {"losses": result["losses"], "device": trainer.backend.device.type}
    finally:
        trainer.close()


@pytest.mark.parametrize("backend", list(variants()))
def test_bf16_steps_on_each_backend(tmp_path, backend: str) -> None:
    (result,) = run_on_ranks(_bf16_run, 1, (str(tmp_path), backend))
    assert result["device"] == "cuda"
    assert len(result["losses"]) == 3 and all(math.isfinite(x) for x in result["losses"])


# Every loss (OpenCLIP; FastCLIP v0-v3, which SogCLR / iSogCLR share), and FLIP masking.
SYNC_CASES = {
    "openclip": ("ddp", {"name": "openclip", "version": None, "lr_tau": None}, 0.0),
    "fastclip-v0": ("ddp", {"version": "v0"}, 0.0),
    "fastclip-v1": ("ddp", {"version": "v1"}, 0.0),
    "fastclip-v2": ("ddp", {"version": "v2"}, 0.0),
    "fastclip-v3": ("ddp", {"version": "v3"}, 0.0),
    "fastclip-v3-flip50": ("ddp", {"version": "v3"}, 0.5),
    "fastclip-v3-fsdp2": ("fsdp2", {"version": "v3"}, 0.0),
}


def _step_under_sync_error(rank: int, world_size: int, out_dir: str, case: str) -> str:
    backend, loss, mask_ratio = SYNC_CASES[case]
    trainer = _gpu_trainer(out_dir, backend, steps=8, loss=loss, mask_ratio=mask_ratio, every_steps=1000)
    try:
        g = torch.Generator().manual_seed(0)
        batch = {  # what the loader hands over: pinned uint8 pixels, tokens, keys
            "pixels": torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8, generator=g).pin_memory(),
            "tokens": trainer.loader.tokens[:8].pin_memory(),
            "index": torch.arange(8).pin_memory(),
        }
        for _ in range(3):  # first steps allocate optimizer state and move the per-sample table
            trainer.train_step(batch)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            trainer.train_step(batch)  # step 4: not a logging step
        finally:
            torch.cuda.set_sync_debug_mode(0)
        if trainer.backend.raw_model.mask_ratio != mask_ratio:
            return f"mask ratio {trainer.backend.raw_model.mask_ratio}, expected {mask_ratio}"
        state = getattr(trainer.loss, "state", None)  # FastCLIP: state_device auto keeps the table on the GPU
        return "no sync" if state is None or state.table.is_cuda else f"table on {state.table.device}"
    finally:
        trainer.close()


@pytest.mark.parametrize("case", sorted(SYNC_CASES))
def test_training_step_never_waits_for_the_device(tmp_path, case: str) -> None:
    assert run_on_ranks(_step_under_sync_error, 1, (str(tmp_path), case)) == ["no sync"]
