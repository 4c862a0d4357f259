"""DataComp's metadata sets and WinoGAViL made offline from scikit-learn's digits, in the layout its download writes.

- WILDS / fairness sets: clip_benchmark's webdataset layout under `wds_<name>_test` (DataComp's folder names),
  each sample a `<key>.png`, its `<key>.cls` and `<key>.npy` (np.save of the integer metadata vector, the fields
  DataComp's evaluators name), with synthetic groups;
- the Hugging Face sets (WinoGAViL, the retrieval sets): the Arrow stream file `datasets` caches,
  `hf_cache/nlphuji___<name>/default/0.0.0/<hash>/<name>-test.arrow`, images stored as `datasets` stores an Image
  (struct of bytes and path): as bytes, and one WinoGAViL instance's as files only.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.suite_fixtures import _add, _png

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a photo of the number {c}.", "a drawing of {c}.")
WINOGAVIL_SIZES = (5, 6, 10, 12, 5, 10, 12, 6, 10, 12)


@dataclass
class GroupedSet:
    path: Path
    labels: np.ndarray
    metadata: np.ndarray  # [N, fields], in the order the samples were written


def digits(n: int, classes: int) -> tuple[list[Image.Image], np.ndarray]:
    """The first n scikit-learn digits with label < `classes`, as 8x8 grey PNG-able images."""
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = np.flatnonzero(data.target < classes)[:n]
    images = [Image.fromarray((data.images[i] * (255 / 16)).round().astype(np.uint8), "L") for i in keep]
    return images, data.target[keep].astype(np.int64)


def grouped_wds(
    out: Path, images: list[Image.Image], labels: np.ndarray, metadata: np.ndarray, shards: int = 1
) -> GroupedSet:
    """test/{0..shards-1}.tar with <key>.png, <key>.cls, <key>.npy; nshards.txt, classnames and {c} templates."""
    (out / "test").mkdir(parents=True)
    parts = np.array_split(np.arange(len(images)), shards)
    for shard, part in enumerate(parts):
        with tarfile.open(out / "test" / f"{shard}.tar", "w") as tar:
            for i in part:
                buf = io.BytesIO()
                np.save(buf, metadata[i])
                _add(tar, f"s{i:06d}.png", _png(images[i]))
                _add(tar, f"s{i:06d}.cls", str(int(labels[i])).encode())
                _add(tar, f"s{i:06d}.npy", buf.getvalue())
    (out / "test" / "nshards.txt").write_text(f"{shards}\n")
    (out / "classnames.txt").write_text("\n".join(DIGIT_NAMES[: int(labels.max()) + 1]) + "\n")
    (out / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return GroupedSet(out, labels, metadata)


def grouped_sets(root: Path, n: int = 90, seed: int = 0) -> dict[str, GroupedSet]:
    """iWildCam, FMoW, Dollar Street and GeoDE at DataComp's folders, with metadata fields as its evaluators read."""
    rng = np.random.default_rng(seed)
    few_images, few = digits(n, 4)  # 4 classes: accuracies well above zero for a barely trained model
    all_images, ten = digits(n, 10)
    iwildcam = np.column_stack([rng.integers(0, 5, (n, 8)), ten])  # location, sequence, ..., second, y
    fmow = np.column_stack([rng.integers(0, 5, n), rng.integers(0, 4, n) + 2, few])  # region, year (from 2), y
    dollar = np.column_stack([rng.integers(0, 4, n), rng.integers(0, 900, n), rng.integers(0, 4, n)])
    geode = np.column_stack([rng.choice([0, 2, 3, 5], n), rng.integers(0, 20, n)])  # regions 1, 4 empty
    return {
        "wilds/iwildcam": grouped_wds(root / "wds_wilds-iwildcam_test", all_images, ten, iwildcam),
        "wilds/fmow": grouped_wds(root / "wds_wilds-fmow_test", few_images, few, fmow),
        "fairness/dollar_street": grouped_wds(root / "wds_dollar_street_test", all_images, ten, dollar, shards=2),
        "fairness/geode": grouped_wds(root / "wds_geode_test", few_images, few, geode, shards=3),
    }


@dataclass
class WinoInstance:
    cue: str
    candidates: list[str]
    associations: list[str]
    images: list[Image.Image]


def winogavil_instances(seed: int = 0) -> list[WinoInstance]:
    """Cues are digit names; candidates are digits; the associations are the candidates showing the cue's digit
    (one to three of them, the rest other digits)."""
    rng = np.random.default_rng(seed)
    images, labels = digits(400, 10)
    instances = []
    for size in WINOGAVIL_SIZES:
        cue = int(rng.integers(0, 10))
        k = int(rng.integers(1, 4))
        same = rng.choice(np.flatnonzero(labels == cue), k, replace=False)
        other = rng.choice(np.flatnonzero(labels != cue), size - k, replace=False)
        chosen = rng.permutation(np.concatenate([same, other]))
        names = [f"img{int(i)}" for i in chosen]
        instances.append(
            WinoInstance(
                DIGIT_NAMES[cue].capitalize(), names, [f"img{int(i)}" for i in same], [images[i] for i in chosen]
            )
        )
    return instances


def _write_arrow(folder: Path, name: str, rows: list[dict], schema) -> Path:
    """<folder>/<name>-test.arrow, an Arrow stream as `datasets` caches a split."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    path = folder / f"{name}-test.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return path


def _cache_folder(data_root: Path, name: str) -> Path:
    return data_root / "hf_cache" / f"nlphuji___{name}" / "default" / "0.0.0" / "0123abcd"


def _image_type():
    import pyarrow as pa

    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def retrieval_cache(data_root: Path, name: str, images: list[Image.Image], captions: list[list[str]]) -> Path:
    """A DataComp retrieval set (nlphuji/<name>) as `datasets` caches it: `image` (bytes) and its `caption` list."""
    import pyarrow as pa

    schema = pa.schema([("image", _image_type()), ("caption", pa.list_(pa.string())), ("filename", pa.string())])
    rows = [
        {"image": {"bytes": _png(im), "path": None}, "caption": caps, "filename": f"{i}.png"}
        for i, (im, caps) in enumerate(zip(images, captions, strict=True))
    ]
    return _write_arrow(_cache_folder(data_root, name), name, rows, schema)


def winogavil_cache(data_root: Path, instances: list[WinoInstance]) -> Path:
    """The Arrow stream file `datasets` writes for nlphuji/winogavil's test split (the third instance's images as
    files under hf_cache/downloads, the others as bytes); returns the file."""
    import pyarrow as pa

    files = data_root / "hf_cache" / "downloads" / "extracted" / "4567"
    files.mkdir(parents=True)
    rows = []
    for n, inst in enumerate(instances):
        stored = []
        for name, image in zip(inst.candidates, inst.images, strict=True):
            if n == 2:
                image.save(files / f"{name}.png")
                stored.append({"bytes": None, "path": str(files / f"{name}.png")})
            else:
                stored.append({"bytes": _png(image), "path": None})
        rows.append(
            {
                "ID": n,
                "cue": inst.cue,
                "candidates": inst.candidates,
                "associations": inst.associations,
                "num_associations": len(inst.associations),
                "candidate_images": stored,
            }
        )
    schema = pa.schema(
        [
            ("ID", pa.int64()),
            ("cue", pa.string()),
            ("candidates", pa.list_(pa.string())),
            ("associations", pa.list_(pa.string())),
            ("num_associations", pa.int64()),
            ("candidate_images", pa.list_(_image_type())),
        ]
    )
    return _write_arrow(_cache_folder(data_root, "winogavil"), "winogavil", rows, schema)
