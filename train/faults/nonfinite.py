"""Non-finite guard: a step whose loss or gradient norm is NaN / inf is skipped on every rank and counted.

One NaN batch (a corrupt sample, an overflow) should cost one step, not the run; a diverged run
(lr far too high) must stop with a non-zero exit instead of training on NaN and publishing NaN
checkpoints. Ranks agree on the decision (the flag is all-reduced with the preemption flag), so no
rank steps while another skips.
"""

from __future__ import annotations

import collections
import math

import torch
import torch.distributed as dist

from train.faults.preemption import PreemptionFlag
from train.faults.rank_sync import comm_device, distributed


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row: the run stops instead of training on NaN."""


def nonfinite_flag(loss: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor:
    """1.0 when the local loss or the (global) grad norm is NaN / inf, else 0.0; stays on the device."""
    bad = ~torch.isfinite(loss.detach().float().reshape(()))
    if grad_norm is not None:
        bad = bad | ~torch.isfinite(grad_norm.detach().float().reshape(()).to(bad.device))
    return bad.float()


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one host read for the lot)."""
    if not tensors:
        return True
    checks = torch.stack([torch.isfinite(t.detach()).all() for t in tensors if t.numel()] or [torch.tensor(True)])
    return bool(checks.all())


class StepGuard:
    """The once-per-step agreement between ranks, without waiting for the device.

    Between the gradient norm and the optimizer step, one all-reduce (MAX) of two numbers, [loss or
    grad norm non-finite on this rank, preemption signal received here], gives every rank the same
    `skip` flag as a device tensor; the optimizer and the temperature apply it on the device (a
    skipped step changes no weight, moment or step count). The host learns the agreed flags LAG
    steps later, from a copy the device finished long ago: every rank reads the same step's flags
    at the same step, so all stop together (preemption), and a run with `limit` non-finite steps in
    a row raises TrainingDiverged naming the step at which the limit was reached.
    """

    LAG = 2

    def __init__(self, limit: int, preemption: PreemptionFlag, device: torch.device) -> None:
        self.limit = limit
        self.preemption = preemption
        self.preempted = False
        self.data_unavailable = False
        self.in_a_row = torch.zeros((), device=device)
        self.total = torch.zeros((), device=device)
        self.limit_hit = torch.zeros(4, device=device, dtype=torch.float64)  # step, loss, grad norm, lr (step 0: no)
        self._flags = torch.zeros(2, device=device)
        self._pending: collections.deque[tuple[torch.Tensor, torch.cuda.Event | None]] = collections.deque()

    def agree(self, loss: torch.Tensor, grad_norm: torch.Tensor | float | None) -> torch.Tensor:
        """The agreed skip flag of this step (1.0: non-finite on some rank, every rank skips); on the device."""
        norm = None if grad_norm is None else torch.as_tensor(grad_norm, device=loss.device)
        preempt = torch.full_like(loss.float().reshape(()), self.preemption.code)
        flags = torch.stack([nonfinite_flag(loss, norm), preempt])
        if distributed():
            flags = flags.to(comm_device())
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self._flags = flags.to(self.in_a_row.device)
        return self._flags[0]

    @property
    def skip(self) -> torch.Tensor:
        """The last agreed skip flag (device tensor)."""
        return self._flags[0]

    @torch.no_grad()
    def record(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | float | None, lr: float) -> None:
        """Count the step on the device, queue its flags for the host, and act on the flags of LAG steps ago."""
        skip = self.skip
        self.in_a_row = torch.where(skip > 0, self.in_a_row + 1, torch.zeros_like(self.in_a_row))
        self.total = self.total + skip
        norm = torch.full_like(loss.double(), math.nan) if grad_norm is None else torch.as_tensor(grad_norm)
        values = torch.stack(
            [
                loss.detach().double().reshape(()),
                norm.to(loss.device).double().reshape(()),
                torch.full_like(loss.double(), lr),
            ]
        )
        first = (self.in_a_row >= self.limit) & (self.limit_hit[0] == 0)
        self.limit_hit = torch.where(first, torch.cat([torch.full_like(values[:1], step), values]), self.limit_hit)
        self._queue(torch.cat([self._flags.double(), self.limit_hit]))
        while len(self._pending) > self.LAG:
            self._act(*self._pending.popleft())

    def drain(self) -> None:
        """Act on every queued step (end of training, before a checkpoint)."""
        while self._pending:
            self._act(*self._pending.popleft())

    def _queue(self, packed: torch.Tensor) -> None:
        if packed.is_cuda:  # a pinned copy the host reads once the device is done (no wait in this step)
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, event))
        else:
            self._pending.append((packed, None))

    def _act(self, packed: torch.Tensor, event: torch.cuda.Event | None) -> None:
        if event is not None:
            event.synchronize()  # finished steps ago: returns at once
        _, preempt, hit_step, loss, norm, lr = packed.tolist()
        self.preempted = self.preempted or preempt > 0
        self.data_unavailable = self.data_unavailable or preempt > 1  # some rank's remote data stayed unreachable
        if hit_step > 0:
            raise TrainingDiverged(
                f"{self.limit} non-finite steps in a row (optim.max_nonfinite_steps={self.limit}), the last at "
                f"step {int(hit_step)}: loss {loss:g}, grad norm {norm:g}, lr {lr:g}. Every one was skipped, so the "
                "weights are those of the last finite step; lower optim.lr, set optim.grad_clip or use fp32/bf16"
            )

    def state_dict(self) -> dict[str, int]:
        return {"in_a_row": int(self.in_a_row), "total": int(self.total)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.in_a_row.fill_(float(state["in_a_row"]))
        self.total.fill_(float(state["total"]))


def optimizer_step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """`optimizer.step()` unless `skip` (a device flag) is set, decided on the device when the optimizer
    can (fused Adam/AdamW honour `found_inf`, as under GradScaler); otherwise by reading the flag."""
    if getattr(optimizer, "_step_supports_amp_scaling", False) and all(
        group.get("fused") for group in optimizer.param_groups
    ):
        optimizer.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(skip):  # e.g. LAMB: one host read per step
        optimizer.step()
