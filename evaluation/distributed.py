"""Sharded evaluation: gather each rank's rows and restore one global, duplicate-free sample order.

Every rank evaluates its own part of a set; rows are all_gathered and sorted by sample index (the
first copy of an index kept, so a DistributedSampler's padding is not counted twice). Metrics are then
computed from the same tensors a single process would have built, on every rank.

`group` is the data-parallel process group the evaluation is sharded over (default: the whole job).
Under model parallelism each data-parallel replica evaluates with its own group, and no collective
touches ranks outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def use_distributed(distributed: bool | None, group: dist.ProcessGroup | None = None) -> bool:
    """Resolve the `distributed` argument: `None` shards whenever `group` (default: all ranks) has > 1 rank.

    Pass `False` for rank-0-only evaluation inside a process group (no collective is issued then).
    """
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is None:
        return initialised and dist.get_world_size(group) > 1
    if distributed and not initialised:
        raise RuntimeError("distributed evaluation needs an initialised torch.distributed process group")
    return distributed


def is_main_process(distributed: bool, group: dist.ProcessGroup | None = None) -> bool:
    """Whether this process should log (rank 0 of `group` in a sharded evaluation, or any unsharded one)."""
    return not distributed or dist.get_rank(group) == 0


def gather_indexed(
    rows: Sequence[torch.Tensor], index: torch.Tensor | None, distributed: bool, group: dist.ProcessGroup | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows from every rank sorted by sample index, first copy of each index kept.

    `rows` are tensors with one row per local sample; `index` holds the samples' global indices.
    Without an index, samples are numbered by position in rank-major order, which is right when the
    ranks' parts are disjoint. Results land on the device of `rows[0]`.
    """
    n = rows[0].shape[0]
    if any(r.shape[0] != n for r in rows) or (index is not None and index.shape[0] != n):
        raise ValueError("rows and index must have the same length")
    out_device = rows[0].device
    if distributed:
        index, rows = _all_gather(rows, index, group)
    elif index is None:
        index = torch.arange(n)
    index = index.to(out_device, torch.long)
    order = torch.sort(index, stable=True).indices
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    selected = order[keep]
    return index[selected], [r.to(out_device)[selected] for r in rows]


def _all_gather(
    rows: Sequence[torch.Tensor], index: torch.Tensor | None, group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Concatenate rows of the group's ranks in rank order; ranks may hold different (also zero) row counts."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = rows[0].shape[0]
    meta: list[Any] = [None] * world
    dist.all_gather_object(meta, (n, [tuple(r.shape[1:]) for r in rows], index is not None), group=group)
    if len({has_index for _, _, has_index in meta}) > 1:
        raise ValueError("either every rank passes a sample index or none does")
    counts = [count for count, _, _ in meta]
    if index is None:
        index = torch.arange(n) + sum(counts[:rank])
    gathered = []
    for i, tensor in enumerate([index, *rows]):
        # An empty rank may not know the feature width; take it from a rank that has rows.
        trail = () if i == 0 else next((shapes[i - 1] for c, shapes, _ in meta if c > 0), tuple(tensor.shape[1:]))
        gathered.append(_all_gather_padded(tensor, counts, trail, group))
    return gathered[0], gathered[1:]


def _all_gather_padded(
    tensor: torch.Tensor, counts: list[int], trail: tuple[int, ...], group: dist.ProcessGroup | None
) -> torch.Tensor:
    """all_gather needs equal shapes: pad every rank to the longest, then trim each part."""
    device = _comm_device(group)
    longest = max(counts)
    local = tensor.reshape(tensor.shape[0], *trail).to(device)
    padded = local.new_zeros((longest, *trail))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def _comm_device(group: dist.ProcessGroup | None) -> torch.device:
    """NCCL only moves CUDA tensors; gloo is safest with CPU tensors."""
    if "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
