"""Whole remote shards copied to a bounded local cache directory, shared by all workers of a machine.

A remote shard is fetched with one sequential download (never one request per sample) the first
time any worker needs it, then memory-mapped like a local shard. Workers agree through a lock file
per shard, so a shard is downloaded once per machine. When the cache grows past its bound, the
shards used longest ago are deleted (a worker that still maps one keeps reading it: Linux keeps
an unlinked file's pages until the last mapping closes). A cached copy that no longer matches its index entry
(size, fingerprint: data/integrity.py) is fetched again (`refetch`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable

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

    def local(self, url: str, size: int) -> str:
        """A local copy of `url` (`size` bytes as indexed), downloading it if no worker has yet."""
        path = self._name(url, size)
        if _has(path, size):
            os.utime(path)  # most recently used
            return path
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not _has(path, size):
                    self._download(url, path, size)
                os.utime(path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._evict(keep=path)
        return path

    def refetch(self, url: str, size: int, problem: Callable[[str], str | None]) -> str:
        """Download `url` again over a cached copy that `problem(path)` finds damaged (unless another worker
        already did: the check runs again under the shard's lock)."""
        path = self._name(url, size)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not _has(path, size) or problem(path) is not None:
                    self._download(url, path, size)
                os.utime(path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return path

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
            raise ShardChanged(f"shard {url} has {got} bytes, {size} when indexed: it changed since it was indexed; "
                               "restore it, or re-index with tools/make_shards.py manifest")  # fmt: skip
        os.replace(tmp, path)
        log.debug("cached %s (%d bytes) as %s", url, size, path)

    def _evict(self, keep: str) -> None:
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
            try:
                os.unlink(full)
                total -= nbytes
            except FileNotFoundError:
                pass


def _has(path: str, size: int) -> bool:
    try:
        return os.path.getsize(path) == size
    except FileNotFoundError:
        return False
