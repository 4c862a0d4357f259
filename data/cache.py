"""Whole remote shards copied to a bounded local cache directory, shared by all workers of a machine.

A remote shard is fetched with one sequential download (never one request per sample) the first
time any worker needs it, then memory-mapped like a local shard. Workers agree through a lock file
per shard, so a shard is downloaded once per machine. The cache hands out open files, never paths:
when it grows past its bound the shards used longest ago are deleted, each under its own lock (a
shard being fetched or opened is skipped), and a worker that already opened one keeps reading it
(Linux keeps an unlinked file until its last descriptor or mapping closes). A cached copy that no
longer matches its index entry (size, fingerprint: data/integrity.py) is fetched again (`refetch`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from data.integrity import ShardChanged
from data.remote import BIG_BLOCK, access_denied, basename, filesystem
from data.retry import retrying

log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"fastflip-shard-cache-{os.getuid()}")


class ShardCache:
    def __init__(self, directory: str, max_bytes: int, retry_s: float = 0.0) -> None:
        self.directory = directory or default_cache_dir()
        self.max_bytes = max_bytes
        self.retry_s = retry_s  # transient download errors are retried this long (data/retry.py)
        os.makedirs(self.directory, exist_ok=True)

    def _name(self, url: str, size: int) -> str:
        digest = hashlib.sha1(f"{url}\0{size}".encode()).hexdigest()[:16]
        return os.path.join(self.directory, f"{digest}-{basename(url)}")

    def open(self, url: str, size: int) -> BinaryIO:
        """An open local copy of `url` (`size` bytes as indexed), downloading it if no worker has yet."""
        path = self._name(url, size)
        f = _open_if(path, size)
        if f is None:
            with _locked(path):
                if not _has(path, size):
                    self._download(url, path, size)
                f = open(path, "rb")
        os.utime(f.fileno())  # most recently used (the open file: another worker may have evicted the path)
        self._evict(keep=path)
        return f

    def refetch(self, url: str, size: int, problem: Callable[[BinaryIO], str | None]) -> BinaryIO:
        """Download `url` again over a cached copy that `problem(file)` finds damaged (unless another worker
        already did: the check runs again under the shard's lock)."""
        path = self._name(url, size)
        with _locked(path):
            f = _open_if(path, size)
            if f is not None and problem(f) is not None:
                f.close()
                f = None
            if f is None:
                self._download(url, path, size)
                f = open(path, "rb")
        os.utime(f.fileno())
        return f

    def _download(self, url: str, path: str, size: int) -> None:
        tmp = f"{path}.part{os.getpid()}"
        fs, remote_path = filesystem(url)

        def fetch() -> None:
            try:
                with fs.open(remote_path, "rb", block_size=BIG_BLOCK) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, BIG_BLOCK)
            except PermissionError as err:
                raise access_denied(url, err) from None

        retrying(fetch, url, self.retry_s)
        got = os.path.getsize(tmp)
        if got != size:
            os.unlink(tmp)
            raise ShardChanged(
                f"shard {url} has {got} bytes, {size} when indexed: it changed since it was indexed; "
                "restore it, or re-index with tools/make_shards.py manifest"
            )
        os.replace(tmp, path)
        log.debug("cached %s (%d bytes) as %s", url, size, path)

    def _evict(self, keep: str) -> None:
        """Delete the shards used longest ago until the cache fits its bound; a shard whose lock another worker
        holds (fetching or opening it) is left alone."""
        entries = []
        for name in os.listdir(self.directory):
            full = os.path.join(self.directory, name)
            if name.endswith(".tar") and full != keep:
                try:
                    st = os.stat(full)
                except FileNotFoundError:  # another worker evicted it
                    continue
                entries.append((st.st_mtime, st.st_size, full))
        try:
            kept = os.path.getsize(keep)
        except FileNotFoundError:  # evicted or being fetched again by another worker: it holds no space now
            kept = 0
        total = sum(e[1] for e in entries) + kept
        for _, nbytes, full in sorted(entries):
            if total <= self.max_bytes:
                break
            with _locked(full, wait=False) as held:
                if held and os.path.exists(full):
                    os.unlink(full)
                    total -= nbytes


@contextmanager
def _locked(path: str, wait: bool = True) -> Iterator[bool]:
    """Hold the lock file of the cached shard `path`; with wait=False, yield False at once if another holds it."""
    with open(path + ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_if(path: str, size: int) -> BinaryIO | None:
    """`path` opened if it exists with `size` bytes (an open file survives a later eviction), else None."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    if os.fstat(f.fileno()).st_size != size:
        f.close()
        return None
    return f


def _has(path: str, size: int) -> bool:
    try:
        return os.path.getsize(path) == size
    except FileNotFoundError:
        return False
