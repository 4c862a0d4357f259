"""FSDP2 applied by us: `fully_shard` per transformer block, then the root (torchtitan style).

accelerate's FSDP plugin silently becomes DDP on CPU, so accelerate only starts the process
group here; sharding, mixed precision and DCP checkpoints are ours. Checkpoints are DCP
directories that load on a different number of ranks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from train.backends.base import (
    Agree,
    Backend,
    GroupsFn,
    ModelFn,
    OptimizerFn,
    adam_state_bytes,
    select_local_device,
)
from train.checkpoint.trusted import dcp_load
from train.faults.nonfinite import optimizer_step_unless


class FSDP2Backend(Backend):
    """Parameters, gradients and optimizer state sharded over a 1-d device mesh of all ranks."""

    name = "fsdp2"
    launcher_types = ("ACCELERATE_USE_FSDP",)  # accelerate's FSDP launch settings are this backend's to ignore
    precisions = ("fp32", "bf16")  # fp16 would need a sharded grad scaler

    @classmethod
    def state_bytes_per_gpu(cls, cfg, options: dict[str, Any], params: int, world: int) -> dict[str, float]:  # noqa: ANN001, E501
        return adam_state_bytes(params, cfg.backend.precision, world, world, world, low_precision_weights=False)

    @staticmethod
    def consolidate(directory: Path, empty_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dcp_load({"model": empty_state}, directory / "dcp")  # no group: full tensors
        return empty_state

    def __init__(self, precision: str) -> None:
        super().__init__(precision)
        select_local_device()
        from accelerate import PartialState  # here: accelerate imports DeepSpeed (not needed to consolidate)

        state = PartialState(cpu=not torch.cuda.is_available())
        self.device = state.device
        if not dist.is_initialized():  # a single process still needs a (trivial) group for DTensor
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))

    def train_autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the MixedPrecisionPolicy casts the blocks' parameters itself

    def setup(self, model_fn: ModelFn, groups_fn: GroupsFn, optimizer_fn: OptimizerFn) -> None:
        """Blocks compute in bf16 (when asked) and hand fp32 back; the root (embeddings, norms, projections,
        logit_scale) stays fp32 so tau is not quantised to bf16 steps."""
        self.model_fn = model_fn
        model = model_fn().to(self.device)
        block_policy = MixedPrecisionPolicy(
            param_dtype=self.low_precision_dtype, reduce_dtype=torch.float32, output_dtype=torch.float32
        )
        for block in model.blocks():  # the model names its shard units
            fully_shard(block, mesh=self.mesh, mp_policy=block_policy)
        fully_shard(model, mesh=self.mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
        self.model = model
        self.optimizer = optimizer_fn(groups_fn(model))

    @property
    def raw_model(self) -> nn.Module:
        return self.model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, grad_clip: float, agree: Agree) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        optimizer_step_unless(self.optimizer, agree(norm))
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save(self, directory: Path) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory / "dcp"))

    def load(self, directory: Path) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp_load(state, directory / "dcp")  # neither its .metadata nor its bytes items can run code
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])

    def local_shards(self) -> list[torch.Tensor]:
        return [p.to_local() if isinstance(p, DTensor) else p for p in self.raw_model.parameters()]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        options = StateDictOptions(full_state_dict=True)  # every rank gets every tensor (sharded eval needs it)
        model_sd, _ = get_state_dict(self.model, [], options=options)
        return {k: v.detach().float().cpu() for k, v in model_sd.items()}
