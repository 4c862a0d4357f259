"""A shard is the one its index describes, wherever it is read from.

One index serves every copy of its shards (a local copy, an HTTP mirror), matched by name and size and verified
by the fingerprint recorded at index time; a shard swapped for another of the same size, a truncated one, or an
index of other shards stops the loader with one line naming it; a damaged cached copy is fetched again."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import tools.make_shards as make_shards
from benchmarks.local_servers import http_server
from data.config import DataConfig
from data.integrity import IndexMismatch, ShardChanged
from data.loader import build_train_loader
from tests.data_fixtures import write_shards

SIZES = [14, 9, 17]


def cfg(path, **kw) -> DataConfig:
    base = dict(path=str(path), batch_size=4, workers=1, image_size=8, seed=5, shuffle_window=10)
    return DataConfig(**{**base, **kw})


def epoch_keys(c: DataConfig) -> list[int]:
    loader = build_train_loader(c, 0, 1)
    try:
        return [int(k) for batch in loader for k in batch["index"]]
    finally:
        loader.close()


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """The shards where they were indexed (`ro`, index in `index`), a copy (`copy`) and shards of the same sizes
    holding other samples (`other`)."""
    write_shards(str(tmp_path / "ro"), SIZES)
    for name in os.listdir(tmp_path / "ro"):  # the index lives elsewhere (a read-only mount is indexed so)
        if not name.endswith(".tar"):
            os.remove(tmp_path / "ro" / name)
    make_shards.main(["manifest", "--shards", str(tmp_path / "ro"), "--out", str(tmp_path / "index"), "--workers", "1"])
    shutil.copytree(tmp_path / "ro", tmp_path / "copy")
    write_shards(str(tmp_path / "other"), SIZES, keys=list(range(100, 100 + sum(SIZES))))
    return {name: tmp_path / name for name in ("ro", "index", "copy", "other")} | {"root": tmp_path}


def test_one_index_serves_a_local_copy_and_an_http_mirror(data: dict[str, Path]) -> None:
    index = str(data["index"])
    reference = epoch_keys(cfg(data["ro"], webdataset={"index": index}))
    assert sorted(reference) == list(range(sum(SIZES)))
    assert epoch_keys(cfg(data["copy"], webdataset={"index": index})) == reference  # a directory copy
    pattern = data["copy"] / "{0000..0002}-00.tar"
    assert epoch_keys(cfg(pattern, webdataset={"index": index})) == reference  # a pattern over it
    with http_server(str(data["copy"])) as (url, _):
        remote = {"index": index, "cache_dir": str(data["root"] / "cache")}
        assert epoch_keys(cfg(f"{url}/{{0000..0002}}-00.tar", webdataset=remote)) == reference
        assert epoch_keys(cfg(url, webdataset=remote)) == reference  # the mirror's directory URL


def test_a_shard_swapped_for_another_of_the_same_size_stops_the_loader_naming_it(data: dict[str, Path]) -> None:
    swapped = data["copy"] / "0001-00.tar"
    assert os.path.getsize(swapped) == os.path.getsize(data["other"] / "0001-00.tar")  # tar pads: equal sizes
    shutil.copy(data["other"] / "0001-00.tar", swapped)
    with pytest.raises(ShardChanged) as err:
        epoch_keys(cfg(data["copy"], webdataset={"index": str(data["index"])}))  # read in a loader worker
    message = str(err.value)
    assert message.startswith(f"shard {swapped} changed since it was indexed as ") and "\n" not in message
    assert "fingerprint mismatch" in message and "re-index" in message


def test_a_truncated_shard_stops_before_training_naming_it(data: dict[str, Path]) -> None:
    cut = data["copy"] / "0002-00.tar"
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) - 10240)
    with pytest.raises(ShardChanged, match=rf"shard {cut} changed since it was indexed .*51200 bytes, 61440"):
        build_train_loader(cfg(data["copy"], webdataset={"index": str(data["index"])}), 0, 1)


def test_an_index_of_other_shards_names_the_mismatch(data: dict[str, Path], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_shards(str(elsewhere), [3], keys=[500, 501, 502])
    os.rename(elsewhere / "0000-00.tar", elsewhere / "part-7.tar")
    with pytest.raises(IndexMismatch, match=r"belongs to other shards: it lists 3 shard\(s\) .*none named like"):
        build_train_loader(cfg(elsewhere / "part-7.tar", webdataset={"index": str(data["index"])}), 0, 1)
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    with pytest.raises(IndexMismatch, match="none of the 3 shard.* that the index .* lists exist under"):
        build_train_loader(cfg(empty, webdataset={"index": str(data["index"])}), 0, 1)


def test_a_damaged_cached_shard_is_fetched_again(data: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    index, cache = str(data["index"]), data["root"] / "cache"
    reference = epoch_keys(cfg(data["ro"], webdataset={"index": index}))
    with http_server(str(data["copy"])) as (url, log):
        c = cfg(f"{url}/{{0000..0002}}-00.tar", webdataset={"index": index, "cache_dir": str(cache)}, workers=0)
        assert epoch_keys(c) == reference
        cached = next(p for p in cache.iterdir() if p.name.endswith("0001-00.tar"))
        damaged = bytearray(cached.read_bytes())
        damaged[520:540] = bytes(b ^ 0xFF for b in damaged[520:540])  # flipped bytes of the first image, same size
        cached.write_bytes(bytes(damaged))
        fetched = sum(1 for method, path, _ in log if method == "GET" and path == "/0001-00.tar")
        with caplog.at_level(logging.WARNING, logger="data.sources"):
            assert epoch_keys(c) == reference
        assert f"cached copy {cached} of {url}/0001-00.tar is damaged" in caplog.text
        assert sum(1 for method, path, _ in log if method == "GET" and path == "/0001-00.tar") == fetched + 1
    assert np.array_equal(
        np.frombuffer(cached.read_bytes(), np.uint8), np.frombuffer((data["ro"] / "0001-00.tar").read_bytes(), np.uint8)
    )
