"""The shard index: dense rows with source keys, problems found at index time, an index apart from
read-only data, missing shards listed before training."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

import tools.make_shards as make_shards
from data.config import DataConfig
from data.loader import build_train_loader
from data.manifest import load_index, resolve_shards
from tests.data_fixtures import caption_of, png, write_raw_tar, write_shards


def cfg(path, **kw) -> DataConfig:
    return DataConfig(**{"path": str(path), "batch_size": 4, "workers": 0, "image_size": 8, "seed": 1, **kw})


def rows_of(loader) -> list[int]:
    return [k for b in loader for k in b["index"].tolist()]


def img2dataset_tar(path, keys: list[str], json_field: str | None = "key") -> None:
    """A shard laid out as img2dataset writes it: NNN.jpg / .txt / .json (json carries the key)."""
    members = []
    for i, k in enumerate(keys):
        name = k if json_field == "key" else f"{i:09d}"
        members += [(f"{name}.jpg", png(i)), (f"{name}.txt", caption_of(i).encode())]
        if json_field:
            members.append((f"{name}.json", json.dumps({json_field: k, "status": "success"}).encode()))
    write_raw_tar(str(path), members)


def test_missing_shards_are_listed_before_training(tmp_path, caplog):
    write_shards(tmp_path, [4, 4])  # 0000-00.tar, 0001-00.tar
    few = str(tmp_path / "{0000..0004}-00.tar")
    with pytest.raises(FileNotFoundError, match=r"3 of 5 shard.*0002-00.tar, .*0003-00.tar, .*0004-00.tar"):
        build_train_loader(cfg(few), 0, 1)
    many = str(tmp_path / "{0000..0013}-00.tar")
    with pytest.raises(FileNotFoundError, match=r"12 of 14 shard.*0011-00.tar and 2 more.*allow_missing_shards"):
        build_train_loader(cfg(many), 0, 1)
    with caplog.at_level(logging.WARNING, logger="data.manifest"):
        loader = build_train_loader(cfg(many, webdataset={"allow_missing_shards": True}), 0, 1)
    assert "12 of 14 shards" in caplog.text
    assert sorted(rows_of(loader)) == list(range(8))
    with pytest.raises(SystemExit, match="3 of 5 shards"):  # the indexing tool says the same
        make_shards.main(["manifest", "--shards", few, "--out", str(tmp_path / "idx")])


def test_dense_rows_keep_source_keys(tmp_path):
    """img2dataset keys with download holes, DataComp uids and json-less shards all index densely."""
    src = tmp_path / "src"
    os.makedirs(src)
    img2dataset_tar(src / "00000.tar", ["000000000", "000000003", "000000004"])  # holes: 1, 2 failed
    img2dataset_tar(src / "00001.tar", ["000010002", "000010007"])
    img2dataset_tar(src / "00002.tar", ["9f86d081884c7d65", "2c26b46b68ffc68f"], json_field="uid")
    img2dataset_tar(src / "00003.tar", ["a", "b", "c"], json_field=None)  # no json: the tar key
    make_shards.main(["manifest", "--shards", str(src), "--out", str(tmp_path / "idx"), "--workers", "2"])
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["num_samples"] == manifest["total"] == 10 and not manifest["keys_are_rows"]
    assert [s["row_start"] for s in manifest["shards"]] == [0, 3, 5, 7]
    shardset = resolve_shards(str(src), str(tmp_path / "idx"))
    keys = [k for s in shardset.shards for k in load_index(s)[1].tolist()]
    assert keys == [
        "000000000",
        "000000003",
        "000000004",
        "000010002",
        "000010007",
        "9f86d081884c7d65",
        "2c26b46b68ffc68f",
        "000000000",
        "000000001",
        "000000002",
    ]
    loader = build_train_loader(cfg(src, webdataset={"index": str(tmp_path / "idx")}), 0, 1)
    assert loader.num_samples == 10 and sorted(set(rows_of(loader))) == list(range(10))

    # re-indexing (serially this time) gives the same rows and keys
    make_shards.main(["manifest", "--shards", str(src), "--out", str(tmp_path / "idx2"), "--workers", "1"])
    again = json.loads((tmp_path / "idx2" / "manifest.json").read_text())
    assert again["shards"] == manifest["shards"]
    for a, b in zip(resolve_shards(str(src), str(tmp_path / "idx2")).shards, shardset.shards, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(load_index(a), load_index(b), strict=True))


def test_duplicates_and_truncation_reported_by_shard(tmp_path):
    """Two img2dataset outputs each numbered from 0, merged; one tar cut mid-member."""
    for part in ("a", "b"):
        os.makedirs(tmp_path / part)
        img2dataset_tar(tmp_path / part / "00000.tar", [f"{i:09d}" for i in range(5)])
    img2dataset_tar(tmp_path / "b" / "00001.tar", [f"{i:09d}" for i in range(10, 16)])
    cut = tmp_path / "b" / "00001.tar"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2 + 100])  # mid-member
    idx = tmp_path / "idx"
    with pytest.raises(ValueError, match="several directories.*data.webdataset.index"):
        build_train_loader(cfg(tmp_path / "{a,b}/*.tar"), 0, 1)
    both = f"{tmp_path}/a/00000.tar::{tmp_path}/b/{{00000..00001}}.tar"  # OpenCLIP's "::" joins patterns
    make_shards.main(["manifest", "--shards", both, "--out", str(idx)])
    manifest = json.loads((idx / "manifest.json").read_text())
    problems = manifest["problems"]
    assert problems["duplicate_source_keys"] == {
        "samples": 10,
        "by_shard": {str(tmp_path / "a" / "00000.tar"): 5, str(tmp_path / "b" / "00000.tar"): 5},
    }
    ((name, why),) = problems["truncated_or_unreadable"].items()
    assert name.endswith("b/00001.tar") and "truncated" in why
    truncated = manifest["shards"][2]
    assert 0 < truncated["count"] < 6  # the complete samples before the cut are kept
    loader = build_train_loader(cfg(tmp_path / "{a,b}/*.tar", webdataset={"index": str(idx)}), 0, 1)
    assert loader.num_samples == 10 + truncated["rows"]
    assert sorted(set(rows_of(loader))) == list(range(loader.num_samples))


def test_index_apart_from_read_only_data(tmp_path):
    """The shard directory is only read: nothing is written next to the tars, by indexing or training."""
    src = tmp_path / "readonly"
    os.makedirs(src)
    for s in range(3):
        img2dataset_tar(src / f"{s:05d}.tar", [f"{s * 10 + i:09d}" for i in range(4)])
    before = {p: os.stat(src / p).st_mtime_ns for p in os.listdir(src)}
    os.chmod(src, 0o555)
    try:
        make_shards.main(["manifest", "--shards", str(src / "{00000..00002}.tar"), "--out", str(tmp_path / "index")])
        with pytest.raises(FileNotFoundError, match=r"no manifest.json in .*--out"):
            build_train_loader(cfg(src), 0, 1)  # the index is elsewhere: the error says how to make it there
        index = {"index": str(tmp_path / "index")}
        loader = build_train_loader(cfg(src / "{00000..00001}.tar", webdataset=index), 0, 1)
        assert sorted(rows_of(loader)) == list(range(8))  # a subset of the indexed shards keeps its rows
        everything = build_train_loader(cfg("", webdataset=index), 0, 1)
        assert everything.num_samples == 12 and sorted(rows_of(everything)) == list(range(12))
    finally:
        os.chmod(src, 0o755)
    assert {p: os.stat(src / p).st_mtime_ns for p in os.listdir(src)} == before


def test_old_manifest_format_is_refused_with_the_command(tmp_path):
    write_shards(tmp_path, [3])
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["keys_are_rows"]  # keys 0..2 in order: old checkpoints of this data still resume
    (tmp_path / "manifest.json").write_text(json.dumps(m | {"format": "fastflip-shards/1"}))
    with pytest.raises(ValueError, match=r"fastflip-shards/1.*make_shards.py manifest --shards"):
        build_train_loader(cfg(tmp_path), 0, 1)


def test_recipes_size_the_state_by_dense_rows():
    """The paper recipes no longer carry img2dataset's sparse key space: the dry run sizes the state by pairs."""
    from train.dry_run import dry_run
    from train.setup import load_setup

    setup = load_setup("recipes/configs/fastclip_laion315m_vitb16_4node.yaml")
    assert setup.cfg.data.num_samples is None and setup.cfg.dataset_samples == 315_000_000
    assert "per-sample state: 315,000,000 dense rows x 2 columns" in dry_run(setup)


@pytest.mark.parametrize("key", ["path", "webdataset.index"])
def test_credentials_in_urls_are_refused(key):
    url = "s3://AKIAEXAMPLE:secret@bucket/shards"
    with pytest.raises(ValueError, match=f"data.{key}.*credentials.*environment"):
        DataConfig(**{"path": url} if key == "path" else {"path": "x", "webdataset": {"index": url}})
