"""benchmarks/photo_shards.py: distinct real-photo samples, stored in the real img2dataset's layout (the fixture
tests/fixtures/img2dataset was written by img2dataset itself), deterministic given the seed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest
from PIL import Image

from benchmarks.photo_shards import build
from data.manifest import resolve_shards

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "img2dataset", "shards", "00000.tar")


def members(path: str) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


@pytest.mark.slow  # builds two shard sets: seconds, make test only
def test_layouts_match_img2dataset_and_are_deterministic(tmp_path) -> None:
    reference = next(iter(members(FIXTURE).values()))
    ref_meta = json.loads(reference["json"])
    for layout, check in (
        ("img2dataset", lambda w, h: (w, h) == (256, 256)),
        ("datacomp", lambda w, h: max(w, h) <= 512),
    ):
        a, b = tmp_path / f"{layout}-a", tmp_path / f"{layout}-b"
        build(str(a), layout, samples=12, shards=2, seed=5, workers=1)
        build(str(b), layout, samples=12, shards=2, seed=5, workers=1)
        assert sorted(os.listdir(a)) == sorted(os.listdir(b))
        for name in sorted(os.listdir(a)):
            if name.endswith(".tar"):
                assert (a / name).read_bytes() == (b / name).read_bytes(), name
        assert resolve_shards(str(a)).total == 12
        samples = members(str(a / "00000.tar"))
        digests = set()
        for key, parts in samples.items():
            assert set(parts) == set(reference)  # jpg, txt, json: as img2dataset writes them
            meta = json.loads(parts["json"])
            assert set(meta) == set(ref_meta) and meta["key"] == key and len(key) == len(next(iter(samples)))
            assert meta["caption"] == parts["txt"].decode() and 2 <= len(meta["caption"].split()) <= 40
            with Image.open(io.BytesIO(parts["jpg"])) as img:
                assert img.format == "JPEG" and img.mode == "RGB" and check(*img.size)
                assert (meta["width"], meta["height"]) == img.size
            assert meta["sha256"] == hashlib.sha256(parts["jpg"]).hexdigest()
            digests.add(meta["sha256"])
        assert len(digests) == len(samples)  # distinct images
    other = tmp_path / "other-seed"
    build(str(other), "img2dataset", samples=12, shards=2, seed=6, workers=1)
    assert (other / "00000.tar").read_bytes() != (tmp_path / "img2dataset-a" / "00000.tar").read_bytes()
