"""The shard cache hands out open files: a shard that one worker opened stays readable when another worker's
download evicts it, and eviction leaves alone a shard whose lock another worker holds (fetching or opening it).
The bound here is one byte, so every open evicts every other shard (the CI race: a worker verified a cached shard
that another rank had just deleted)."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
from pathlib import Path

from data.cache import ShardCache


def _shards(tmp_path: Path, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        data = bytes([i]) * (4096 + 512 * i)
        path = tmp_path / "remote" / f"{i:04d}.tar"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        out.append((str(path), data))
    return out


def test_an_open_shard_survives_its_eviction(tmp_path: Path) -> None:
    (a, data_a), (b, _) = _shards(tmp_path, 2)
    mine, other = ShardCache(str(tmp_path / "cache"), 1), ShardCache(str(tmp_path / "cache"), 1)
    with mine.open(a, len(data_a)) as f:
        cached = f.name
        other.open(b, os.path.getsize(b)).close()
        assert not os.path.exists(cached)
        assert f.read() == data_a


def test_eviction_skips_a_shard_whose_lock_another_worker_holds(tmp_path: Path) -> None:
    (a, data_a), (b, _) = _shards(tmp_path, 2)
    cache = ShardCache(str(tmp_path / "cache"), 1)
    cache.open(a, len(data_a)).close()
    cached = os.path.join(cache.directory, next(n for n in os.listdir(cache.directory) if n.endswith(".tar")))
    with open(cached + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache.open(b, os.path.getsize(b)).close()
        assert os.path.exists(cached)
    cache.open(b, os.path.getsize(b)).close()
    assert not os.path.exists(cached)


def _reader(directory: str, shards: list[tuple[str, bytes]], rounds: int, worker: int) -> None:
    cache = ShardCache(directory, 1)
    for r in range(rounds):
        url, data = shards[(r + worker) % len(shards)]
        with cache.open(url, len(data)) as f:
            assert f.read() == data, (worker, r)


def test_workers_that_evict_each_other_always_read_whole_shards(tmp_path: Path) -> None:
    shards = _shards(tmp_path, 3)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_reader, args=(str(tmp_path / "cache"), shards, 150, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
