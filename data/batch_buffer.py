"""Buffers a loader worker fills and hands to the trainer whole, and takes back when the trainer is done.

A page of fresh memory costs about as much to fault in as libjpeg-turbo takes to decode into it (here: 1 ms per MB
of shared memory against 0.2 ms to decode a 256 px photo of 0.26 MB), so a batch of decoded images is built where it
will be shipped and in pages that are already there:

- `empty_uint8` allocates shared memory directly (`share_memory_()` on a new tensor faults in and copies every page
  twice);
- `Arena` decodes each image straight into the batch's buffer (no per-image array, no copy);
- `BufferPool` reuses a worker's buffers: each starts with a small header whose state byte the consumer flips with
  `give_back(batch)` once it has made its own copy (the trainer does, the batch after; see Trainer.next_batch). A
  buffer is written again only after it was given back, so a consumer that keeps its batches (tests, tools,
  `pin_memory`) gets fresh buffers, as without a pool.
"""

from __future__ import annotations

import numpy as np
import torch

HEADER = 64  # bytes before the data: MAGIC, then the state byte (keeps the data 64-byte aligned)
MAGIC = b"ffpool\x00\x01"
OUT, FREE = 1, 0
GROWTH = 1.5  # an arena that runs out is re-allocated this much larger than needed (its prefix copied)
ROOM = 1.25  # a new buffer's head-room over the request, so that a slightly larger batch still fits it later
# (pages never written are never allocated)


def empty_uint8(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    """An uninitialised uint8 tensor, in shared memory when `shared` (a loader worker's hand-over)."""
    if not shared:
        return torch.empty(shape, dtype=torch.uint8)
    count = int(np.prod(shape, dtype=np.int64))
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(count)).view(shape)


def _header(storage: torch.UntypedStorage) -> np.ndarray:
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (HEADER,)).numpy()


class BufferPool:
    """At most `size` buffers of one worker, each [HEADER + capacity] bytes; `acquire` marks one OUT.

    `size` covers the batches that can be out at once: the loader's prefetch queue, the one the trainer trains on and
    the one it keeps (prefetch_factor + 2). When all are out (a consumer that never gives back), the oldest is
    forgotten, not reused: it lives on as long as its consumer holds it."""

    def __init__(self, shared: bool, size: int) -> None:
        self.shared, self.size = shared, size
        self.buffers: list[torch.Tensor] = []

    def acquire(self, capacity: int) -> torch.Tensor:
        """uint8 [HEADER + c] with c >= capacity, marked OUT: the smallest free one that fits, else a new one (with
        ROOM)."""
        fits = [b for b in self.buffers if _header(b.untyped_storage())[8] == FREE and len(b) - HEADER >= capacity]
        if fits:
            buffer = min(fits, key=len)
        else:
            if len(self.buffers) >= self.size:
                self.buffers.pop(0)
            buffer = empty_uint8((HEADER + int(ROOM * capacity),), self.shared)
            _header(buffer.untyped_storage())[: len(MAGIC)] = np.frombuffer(MAGIC, dtype=np.uint8)
            self.buffers.append(buffer)
        _header(buffer.untyped_storage())[8] = OUT
        return buffer


def release(buffer: torch.Tensor) -> None:
    """Marks a buffer that `acquire` gave out as free again (the arena outgrew it before handing it over)."""
    _header(buffer.untyped_storage())[8] = FREE


def give_back(batch: dict) -> None:
    """The consumer is done with `batch`: its pooled buffers may be written again. Tensors that are not a pool's
    (another loader path, a pinned copy) are left alone."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.storage_offset() == HEADER:
            storage = value.untyped_storage()
            header = _header(storage)
            if header[: len(MAGIC)].tobytes() == MAGIC:
                header[8] = FREE


class Arena:
    """One batch's images back to back in one pooled buffer: `slot(n)` is a writable view of the next n bytes,
    `commit(n)` keeps what was written there (a failed decode does not commit), `take()` hands the filled part over.

    The first slot asks the pool for `reserve` bytes (the largest batch seen), or room for `expected` images like it
    when none was seen; a batch that outgrows its buffer moves once to a larger one."""

    def __init__(self, pool: BufferPool, expected: int, reserve: int = 0) -> None:
        self.pool, self.expected, self.reserve = pool, expected, reserve
        self.used = 0
        self._buffer: torch.Tensor | None = None
        self._view: np.ndarray | None = None

    def slot(self, n: int) -> np.ndarray:
        if self._buffer is None:
            self._move(max(self.reserve or n * self.expected, n))
        elif self.used + n > len(self._view):
            self._move(int(GROWTH * (self.used + n)))
        return self._view[self.used : self.used + n]

    def commit(self, n: int) -> None:
        self.used += n

    def take(self) -> torch.Tensor:
        """uint8 [used]: a view of the buffer after its header (pin_memory and .to copy only the view's bytes)."""
        if self._buffer is None:
            return torch.empty(0, dtype=torch.uint8)
        return self._buffer[HEADER : HEADER + self.used]

    def take_with(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`take()` and copies of `tensors` placed after the filled part (8-byte aligned), as views of the same buffer:
        the batch crosses to the trainer as one shared-memory segment (each separate small tensor would make one)."""
        filled, nbytes = self.used, [t.numel() * t.element_size() for t in tensors.values()]
        start = -(-filled // 8) * 8
        extra = start - filled + sum(-(-n // 8) * 8 for n in nbytes)
        self.slot(extra)  # room for them (the buffer may move here, never after)
        views, at = {}, start
        for (name, tensor), n in zip(tensors.items(), nbytes, strict=True):
            view = self._buffer[HEADER + at : HEADER + at + n].view(tensor.dtype).view(tensor.shape)
            views[name] = view.copy_(tensor)
            at += -(-n // 8) * 8
        self.used = at
        return self._buffer[HEADER : HEADER + filled], views

    def _move(self, capacity: int) -> None:
        buffer = self.pool.acquire(capacity)
        view = buffer.numpy()[HEADER:]
        if self._buffer is not None:
            view[: self.used] = self._view[: self.used]
            release(self._buffer)
        self._buffer, self._view = buffer, view
