"""Shards behind HTTP and S3 (real servers on 127.0.0.1): indexed where they are, read shard by shard into
a bounded cache, and the same bit-identical, resumable stream as from local files."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch

import tools.make_shards as make_shards
from benchmarks.local_servers import http_server, s3_server
from data.config import DataConfig
from data.loader import build_train_loader
from tests.data_fixtures import shards_in_s3, write_shards

SIZES = [6, 5, 7, 6]


def cfg(path, **kw) -> DataConfig:
    base = dict(
        path=str(path), batch_size=4, workers=2, image_size=8, seed=5, shuffle_window=10, train_crop_scale=(0.5, 1.0)
    )
    return DataConfig(**{**base, **kw})


def stream(c: DataConfig, epochs=(0, 1), stop_after: int | None = None) -> tuple[list[dict], dict]:
    """Batches of the given epochs; with stop_after, only that many batches of the first, and the state there."""
    loader = build_train_loader(c, 0, 1)
    out = []
    for e in epochs:
        loader.set_epoch(e)
        for b in loader:
            out.append(b)
            if stop_after is not None and len(out) == stop_after:
                state = loader.state_dict()
                loader.close()
                return out, state
    loader.close()
    return out, loader.state_dict()


def resumed(c: DataConfig, state: dict, epochs=(0, 1)) -> list[dict]:
    loader = build_train_loader(c, 0, 1)
    loader.load_state_dict(state)
    out = []
    for e in epochs:
        if e < state["epoch"]:
            continue
        loader.set_epoch(e)
        out += list(loader)
    loader.close()
    return out


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["pixels"], y["pixels"])
        assert torch.equal(x["tokens"], y["tokens"])


@pytest.fixture
def local(tmp_path):
    write_shards(tmp_path / "local", SIZES)
    return tmp_path / "local"


def check_remote(remote_path: str, index: str, local_dir, cache) -> None:
    """The remote stream equals the local one bit for bit, and resumes mid-epoch bit for bit."""
    reference, _ = stream(cfg(local_dir))
    remote_cfg = cfg(remote_path, webdataset={"index": index, "cache_dir": str(cache)})
    full, _ = stream(remote_cfg)
    assert_same(full, reference)
    first, state = stream(remote_cfg, stop_after=3)
    assert state["epoch"] == 0 and state["position"] == 3
    assert_same(first + resumed(remote_cfg, state), reference)
    assert len([f for f in os.listdir(cache) if f.endswith(".tar")]) == len(SIZES)


@pytest.mark.slow
def test_http_shards(local, tmp_path):
    with http_server(str(local)) as (url, log):
        pattern = f"{url}/{{0000..0003}}-00.tar"
        make_shards.main(["manifest", "--shards", pattern, "--out", str(tmp_path / "index"), "--workers", "2"])
        index_requests = len(log)
        stats_requests = sum(1 for _, p, _ in log if p.endswith("_stats.json"))
        check_remote(pattern, str(tmp_path / "index"), local, tmp_path / "cache")
        gets = Counter(p for method, p, _ in log[index_requests:] if method == "GET" and p.endswith(".tar"))
    # whole shards, once per machine (the cache is shared by the workers of all loaders), never per sample;
    # the other requests are one directory listing per loader (the existence check)
    assert set(gets) == {f"/{s:04d}-00.tar" for s in range(len(SIZES))} and max(gets.values()) == 1
    # indexing: a few large reads per shard and one for its fingerprint; img2dataset's X_stats.json beside each
    # shard (the download holes report): its size, then its bytes
    assert index_requests - stats_requests <= 5 * len(SIZES) and stats_requests <= 2 * len(SIZES)


@pytest.mark.slow
def test_s3_shards_with_index_in_the_bucket(local, tmp_path, monkeypatch):
    import s3fs

    with s3_server() as endpoint:
        fs = shards_in_s3(monkeypatch, endpoint, str(local), "shards-bucket")
        make_shards.main(["manifest", "--shards", "s3://shards-bucket/data", "--out", "s3://shards-bucket/index"])
        assert fs.exists("shards-bucket/index/manifest.json") and not fs.exists("shards-bucket/data/manifest.json")
        check_remote("s3://shards-bucket/data", "s3://shards-bucket/index", local, tmp_path / "cache")
        with pytest.raises(FileNotFoundError, match=r"1 of 2 shard.*s3://shards-bucket/data/0009-00.tar"):
            build_train_loader(
                cfg("s3://shards-bucket/data/{0000,0009}-00.tar", webdataset={"index": "s3://shards-bucket/index"})
            )
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.slow
def test_cache_stays_within_its_bound(local, tmp_path):
    with http_server(str(local)) as (url, _):
        pattern = f"{url}/{{0000..0003}}-00.tar"
        make_shards.main(["manifest", "--shards", pattern, "--out", str(tmp_path / "index"), "--workers", "1"])
        cache = tmp_path / "cache"
        options = {"index": str(tmp_path / "index"), "cache_dir": str(cache), "cache_max_gb": 1e-6}
        loader = build_train_loader(cfg(pattern, webdataset=options, workers=0, shuffle_window=0))
        assert len(list(loader)) == loader.steps_per_epoch
    assert len([f for f in os.listdir(cache) if f.endswith(".tar")]) == 1  # ~1 kB bound: only the newest shard
