"""Per-sample state of the FastCLIP losses (u estimators; v2's per-sample tau and Adam moments).

The state is a [rows, T] table keyed by the sample's integer key in [0, N). Two layouts:

- ``sharded``: rank r owns the contiguous key block [r*S, min(N, (r+1)*S)), S = ceil(N/K), so
  a rank holds about N/K rows instead of N. Per step the old rows of this rank's local batch
  are fetched from their owners with one reduce-scatter of a [G, T] buffer (each owner fills
  the rows it owns, zeros elsewhere), and the updated rows are all-gathered ([G, T]) and
  written back by their owners: O(G) scalars per step, independent of N.
- ``replicated``: every rank holds all N rows (the fast_clip reference's layout); the fetch is
  a local lookup and every rank writes every gathered row.

Both produce identical tables and losses. When a key occurs several times in one global
batch, every occurrence is updated from the same old row and the LAST occurrence (in global
batch order) is written, deterministically in both layouts.

`state_dict()` holds this rank's shard with (layout, N, K, rank, key range, columns);
`repartition_shards` turns the K saved shards into K' shards to resume on another world size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from train.losses.config import LAYOUTS
from train.losses.dist_utils import Group, all_gather_rows, reduce_scatter_rows, world


def shard_bounds(num_samples: int, world_size: int, rank: int) -> tuple[int, int]:
    """Key range [start, stop) owned by `rank` in the sharded layout."""
    size = math.ceil(num_samples / world_size)
    return min(num_samples, rank * size), min(num_samples, (rank + 1) * size)


def state_bytes_per_rank(num_samples: int, num_columns: int, world_size: int, layout: str, itemsize: int = 4) -> int:
    """Bytes of per-sample state one rank holds (rank 0, the largest shard)."""
    rows = shard_bounds(num_samples, world_size, 0)[1] if layout == "sharded" else num_samples
    return rows * num_columns * itemsize


def last_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Bool mask of the positions holding the last occurrence of each key in `index`.

    A [G, G] comparison (G = global batch) rather than `unique`, which would synchronise with the host.
    """
    later = torch.ones((index.numel(), index.numel()), dtype=torch.bool, device=index.device).triu_(1)
    return ~((index[:, None] == index[None, :]) & later).any(dim=1)


