"""What every backend provides to the loop; the backend knows nothing of CLIP or the loss."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from train.config_io import from_dict

if TYPE_CHECKING:
    from train.config import TrainConfig

logger = logging.getLogger(__name__)

ModelFn = Callable[[], nn.Module]
GroupsFn = Callable[[nn.Module], list[dict[str, object]]]
Agree = Callable[[torch.Tensor | float | None], torch.Tensor]
OptimizerFn = Callable[[list[dict[str, object]]], torch.optim.Optimizer]

# `accelerate launch` exports its config's distributed type as one of these variables: the settings each stands for
ACCELERATE_TYPES = {
    "ACCELERATE_USE_DEEPSPEED": "deepspeed_config / distributed_type DEEPSPEED",
    "ACCELERATE_USE_FSDP": "fsdp_config / distributed_type FSDP",
}
_ACCELERATE_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclasses.dataclass
class NoOptions:
    """`backend.options` of a backend that takes none."""


class Backend(ABC):
    """Wraps a model and its optimizer for one parallelism scheme, and answers every question about it.

    Class-level answers (no process group needed): which precisions and optimizers it supports,
    whether its checkpoints resume on another world size, its config checks, its memory estimate
    and how to consolidate its checkpoint. Instances: `create` joins the process group and sets
    `rank`, `world_size`, `device`; `setup` builds `model` / `optimizer`; `close` leaves the group.
    """

    name: str
    # The dataclass `backend.options` maps onto (DeepSpeed: its JSON); the other backend.* keys are every backend's.
    options_type: type = NoOptions
    launcher_types: tuple[str, ...] = ()  # the ACCELERATE_TYPES this backend honours (its own launch settings)
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    optimizers: tuple[str, ...] = ("adamw", "lamb")
    resumes_on_other_world_size: bool = True
    rank: int
    world_size: int
    device: torch.device
    model: nn.Module
    model_fn: ModelFn
    optimizer: torch.optim.Optimizer

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.scaler: torch.amp.GradScaler | None = None

    # ----- class-level answers --------------------------------------------------------------
    @classmethod
    def create(cls, cfg: TrainConfig, options: dict[str, Any]) -> Backend:
        """Join the process group for a validated config; `options`: what `check_config` resolved."""
        return cls(cfg.backend.precision)

    @classmethod
    def check_config(cls, cfg: TrainConfig, hidden_size: int) -> dict[str, Any]:
        """Raise ValueError for settings this backend cannot run (before any process group exists); return
        its options resolved (e.g. DeepSpeed's JSON with "auto" filled in) for `create` and the memory estimate.
        `hidden_size`: the widest layer, for bucket sizes."""
        cls.parse_options(cfg.backend.options)
        if cfg.backend.precision not in cls.precisions:
            raise ValueError(
                f"backend {cls.name} supports precision {' or '.join(cls.precisions)}, not {cfg.backend.precision!r}"
            )
        if cfg.optim.name not in cls.optimizers:
            raise ValueError(
                f"optim.name {cfg.optim.name!r} is not supported with backend {cls.name}; "
                f"use {' or '.join(cls.optimizers)}"
            )
        return {}

    @classmethod
    def parse_options(cls, raw: dict[str, Any]) -> Any:
        """`backend.options` as this backend's `options_type`; a key it does not take is a ValueError naming it."""
        accepted = [f.name for f in dataclasses.fields(cls.options_type)]
        for key in raw:
            if key not in accepted:
                takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
                raise ValueError(f"backend.options.{key} is not an option of backend {cls.name!r} ({takes}); remove it")
        return from_dict(cls.options_type, raw, f"backend {cls.name}", "backend.options.")

    @classmethod
    def launcher_conflicts(cls, cfg: TrainConfig, env: Mapping[str, str]) -> list[str]:
        """The accelerate config's settings (exported by `accelerate launch`) that disagree with the recipe, which
        decides: each line names the accelerate key and the recipe key that wins."""
        lines = []
        precision = env.get("ACCELERATE_MIXED_PRECISION")
        if precision is not None and _ACCELERATE_PRECISION.get(precision, precision) != cfg.backend.precision:
            lines.append(
                f"mixed_precision: {precision!r} is ignored; the recipe's backend.precision "
                f"{cfg.backend.precision!r} is used"
            )
        for variable, settings in ACCELERATE_TYPES.items():
            if env.get(variable) == "true" and variable not in cls.launcher_types:
                lines.append(f"{settings} is ignored; the recipe's backend.name {cfg.backend.name!r} is used")
        return lines

    @classmethod
    @abstractmethod
    def state_bytes_per_gpu(
        cls, cfg: TrainConfig, options: dict[str, Any], params: int, world: int
    ) -> dict[str, float]:
        """Estimated bytes of weights, gradients and optimizer state per GPU (`options`: from `check_config`)."""

    @staticmethod
    @abstractmethod
    def consolidate(directory: Path, empty_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The full state dict of a checkpoint this backend wrote, in one process without a process group
        (`empty_state`: a freshly built model's state dict, for formats that load in place)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # Data parallelism: the ranks that split the global batch. Every rank today (dp_group None = the
    # default group); a backend that adds model parallelism narrows these, and the losses, per-sample
    # state, loader and evaluation follow.
    @property
    def dp_group(self) -> torch.distributed.ProcessGroup | None:
        return None

    @property
    def dp_rank(self) -> int:
        return self.rank

    @property
    def dp_world_size(self) -> int:
        return self.world_size

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
    def step(self, grad_clip: float, agree: Agree) -> torch.Tensor | float | None:
        """Clip (if > 0), step and zero gradients; returns the pre-clip global grad norm when known,
        as a device tensor (reading it is the caller's choice: it waits for the device).

        `agree(grad_norm)` is called between clipping and the update and returns the step's agreed skip
        flag (a device tensor, the same on every rank); a set flag drops this step's gradients without
        any update, decided on the device where the optimizer allows (`optimizer_step_unless`).
        """

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (the ones the update reads)."""
        return self.optimizer.param_groups

    def set_lr(self, lr: float) -> None:
        """The scheduled learning rate, times each group's `lr_scale` (1 unless train.optim set one)."""
        for group in self.param_groups:
            group["lr"] = group_lr(group, lr)

    def local_shards(self) -> list[torch.Tensor]:
        """This rank's part of every parameter (replicated here: the parameters themselves); sharded
        backends return their shards, so a check of the weights reads each element on one rank."""
        return list(self.raw_model.parameters())

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write model + optimizer in this backend's (possibly sharded) format; all ranks call it."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore what `save` wrote; all ranks call it."""

    @contextlib.contextmanager
    def full_model(self) -> Iterator[nn.Module]:
        """An unsharded model on every rank for evaluation (which sets eval mode itself); all ranks call it.

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

    def close(self, completed: bool = True) -> None:
        """Leave the process group this backend joined, so no communication thread outlives the run.

        After a completed run the ranks first meet at a barrier, so none leaves while a peer still
        finishes its last collective. After an error nothing more is exchanged: the peers may be gone
        or blocked in another collective.
        """
        if completed:
            self.barrier()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def group_lr(group: dict, lr: float) -> float:
    """The lr of one optimizer group: the scheduled lr times its lr_scale (layer decay, per-tower scales; see
    train.optim.param_groups)."""
    return lr * group.get("lr_scale", 1.0)


def select_local_device() -> None:
    """Bind this process to its GPU (LOCAL_RANK) before any process group or device mesh exists."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def adam_state_bytes(
    params: int, precision: str, weight_shards: int, grad_shards: int, optim_shards: int, low_precision_weights: bool
) -> dict[str, float]:
    """Weights, gradients and Adam state per GPU, given how many ways each is sharded.

    Low-precision weights (DeepSpeed bf16/fp16) keep 2-byte weights and gradients plus an fp32
    master copy with the Adam moments (12 bytes); otherwise everything is fp32 (autocast).
    """
    low = low_precision_weights and precision in ("bf16", "fp16")
    return {
        "weights": (2 if low else 4) * params / weight_shards,
        "grads": (2 if low else 4) * params / grad_shards,
        "optimizer": (12 if low else 8) * params / optim_shards,
    }
