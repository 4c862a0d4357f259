"""Is a shard still the one its index describes? A cheap fingerprint, recorded at index time, checked on open.

The index holds byte ranges into each shard, so a shard replaced after indexing (another of the same size: tar
pads to 10 KiB records, so equal sizes are common) would silently pair images with other captions. The
fingerprint is BLAKE2b-128 over the shard's size, its first and last 64 KiB and the tar header blocks of up to
16 samples spread over it (each header holds the member's name, size and mtime): a few hundred KiB read once per
shard and process. A truncated or changed shard stops the run with ShardChanged (one line, exit 2), a
cached copy that fails the check is fetched again (data/cache.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # numpy loads where a shard is read: config checks stay light (train.cli reads recipes first)
    import numpy as np

EDGE = 64 * 1024  # bytes hashed at each end
SAMPLED_HEADERS = 16
TAR_BLOCK = 512

Reader = Callable[[list[tuple[int, int]]], list[bytes]]  # [(start, end)] -> the bytes of each range


class OneLineError(Exception):
    """A data error reported in one line. Raised in a DataLoader worker, it is re-raised in the rank with the
    worker's traceback in its message; the message is cut back to its own line."""

    def __init__(self, message: str) -> None:
        mark = f"{type(self).__name__}: "
        if "Original Traceback" in message and mark in message:
            message = message.rsplit(mark, 1)[1].strip()
        super().__init__(message)


class ShardChanged(OneLineError, ValueError):
    """A shard differs from the one its index describes (truncated, replaced, or another shard under its name)."""


def ranges(size: int, index: np.ndarray) -> list[tuple[int, int]]:
    """The byte ranges a fingerprint hashes: both ends, and the header blocks of sampled members."""
    data = index["img_off"][index["img_len"] >= 0]
    if not len(data):
        data = index["txt_off"][index["txt_len"] >= 0]
    import numpy as np  # noqa: PLC0415

    picks = np.unique(np.linspace(0, len(data) - 1, min(SAMPLED_HEADERS, len(data))).astype(np.int64))
    headers = [(int(data[i]) - TAR_BLOCK, int(data[i])) for i in picks if data[i] >= TAR_BLOCK]
    return [(0, min(EDGE, size)), (max(0, size - EDGE), size), *headers]


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same bytes in fewer, sorted reads (a small shard is one read)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def fingerprint(read: Reader, size: int, index: np.ndarray) -> str:
    digest = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    for chunk in read(_merged(ranges(size, index))):
        digest.update(len(chunk).to_bytes(8, "little"))
        digest.update(chunk)
    return digest.hexdigest()


def file_reader(path: str) -> Reader:
    def read(spans: list[tuple[int, int]]) -> list[bytes]:
        with open(path, "rb") as f:
            return open_file_reader(f)(spans)

    return read


def open_file_reader(f: BinaryIO) -> Reader:
    def read(spans: list[tuple[int, int]]) -> list[bytes]:
        return [os.pread(f.fileno(), end - start, start) for start, end in spans]

    return read


def fs_reader(fs, path: str) -> Reader:  # noqa: ANN001 - an fsspec filesystem
    def read(spans: list[tuple[int, int]]) -> list[bytes]:
        return fs.cat_ranges([path] * len(spans), [s for s, _ in spans], [e for _, e in spans])

    return read


def shard_problem(f: BinaryIO, info, index: np.ndarray) -> str | None:  # noqa: ANN001 - data.manifest.ShardInfo
    """What is wrong with the open local shard `f` against its index entry `info` (size, fingerprint), or None.
    Indexes written before fingerprints were recorded are checked by size only."""
    size = os.fstat(f.fileno()).st_size
    if size != info.bytes:
        return f"{size} bytes, {info.bytes} when indexed (truncated or replaced)"
    if info.fingerprint and fingerprint(open_file_reader(f), size, index) != info.fingerprint:
        return "its content differs from the indexed one (fingerprint mismatch: replaced by another shard?)"
    return None


class IndexMismatch(OneLineError, ValueError):
    """data.path and data.webdataset.index name different datasets, or shards that the index does not list."""
