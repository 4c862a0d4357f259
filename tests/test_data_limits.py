"""The data path in one line, and right: a source listed twice in data.sources is refused (it would be read
twice, silently), and an image too large to decode every time it is drawn is skipped and counted."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from data.config import DataConfig
from data.image_limits import MAX_IMAGE_PIXELS
from data.loader import build_train_loader
from data.manifest import build_manifest
from data.shards import ShardWriter
from tests.data_fixtures import caption_of, png
from tests.tiny_run import tiny_recipe
from train.cli import main
from train.faults.exit_codes import ExitCode


@pytest.mark.parametrize("second", ["{shards}", "{shards}/", "{shards}/../{name}"])
def test_a_source_listed_twice_is_one_config_error(second: str, tmp_path: Path, capsys) -> None:
    shards = tmp_path / "cc"
    raw = tiny_recipe(str(tmp_path / "run"), "")
    raw["data"] |= {
        "path": "",
        "sources": [
            {"path": str(shards), "weight": 1.0},
            {"path": second.format(shards=shards, name="cc"), "weight": 1.0},
        ],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "r.yaml")]) == ExitCode.CONFIG
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.sources[1] repeats data.sources[0]" in err, err
    assert "raise its weight" in err


def _huge_png() -> bytes:
    """A 12000 x 12000 PNG (the probe's): small on disk, 144 M pixels to decode."""
    buffer = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_huge_image_is_skipped_and_counted_without_decoding(tmp_path: Path) -> None:
    assert 12000 * 12000 > MAX_IMAGE_PIXELS >= 8192 * 8192
    with ShardWriter(str(tmp_path), shard_size=100) as writer:
        for key in range(8):
            writer.write(key, _huge_png() if key == 3 else png(key), "png", caption_of(key))
    build_manifest(writer.paths, str(tmp_path))
    assert os.path.getsize(writer.paths[0]) < 2 << 20
    loader = build_train_loader(
        DataConfig(path=str(tmp_path), batch_size=4, workers=0, image_size=8, shuffle_window=0), 0, 1
    )
    keys = [int(k) for batch in loader for k in batch["index"]]
    assert len(keys) == 8 and 3 not in keys  # its slot was refilled by another sample
    assert loader.skipped_counts()["image_too_large"] == 1
