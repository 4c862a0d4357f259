"""Shards written by the real img2dataset (tests/fixtures/img2dataset, rebuilt by its build.sh): string keys,
download holes, samples in completion order; indexed apart from the (read-only) fixture and trained on."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import tools.make_shards as make_shards
from data.config import DataConfig
from data.loader import build_eval_loader, build_train_loader
from data.manifest import load_index, resolve_shards
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from tests.ranks import run_on_ranks
from tests.tiny_run import tiny_config

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "img2dataset", "shards")
MEAN, STD = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float64), torch.tensor(OPENAI_CLIP_STD, dtype=torch.float64)


def color(i: int) -> tuple[int, int, int]:  # as tests/fixtures/img2dataset/build.py draws image i
    return (i * 8) % 256, 255 - (i * 8) % 256, 60


@pytest.fixture
def index(tmp_path) -> str:
    before = sorted(os.listdir(FIXTURE))
    make_shards.main(["manifest", "--shards", FIXTURE, "--out", str(tmp_path / "index"), "--workers", "2"])
    assert sorted(os.listdir(FIXTURE)) == before  # nothing written beside the shards
    return str(tmp_path / "index")


def test_img2dataset_output_indexes_densely(index):
    stats = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(FIXTURE, "*_stats.json")))]
    successes = sum(s["successes"] for s in stats)
    assert successes < sum(s["count"] for s in stats)  # the fixture has download holes
    table = pq.read_table(sorted(glob.glob(os.path.join(FIXTURE, "*.parquet")))).to_pydict()
    ok_keys = sorted(k for k, st in zip(table["key"], table["status"], strict=True) if st == "success")
    manifest = json.loads(open(os.path.join(index, "manifest.json")).read())
    assert manifest["num_samples"] == manifest["total"] == successes and not manifest["keys_are_rows"]
    assert manifest["problems"] == {}
    shardset = resolve_shards(FIXTURE, index)
    keys = [k for s in shardset.shards for k in load_index(s)[1].tolist()]
    assert sorted(keys) == ok_keys and len(set(keys)) == len(keys)

    ev = build_eval_loader(FIXTURE, 16, 64, webdataset={"index": index})
    (batch,) = list(ev)
    assert batch["index"].tolist() == list(range(successes))  # dense rows, in (shard, tar) order
    rgb = batch["images"][:, :, 8, 8].double() * STD + MEAN  # the centre pixel (img2dataset pads with a border)
    for row, key in enumerate(keys):
        i = int(key)  # img2dataset key = shard * 10 + position = the url's number here
        assert np.abs(np.rint(rgb[row].numpy() * 255) - color(i)).max() <= 12, (key, rgb[row])  # JPEG


def _train(rank: int, world_size: int, out_dir: str, index: str) -> list[float]:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, "ddp", batch_size=8)
    cfg.data = DataConfig(path=FIXTURE, webdataset={"index": index}, batch_size=8, workers=1, image_size=32)
    cfg.epochs, cfg.max_steps = 1, 3
    return Trainer(cfg).fit()["losses"]


@pytest.mark.slow
def test_train_on_img2dataset_shards(index, tmp_path):
    cfg = DataConfig(path=FIXTURE, webdataset={"index": index}, batch_size=8, workers=0, image_size=16)
    loader = build_train_loader(cfg)
    assert loader.num_samples == 24 and sorted({k for b in loader for k in b["index"].tolist()}) == list(range(24))
    (losses,) = run_on_ranks(_train, 1, (str(tmp_path / "run"), index))
    assert len(losses) == 3 and all(np.isfinite(losses))
