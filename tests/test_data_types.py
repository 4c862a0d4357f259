"""The typed data seams (data.types): every source answers the Source protocol, a stream is read across epochs by
`batches`, and declaring the protocols leaves torch's `Stateful` checks working."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from torch.distributed.checkpoint.stateful import Stateful

from data.config import DataConfig
from data.loader import build_train_loader
from data.open_source import open_source
from data.plan import EpochPlan
from data.types import batches
from tests.data_fixtures import caption_of, png, write_shards
from tests.tiny_run import FixedBatches

PLAN = dict(batch_size=2, seed=3, epoch=1, rank=0, world_size=1, window=0, drop_last=False)


def _csv(directory: Path, n: int) -> str:
    directory.mkdir()
    for key in range(n):
        (directory / f"{key}.png").write_bytes(png(key))
    with (directory / "pairs.csv").open("w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["filepath", "title"])
        rows.writerows([f"{key}.png", caption_of(key)] for key in range(n))
    return str(directory / "pairs.csv")


def _image_folder(directory: Path, per_class: list[int]) -> str:
    for c, n in enumerate(per_class):
        (directory / f"class{c}").mkdir(parents=True)
        for i in range(n):
            (directory / f"class{c}" / f"{i}.png").write_bytes(png(10 * c + i))
    return str(directory)


def test_every_source_answers_the_protocol(tmp_path: Path) -> None:
    write_shards(str(tmp_path / "a"), [4, 3])
    write_shards(str(tmp_path / "b"), [5])
    single = open_source(DataConfig(path=str(tmp_path / "a")))
    mixed = open_source(
        DataConfig(sources=[{"path": str(tmp_path / "a"), "weight": 2.0}, {"path": str(tmp_path / "b"), "weight": 0.4}])
    )
    table = open_source(DataConfig(source="csv", path=_csv(tmp_path / "csv", 5)))
    folder = open_source(DataConfig(source="imagefolder", path=_image_folder(tmp_path / "folder", [2, 3])))

    for source, total, kind in (
        (single, 7, "webdataset"),
        (mixed, 14 + 2, "webdataset"),
        (table, 5, "csv"),
        (folder, 5, "imagefolder"),
    ):
        assert source.kind == kind and source.samples_per_epoch == total
        assert source.plan(**PLAN).steps == -(-total // 2)
        assert source.prefetch(np.array([0])) is None and source.keys_are_rows
    assert isinstance(single.plan(**PLAN), EpochPlan) and not isinstance(mixed.plan(**PLAN), EpochPlan)
    assert single.manifest["num_samples"] == 7 and table.manifest == {} == folder.manifest
    assert single.describe() == f"webdataset {tmp_path / 'a'}" and table.describe().startswith("csv ")
    assert mixed.describe() == "2 mixed webdataset sources" and single.composition() == ""
    assert "weight 0.4 -> 2 per epoch" in mixed.composition()
    assert folder.classes == ["class0", "class1"] and folder.has_labels and not table.has_labels


def test_batches_reads_epoch_after_epoch_and_announces_each(tmp_path: Path) -> None:
    stream, started = FixedBatches(4, 0, 1, steps=3), []
    got = batches(stream, 0, started.append)
    first = [next(got) for _ in range(4)]
    assert [epoch for epoch, _ in first] == [0, 0, 0, 1] and started == [0, 1]
    resumed = FixedBatches(4, 0, 1, steps=3)
    resumed.load_state_dict(stream.state_dict())  # mid-epoch 1: continues it, announcing it once more
    restarted: list[int] = []
    epoch, batch = next(batches(resumed, 1, restarted.append))
    assert epoch == 1 and restarted == [1] and batch["index"].tolist() == next(got)[1]["index"].tolist()


def test_a_stream_without_batches_is_refused() -> None:
    with pytest.raises(ValueError, match="no batches per epoch"):
        next(batches(FixedBatches(4, 0, 1, steps=0), 0, lambda _: None))


def test_the_protocols_leave_stateful_checks_working(tmp_path: Path) -> None:
    """torch.distributed.checkpoint asks isinstance(x, Stateful) of everything it saves."""
    write_shards(str(tmp_path / "a"), [4])
    loader = build_train_loader(DataConfig(path=str(tmp_path / "a"), batch_size=2, workers=0, image_size=8))
    assert isinstance(loader, Stateful) and isinstance(FixedBatches(4, 0, 1, 2), Stateful)
    assert not isinstance(object(), Stateful) and not isinstance(open_source(loader.cfg), Stateful)
