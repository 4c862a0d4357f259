"""Which samples a rank sees in an epoch, batch by batch: a pure function of
(shard sizes, seed, epoch, world size, rank, batch size, shuffle window, drop_last).

Epoch stream: the shards in a per-epoch random order, their samples concatenated (T samples).
It is cut into `steps * batch_size` consecutive samples per rank (steps equal on all ranks:
ceil(T / global batch) with the stream wrapping around to its start to fill the last global
batch, or floor with `drop_last`). Within a rank's chunk, samples are shuffled inside windows
of `window` consecutive samples (a shuffle buffer without its state). Nothing depends on the
number of DataLoader workers, so any batch can be built on its own, in any process: resume
mid-epoch is just "start at batch b".
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

_SHARD_ORDER, _WINDOW = 1, 2  # stream tags for the seeded generators


def steps_per_epoch(total: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    per_step = batch_size * world_size
    steps = total // per_step if drop_last else -(-total // per_step)
    if steps < 1:
        raise ValueError(
            f"{total} samples cannot fill one global batch of {batch_size} x {world_size} ranks with drop_last; "
            "use fewer ranks, a smaller batch or drop_last: false"
        )
    return steps


class EpochPlan:
    def __init__(
        self,
        shard_sizes: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        window: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.total = int(sizes.sum())
        if self.total == 0:
            raise ValueError("the dataset has no samples")
        self.batch_size, self.seed, self.epoch, self.rank, self.world_size = batch_size, seed, epoch, rank, world_size
        self.steps = steps_per_epoch(self.total, batch_size, world_size, drop_last)
        self.chunk = self.steps * batch_size
        self.window = min(window, self.chunk) if window > 0 else self.chunk
        self.order = np.random.default_rng([seed, epoch, _SHARD_ORDER]).permutation(len(sizes))
        self.starts = np.concatenate([[0], np.cumsum(sizes[self.order])])
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def _perm(self, k: int) -> np.ndarray:
        perm = self._perms.get(k)
        if perm is None:
            size = min(self.window, self.chunk - k * self.window)
            rng = np.random.default_rng([self.seed, self.epoch, _WINDOW, self.world_size, self.rank, k])
            perm = self._perms[k] = rng.permutation(size)
            if len(self._perms) > 4:
                self._perms.popitem(last=False)
        return perm

    def stream_positions(self, chunk_pos: np.ndarray) -> np.ndarray:
        """Rank-chunk positions (the order batches are served) -> epoch-stream positions."""
        chunk_pos = np.asarray(chunk_pos, dtype=np.int64)
        k, r = np.divmod(chunk_pos, self.window)
        out = np.empty_like(chunk_pos)
        for kk in np.unique(k):
            sel = k == kk
            out[sel] = kk * self.window + self._perm(int(kk))[r[sel]]
        return (self.rank * self.chunk + out) % self.total

    def locate(self, stream_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Epoch-stream positions -> (shard id, position within shard)."""
        j = np.searchsorted(self.starts, stream_pos, side="right") - 1
        return self.order[j], stream_pos - self.starts[j]

    def batch(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard ids, in-shard positions) of the batch_size samples of batch b."""
        if not 0 <= b < self.steps:
            raise IndexError(f"batch {b} outside [0, {self.steps})")
        pos = np.arange(b * self.batch_size, (b + 1) * self.batch_size)
        return self.locate(self.stream_positions(pos))

    def substitute(self, b: int, j: int, attempt: int) -> tuple[int, int]:
        """Replacement for sample j of batch b when it is unusable: the same slot `attempt` batches later."""
        pos = (b * self.batch_size + j + attempt * self.batch_size) % self.chunk
        if attempt and attempt % self.steps == 0:  # wrapped onto the same slot: move along the chunk
            pos = (pos + attempt // self.steps) % self.chunk
        s, i = self.locate(self.stream_positions(np.array([pos])))
        return int(s[0]), int(i[0])
