"""DDP through accelerate (MULTI_GPU, or MULTI_CPU with gloo); parameters replicated on every rank."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.backends.base import Agree, Backend, GroupsFn, ModelFn, OptimizerFn, adam_state_bytes
from train.checkpoint.trusted import load_file
from train.faults.nonfinite import optimizer_step_unless


class DDPBackend(Backend):
    """Gradients are all-reduced (averaged) by DDP; rank 0 writes the replicated model/optimizer."""

    name = "ddp"

    @classmethod
    def state_bytes_per_gpu(cls, cfg, options: dict[str, Any], params: int, world: int) -> dict[str, float]:  # noqa: ANN001, E501
        return adam_state_bytes(params, cfg.backend.precision, 1, 1, 1, low_precision_weights=False)

    @staticmethod
    def consolidate(directory: Path, empty_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return load_file(directory / "model.pt")  # weights_only: a checkpoint from elsewhere runs no code

    def __init__(self, precision: str) -> None:
        super().__init__(precision)
        # Precision comes from the recipe (our autocast / GradScaler), never from the launcher's accelerate config.
        from accelerate import Accelerator  # here: accelerate imports DeepSpeed, which consolidation does not need

        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.device = self.accelerator.device
        if precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)

    def setup(self, model_fn: ModelFn, groups_fn: GroupsFn, optimizer_fn: OptimizerFn) -> None:
        self.model_fn = model_fn
        model = model_fn().to(self.device)
        optimizer = optimizer_fn(groups_fn(model))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self._raw_model = model  # what prepare wrapped (accelerate's unwrap_model imports deepspeed: 1.6 s)

    @property
    def raw_model(self) -> nn.Module:
        return self._raw_model

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, grad_clip: float, agree: Agree) -> torch.Tensor:
        if self.scaler:
            self.scaler.unscale_(self.optimizer.optimizer)
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        # fp16: an inf norm is the GradScaler's business (it skips and lowers the scale), not divergence.
        if self.scaler:
            if not bool(agree(None)):  # GradScaler reads its own inf flag on the host anyway
                self.scaler.step(self.optimizer.optimizer)
            self.scaler.update()
        else:
            optimizer_step_unless(self.optimizer.optimizer, agree(norm))
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save(self, directory: Path) -> None:
        if self.is_main:
            torch.save(self.raw_model.state_dict(), directory / "model.pt")
            state = {"optimizer": self.optimizer.optimizer.state_dict()}
            if self.scaler:
                state["scaler"] = self.scaler.state_dict()
            torch.save(state, directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        self.raw_model.load_state_dict(load_file(directory / "model.pt"))
        state = load_file(directory / "optimizer.pt")  # weights_only: a shared checkpoint cannot run code
        self.optimizer.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    @contextlib.contextmanager
    def full_model(self) -> Iterator[nn.Module]:
        """Parameters are replicated: evaluate the training model itself (no copy)."""
        yield self.raw_model  # evaluation switches to eval mode and back itself

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu() for k, v in self.raw_model.state_dict().items()}