class SampleState:
    """Named float columns per sample, in the sharded or replicated layout (see module doc)."""

    def __init__(
        self,
        num_samples: int,
        columns: Mapping[str, float],
        layout: str = "sharded",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        rank: int | None = None,
        world_size: int | None = None,
        group: Group = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"state_layout must be one of {LAYOUTS}, got {layout!r}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.group = group  # the data-parallel group the table is sharded over (None: every rank)
        dist_rank, dist_world = world(group)
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        self.num_samples = num_samples
        self.layout = layout
        self.columns = tuple(columns)
        self.start, self.stop = (
            shard_bounds(num_samples, self.world_size, self.rank) if layout == "sharded" else (0, num_samples)
        )
        init = torch.tensor([columns[c] for c in self.columns], dtype=dtype, device=device)
        # One scratch row after the owned rows: writes this rank must not keep land there, so fetch and
        # update are plain gathers / scatters with no data-dependent shapes (no host synchronisation).
        self._rows = init.expand(self.stop - self.start + 1, len(self.columns)).clone()

    @property
    def table(self) -> torch.Tensor:
        """The owned rows [stop - start, T] (a view)."""
        return self._rows[:-1]

    def to(self, device: torch.device | str) -> None:
        """Move the table (e.g. onto the GPU that computes the loss)."""
        self._rows = self._rows.to(device)

    def _local_rows(self, index: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
        """Table positions of `index` where `mine`, else the scratch row; on the table's device."""
        scratch = self.stop - self.start
        return torch.where(mine, index - self.start, scratch).to(self._rows.device, non_blocking=True)

    def col(self, name: str) -> int:
        """Position of column `name` in fetched / gathered rows."""
        return self.columns.index(name)

    def fetch(self, index: torch.Tensor) -> torch.Tensor:
        """Old rows [B, T] of this rank's local batch, given the gathered global keys [G = K*B].

        Collective (sharded layout with K > 1): every rank must call it in the same step.
        """
        self._check_index(index)
        batch = index.numel() // self.world_size
        if self.layout == "replicated" or self.world_size == 1:
            local = index[self.rank * batch : (self.rank + 1) * batch]
            return self.table[local.to(self.table.device) - self.start].to(index.device)
        owned = (index >= self.start) & (index < self.stop)
        rows = self._rows[self._local_rows(index, owned)].to(index.device, non_blocking=True)
        return reduce_scatter_rows(rows.masked_fill(~owned[:, None], 0), self.group)

    def update(self, index: torch.Tensor, rows: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """All-gather the updated local rows [B, T] (plus `extra` [B, E] columns riding along)
        and write the rows this rank stores; returns the gathered [G, T + E] rows.

        Collective when K > 1. Rows are cast to the table dtype only when stored.
        """
        payload = rows if extra is None else torch.cat([rows, extra.to(rows.dtype)], dim=1)
        (gathered,) = all_gather_rows([payload], self.group)
        keep = last_occurrence(index)
        if self.layout == "sharded":
            keep &= (index >= self.start) & (index < self.stop)
        self._rows[self._local_rows(index, keep)] = gathered[:, : len(self.columns)].to(self._rows)
        return gathered

    def _check_index(self, index: torch.Tensor) -> None:
        if index.dtype != torch.int64 or index.dim() != 1:
            raise ValueError(f"index must be a 1-D int64 tensor of sample keys, got {index.dtype} {tuple(index.shape)}")
        if index.numel() % self.world_size:
            raise ValueError(f"{index.numel()} gathered keys do not split evenly over {self.world_size} ranks")
        if not index.is_cuda and bool(((index < 0) | (index >= self.num_samples)).any()):  # CUDA: no sync
            raise ValueError(
                f"sample keys must lie in [0, {self.num_samples}); got min {int(index.min())} "
                f"max {int(index.max())} (is num_samples the size of the key space?)"
            )

    def state_dict(self) -> dict[str, Any]:
        """This rank's shard (a copy) with the metadata `repartition_shards` needs."""
        return {
            "layout": self.layout,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
            "rank": self.rank,
            "start": self.start,
            "stop": self.stop,
            "columns": list(self.columns),
            "table": self.table.detach().cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a shard saved (or re-partitioned) for exactly this layout, N, K and rank."""
        for key, mine in (("layout", self.layout), ("num_samples", self.num_samples), ("columns", list(self.columns))):
            if state[key] != mine:
                raise ValueError(f"per-sample state {key} mismatch: saved {state[key]!r}, this run {mine!r}")
        if (state["world_size"], state["rank"]) != (self.world_size, self.rank) or state["start"] != self.start:
            raise ValueError(
                f"per-sample state shard is for rank {state['rank']}/{state['world_size']}, this is rank "
                f"{self.rank}/{self.world_size}: re-partition the saved shards with repartition_shards()"
            )
        self.table.copy_(state["table"])


def merge_shards(shards: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """The full [N, T] table from the shards of one save (all K ranks, any order)."""
    if not shards:
        raise ValueError("no per-sample state shards given")
    first = shards[0]
    for s in shards:
        for key in ("layout", "num_samples", "world_size", "columns"):
            if s[key] != first[key]:
                raise ValueError(f"per-sample state shards disagree on {key}: {s[key]!r} vs {first[key]!r}")
    if first["layout"] == "replicated":
        return first["table"]
    ranks = sorted(s["rank"] for s in shards)
    if ranks != list(range(first["world_size"])):
        raise ValueError(f"need one shard per rank 0..{first['world_size'] - 1}, got ranks {ranks}")
    ordered = sorted(shards, key=lambda s: s["rank"])
    table = torch.cat([s["table"] for s in ordered])
    if table.shape[0] != first["num_samples"]:
        raise ValueError(f"shards hold {table.shape[0]} rows, expected {first['num_samples']}")
    return table


def repartition_shards(
    shards: Sequence[Mapping[str, Any]], world_size: int, layout: str | None = None
) -> list[dict[str, Any]]:
    """Re-split the K shards of one save into `world_size` shards (lossless), one per new rank."""
    table = merge_shards(shards)
    layout = layout or shards[0]["layout"]
    if layout not in LAYOUTS:
        raise ValueError(f"state_layout must be one of {LAYOUTS}, got {layout!r}")
    num_samples = shards[0]["num_samples"]
    out = []
    for rank in range(world_size):
        start, stop = shard_bounds(num_samples, world_size, rank) if layout == "sharded" else (0, num_samples)
        out.append(
            {
                "layout": layout,
                "num_samples": num_samples,
                "world_size": world_size,
                "rank": rank,
                "start": start,
                "stop": stop,
                "columns": list(shards[0]["columns"]),
                "table": table[start:stop].clone(),
            }
        )
    return out
