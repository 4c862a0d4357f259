"""What every backend provides to the loop; the backend knows nothing of CLIP or the loss."""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

ModelFn = Callable[[], nn.Module]
GroupsFn = Callable[[nn.Module], list[dict[str, object]]]
OptimizerFn = Callable[[list[dict[str, object]]], torch.optim.Optimizer]


class Backend(ABC):
    """Wraps a model and its optimizer for one parallelism scheme (ddp, deepspeed, fsdp2).

    Subclasses set `rank`, `world_size`, `device` in `__init__` (which also joins the process
    group) and `model` / `optimizer` in `setup`.
    """

    name: str
    rank: int
    world_size: int
    device: torch.device
    model: nn.Module
    model_fn: ModelFn
    optimizer: torch.optim.Optimizer

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.scaler: torch.amp.GradScaler | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def setup(self, model_fn: ModelFn, groups_fn: GroupsFn, optimizer_fn: OptimizerFn) -> None:
        """Build the model with `model_fn`, wrap it, and build the optimizer over the wrapped parameters."""

    @property
    @abstractmethod
    def raw_model(self) -> nn.Module:
        """The user's module (its methods: set_mask_ratio...); parameters may be sharded."""

    @property
    def low_precision_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast at the run's precision (a no-op for fp32); evaluation uses it on every backend."""
        dtype = self.low_precision_dtype
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def train_autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for training forwards; backends whose weights are already low precision override it."""
        return self.autocast()

    def cast_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Images as the training forward expects them (fp32 unless the backend holds low-precision weights)."""
        return images

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Backward; the backend averages parameter gradients over ranks."""

    @abstractmethod
    def step(self, grad_clip: float) -> torch.Tensor | float | None:
        """Clip (if > 0), step and zero gradients; returns the pre-clip global grad norm when known,
        as a device tensor (reading it is the caller's choice: it waits for the device)."""

    def set_group_lrs(self, lrs: dict[str, float]) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lrs[group["name"]]

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write model + optimizer in this backend's (possibly sharded) format; all ranks call it."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore what `save` wrote; all ranks call it."""

    @contextlib.contextmanager
    def full_model(self) -> Iterator[nn.Module]:
        """An unsharded model on every rank, in eval mode (for evaluation); all ranks call it.

        Sharded backends gather a consolidated state dict and load it into a fresh model built by
        `model_fn`, so evaluation code can run any number of forwards on any rank.
        """
        with torch.device("meta"):
            model = self.model_fn()
        model = model.to_empty(device=self.device)
        model.load_state_dict(self.full_state_dict())
        yield model.eval()

    @abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """A consolidated fp32 CPU state dict on every rank (for evaluation and export); all ranks call it."""

    def barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch to eval mode for the block and restore the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
