"""Non-finite guard: a step whose loss or gradient norm is NaN / inf is skipped on every rank and counted.

One NaN batch (a corrupt sample, an overflow) should cost one step, not the run; a diverged run
(lr far too high) must stop with a non-zero exit instead of training on NaN and publishing NaN
checkpoints. Ranks agree on the decision (the flag is all-reduced with the preemption flag), so no
rank steps while another skips.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from train.preemption import PreemptionFlag
from train.rank_sync import comm_device, distributed


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row: the run stops instead of training on NaN."""


def nonfinite_flag(loss: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor:
    """1.0 when the local loss or the (global) grad norm is NaN / inf, else 0.0; stays on the device."""
    bad = ~torch.isfinite(loss.detach().float().reshape(()))
    if grad_norm is not None:
        bad = bad | ~torch.isfinite(grad_norm.detach().float().reshape(()).to(bad.device))
    return bad.float()


class NonFiniteStreak:
    """Counts skipped steps (in a row and in all) and stops the run after `limit` in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.total = 0

    def update(self, skipped: bool, step: int, loss: float, grad_norm: float | None, lr: float) -> None:
        """Call once per step with the agreed decision; raises TrainingDiverged at the limit."""
        if not skipped:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.limit:
            norm = "n/a" if grad_norm is None else f"{grad_norm:g}"
            raise TrainingDiverged(
                f"{self.in_a_row} non-finite steps in a row (optim.max_nonfinite_steps={self.limit}), the last at "
                f"step {step}: loss {loss:g}, grad norm {norm}, lr {lr:g}. Every one was skipped, so the weights "
                "and `latest` are those of the last finite step; lower optim.lr, set optim.grad_clip or use fp32/bf16, "
                "then resume with checkpoint.resume=latest"
            )

    def state_dict(self) -> dict[str, int]:
        return {"in_a_row": self.in_a_row, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.in_a_row, self.total = int(state["in_a_row"]), int(state["total"])


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one host read for the lot)."""
    if not tensors:
        return True
    checks = torch.stack([torch.isfinite(t.detach()).all() for t in tensors if t.numel()] or [torch.tensor(True)])
    return bool(checks.all())



class StepGuard:
    """The once-per-step agreement, between the gradient norm and the optimizer step.

    One all-reduce (MAX) of two numbers, [loss or grad norm non-finite on this rank, preemption signal
    received here], and one host read of the result: every rank then skips the same steps and stops
    at the same step. The read is this loop's only per-step device synchronisation, the same one
    torch's GradScaler makes to skip inf steps; it sits where the optimizer step needs the answer.
    """

    def __init__(self, limit: int, preemption: PreemptionFlag) -> None:
        self.streak = NonFiniteStreak(limit)
        self.preemption = preemption
        self.preempted = False
        self.skipped = False

    def __call__(self, loss: torch.Tensor, grad_norm: torch.Tensor | float | None) -> bool:
        """Whether to apply this step's update (False: non-finite somewhere, every rank skips)."""
        norm = None if grad_norm is None else torch.as_tensor(grad_norm, device=loss.device)
        flags = torch.stack([nonfinite_flag(loss, norm), torch.full_like(loss.float().reshape(()), 0.0)])
        if self.preemption.requested:
            flags[1] = 1.0
        if distributed():
            flags = flags.to(comm_device())
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        nonfinite, preempt = flags.tolist()
        self.skipped = nonfinite > 0
        self.preempted = self.preempted or preempt > 0
        return not self.skipped


def local_shards(model: torch.nn.Module) -> list[torch.Tensor]:
    """This rank's part of every parameter: a DTensor's local shard (FSDP2), a ZeRO-3 partition, or the
    parameter itself (replicated)."""
    parts = []
    for param in model.parameters():
        if isinstance(param, DTensor):
            parts.append(param.to_local())
        else:
            parts.append(getattr(param, "ds_tensor", param))
    return parts
