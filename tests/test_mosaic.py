"""fashion-mosaic shards: distinct retrieval captions, stable keys, cells from the right split; one class list."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from evaluation.prompts import FASHION_MNIST_CLASSNAMES, get_classnames, get_templates, render
from tools import make_shards
from tools.mosaic import distinct_mosaics, random_mosaics

SRC = Path(make_shards.FASHION_MNIST_DIR)
pytestmark = pytest.mark.skipif(
    not (SRC / "t10k-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist missing (make fashion-mnist)"
)


def _samples(split_dir: Path) -> list[dict]:
    """Every sample of a split's shards in tar order: key, caption, json, image bytes."""
    out: dict[str, dict] = {}
    for tar_path in sorted(split_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            for m in tf:
                stem, ext = m.name.rsplit(".", 1)
                out.setdefault(stem, {})[ext] = tf.extractfile(m).read()
    return [
        {
            "key": json.loads(s["json"])["key"],
            "caption": s.get("txt", b"").decode(),
            "meta": json.loads(s["json"]),
            "png": s["png"],
        }
        for s in out.values()
    ]


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same small mosaic set built twice with one seed."""
    dirs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(name)
        make_shards.main(
            [
                "fashion-mosaic",
                "--out",
                str(out),
                "--train-size",
                "60",
                "--test-size",
                "50",
                "--val-size",
                "40",
                "--zeroshot-size",
                "30",
                "--shard-size",
                "25",
                "--seed",
                "3",
            ]
        )
        dirs.append(out)
    return dirs[0], dirs[1]


def test_retrieval_set_has_distinct_captions_naming_its_cells(mosaics: tuple[Path, Path]) -> None:
    test = _samples(mosaics[0] / "test")
    assert len(test) == 50 and len({s["caption"] for s in test}) == 50
    assert len({tuple(s["meta"]["cells"]) for s in test}) == 50
    for s in test:  # cells in row-major order, each named after its position
        parts = s["caption"].split(", ")
        assert len(parts) == 4
        for part, pos, cell in zip(parts, ("left", "right", "left", "right"), s["meta"]["cells"], strict=True):
            assert part.split(" ")[1] == pos and part.endswith(" " + FASHION_MNIST_CLASSNAMES[cell])
    rows = list(csv.DictReader((mosaics[0] / "test.csv").open()))
    assert [r["title"] for r in rows] == [s["caption"] for s in test]
    assert all((mosaics[0] / r["filepath"]).read_bytes() == s["png"] for r, s in zip(rows, test, strict=True))


def test_keys_are_stable_and_the_build_is_deterministic(mosaics: tuple[Path, Path]) -> None:
    for split, n in (("train", 60), ("test", 50), ("val", 40), ("zeroshot", 30)):
        a, b = _samples(mosaics[0] / split), _samples(mosaics[1] / split)
        assert [s["key"] for s in a] == list(range(n))
        assert a == b, f"{split} differs between two builds with one seed"
        manifest = json.loads((mosaics[0] / split / "manifest.json").read_text())
        assert manifest["total"] == n and manifest["classes"] == list(FASHION_MNIST_CLASSNAMES)


def test_cells_come_from_their_split() -> None:
    train_x, train_y = (make_shards._read_idx(str(SRC / f)) for f in make_shards.FASHION_FILES["train"])
    test_x, test_y = (make_shards._read_idx(str(SRC / f)) for f in make_shards.FASHION_FILES["test"])
    test_set = {x.tobytes(): y for x, y in zip(test_x, test_y, strict=True)}
    train_set = {x.tobytes() for x in train_x}
    for m in distinct_mosaics(test_x, test_y, 5, "0/test"):
        cells = [m.pixels[r : r + 28, c : c + 28] for r in (0, 28) for c in (0, 28)]
        assert [test_set[cell.tobytes()] for cell in cells] == list(m.labels)
    m = next(random_mosaics(train_x, train_y, 1, "0/train"))
    assert m.pixels.shape == (56, 56) and m.pixels.dtype == np.uint8
    assert all(m.pixels[r : r + 28, c : c + 28].tobytes() in train_set for r in (0, 28) for c in (0, 28))


def test_validation_mosaics_use_train_images_no_training_mosaic_uses(
    mosaics: tuple[Path, Path], tmp_path: Path
) -> None:
    train_x, train_y = (make_shards._read_idx(str(SRC / f)) for f in make_shards.FASHION_FILES["train"])
    used = {i for m in random_mosaics(train_x, train_y, 60, "3/train") for i in m.sources}
    val = list(distinct_mosaics(train_x, train_y, 40, "3/val", exclude=frozenset(used)))
    assert not used & {i for m in val for i in m.sources} and len({m.labels for m in val}) == 40
    built = _samples(mosaics[0] / "val")
    assert [s["meta"]["cells"] for s in built] == [list(m.labels) for m in val]
    assert [s["caption"] for s in built] == [m.caption for m in val]
    # Adding the split changed nothing else: the train and test shards equal a build without it.
    make_shards.main(
        [
            "fashion-mosaic",
            "--out",
            str(tmp_path),
            "--train-size",
            "60",
            "--test-size",
            "50",
            "--val-size",
            "0",
            "--zeroshot-size",
            "30",
            "--shard-size",
            "25",
            "--seed",
            "3",
        ]
    )
    assert not (tmp_path / "val").exists()
    for split in ("train", "test"):
        assert _samples(tmp_path / split) == _samples(mosaics[0] / split)
    with pytest.raises(ValueError, match="no image left for class"):
        next(distinct_mosaics(train_x[:20], train_y[:20], 1, "x", exclude=frozenset(range(20))))


def test_zeroshot_items_are_tiled_and_prompted_like_training_captions(mosaics: tuple[Path, Path]) -> None:
    _, test_y = (make_shards._read_idx(str(SRC / f)) for f in make_shards.FASHION_FILES["test"])
    zs = _samples(mosaics[0] / "zeroshot")
    assert [s["meta"]["label"] for s in zs] == test_y[:30].tolist()
    prompts = [render(t, FASHION_MNIST_CLASSNAMES[zs[0]["meta"]["label"]]) for t in get_templates("fashion-mosaic")]
    assert zs[0]["caption"] in prompts and len(set(prompts)) == 2


def test_one_fashion_mnist_class_list(tmp_path: Path) -> None:
    """make_shards writes the class names zero-shot prompts use (issue 13: 't-shirt/top' vs 't-shirt')."""
    assert make_shards.FASHION_CLASSES is FASHION_MNIST_CLASSNAMES
    make_shards.main(["fashion-mnist", "--out", str(tmp_path), "--splits", "test", "--limit", "3"])
    manifest = json.loads((tmp_path / "test" / "manifest.json").read_text())
    assert manifest["classes"] == list(get_classnames("fashion-mnist")) == list(get_classnames("fashion-mosaic"))
    assert FASHION_MNIST_CLASSNAMES[0] == "t-shirt/top" and len(FASHION_MNIST_CLASSNAMES) == 10
