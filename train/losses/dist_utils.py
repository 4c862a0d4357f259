"""Collectives the losses need, each issued once per call on the data-parallel group.

`group` is the data-parallel process group (None: the default group, i.e. every rank). Every
helper degrades to the identity when torch.distributed is not initialised, so the same loss
code runs in one process. All ranks must pass tensors of the same shape (the data loader
gives every rank the same local batch size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

Group = dist.ProcessGroup | None


def world(group: Group = None) -> tuple[int, int]:
    """(rank, world_size) in `group`, or (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def all_gather_rows(tensors: Sequence[torch.Tensor], group: Group = None) -> list[torch.Tensor]:
    """Gather row-aligned tensors of any dtypes from all ranks in ONE collective, without autograd.

    The tensors are reinterpreted as bytes and packed side by side, so features and int64
    sample keys travel together bit-exactly. Row r*B + i of each result is row i of rank r.
    """
    rows = tensors[0].shape[0]
    if any(t.shape[0] != rows for t in tensors):
        raise ValueError("all_gather_rows needs tensors with the same number of rows")
    _, world_size = world(group)
    if world_size == 1:
        return [t.detach() for t in tensors]
    packed = torch.cat([_as_bytes(t.detach()) for t in tensors], dim=1)
    out = packed.new_empty((world_size * rows, packed.shape[1]))
    dist.all_gather_single(out, packed, group=group)
    results: list[torch.Tensor] = []
    col = 0
    for t in tensors:
        width = t[:1].numel() * t.element_size()
        part = out[:, col : col + width].contiguous().view(t.dtype)
        results.append(part.reshape(world_size * rows, *t.shape[1:]))
        col += width
    return results


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """[rows, ...] -> [rows, nbytes] uint8 view of the same memory (copy if not contiguous)."""
    return t.reshape(t.shape[0], -1).contiguous().view(torch.uint8)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for our rows (reduce-scatter)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        _, world_size = world(group)
        out = x.new_empty((world_size * x.shape[0], *x.shape[1:]))
        dist.all_gather_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        _, world_size = world(ctx.group)
        out = grad.new_empty((grad.shape[0] // world_size, *grad.shape[1:]))
        dist.reduce_scatter_single(out, grad.contiguous(), group=ctx.group)
        return out, None


def all_gather_with_grad(x: torch.Tensor, group: Group = None) -> torch.Tensor:
    """Differentiable all_gather of [B, ...] -> [K*B, ...] (OpenCLIP's gather-with-grad)."""
    if world(group)[1] == 1:
        return x
    return _GatherWithGrad.apply(x, group)


def all_reduce_mean(x: torch.Tensor, group: Group = None) -> torch.Tensor:
    """Mean over ranks of a (small) tensor, e.g. a loss value for logging; no autograd."""
    _, world_size = world(group)
    if world_size == 1:
        return x.detach()
    out = x.detach().clone()
    dist.all_reduce(out, group=group)
    return out / world_size


def reduce_scatter_rows(x: torch.Tensor, group: Group = None) -> torch.Tensor:
    """Sum [K*B, ...] over ranks and keep this rank's [B, ...] block (no autograd)."""
    _, world_size = world(group)
    if world_size == 1:
        return x
    out = x.new_empty((x.shape[0] // world_size, *x.shape[1:]))
    dist.reduce_scatter_single(out, x.contiguous(), group=group)
    return out


def start_ring_pass(x: torch.Tensor, group: Group = None) -> tuple[torch.Tensor, list[dist.Work]]:
    """Send `x` to the next rank and receive the previous rank's tensor of the same shape (no autograd).

    Returns (receive buffer, pending works): wait on the works before reading the buffer, so the
    exchange overlaps with compute. After h passes a rank holds rank (rank - h) mod K's tensor.
    """
    rank, world_size = world(group)
    if world_size == 1:
        return x, []

    def global_rank(r: int) -> int:
        return r if group is None else dist.get_global_rank(group, r)

    x = x.detach().contiguous()
    buffer = torch.empty_like(x)
    send = dist.isend(x, dst=global_rank((rank + 1) % world_size), group=group)
    recv = dist.irecv(buffer, src=global_rank((rank - 1) % world_size), group=group)
    return buffer, [send, recv]
