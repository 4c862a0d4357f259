"""A three-task suite built offline from real data, in the layouts users download:

- Fashion-MNIST test images (Debian's dataset-fashion-mnist) in clip_benchmark's webdataset layout (zero-shot),
  and the same images as FastFLIP shards, for the existing evaluator;
- scikit-learn's handwritten digits as a class-per-folder tree (zero-shot);
- scikit-image's photos with captions as a retrieval csv (two captions for some photos, grouped by image_id).
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from evaluation.prompts import FASHION_MNIST_CLASSNAMES, FASHION_MNIST_TEMPLATES
from tests.export_fixtures import PHOTOS, fashion_mnist_test, photos

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SECOND_CAPTIONS = {"astronaut": "a woman in a space suit", "coffee": "a hot drink in a white cup"}


@dataclass
class SuiteData:
    root: Path
    suite_file: Path
    fashion_shards: Path  # the same Fashion-MNIST images as FastFLIP shards (manifest classes, json label)
    digits: Path
    captions: Path


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fashion_wds(out: Path, images: list[Image.Image], labels: list[int]) -> None:
    """clip_benchmark's layout: test/0.tar (<key>.png, <key>.cls), nshards.txt, class names and {c} templates."""
    (out / "test").mkdir(parents=True)
    with tarfile.open(out / "test" / "0.tar", "w") as tar:
        for key, (image, label) in enumerate(zip(images, labels, strict=True)):
            _add(tar, f"s{key:06d}.png", _png(image))
            _add(tar, f"s{key:06d}.cls", str(label).encode())
    (out / "test" / "nshards.txt").write_text("1\n")
    (out / "classnames.txt").write_text("\n".join(FASHION_MNIST_CLASSNAMES) + "\n")
    templates = [t.replace("{}", "{c}") for t in FASHION_MNIST_TEMPLATES]
    (out / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")


def fashion_shards(out: Path, images: list[Image.Image], labels: list[int]) -> None:
    from data.manifest import build_manifest
    from data.shards import ShardWriter

    with ShardWriter(str(out), 1000) as w:
        for key, (image, label) in enumerate(zip(images, labels, strict=True)):
            w.write(key, _png(image), "png", FASHION_MNIST_CLASSNAMES[label], label=label)
    build_manifest(w.paths, str(out), {"classes": list(FASHION_MNIST_CLASSNAMES)})


def digits_folder(out: Path, n: int) -> None:
    """The first n of scikit-learn's 8x8 digits (0..16 grey levels) as PNGs under <digit name>/."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(n):
        folder = out / DIGIT_NAMES[int(digits.target[i])]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{i:04d}.png")


def caption_csv(out: Path) -> Path:
    """filepath,title,image_id rows: every photo with its caption, two photos with a second one."""
    (out / "images").mkdir(parents=True)
    rows = [("filepath", "title", "image_id")]
    for image_id, (name, image, caption) in enumerate(zip(PHOTOS, *photos(), strict=True)):
        image.convert("RGB").save(out / "images" / f"{name}.png")
        rows.append((f"images/{name}.png", caption, str(image_id)))
        if name in SECOND_CAPTIONS:
            rows.append((f"images/{name}.png", SECOND_CAPTIONS[name], str(image_id)))
    path = out / "captions.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def captions_wds(out: Path, captions_csv: Path) -> None:
    """The caption csv in clip_benchmark's retrieval layout: <key>.png + <key>.txt (one caption per line)."""
    with captions_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    grouped: dict[str, list[str]] = {}
    for row in rows:
        grouped.setdefault(row["filepath"], []).append(row["title"])
    (out / "test").mkdir(parents=True)
    with tarfile.open(out / "test" / "0.tar", "w") as tar:
        for key, (image, captions) in enumerate(grouped.items()):
            _add(tar, f"s{key:06d}.png", (captions_csv.parent / image).read_bytes())
            _add(tar, f"s{key:06d}.txt", "\n".join(captions).encode())
    (out / "test" / "nshards.txt").write_text("1\n")
    (out / "dataset_type.txt").write_text("retrieval\n")


def build_suite(root: Path, fashion_n: int = 300, digits_n: int = 300) -> SuiteData:
    images, labels = fashion_mnist_test(fashion_n)
    labels = [int(x) for x in labels]
    fashion_wds(root / "wds_fashion_mnist_test", images, labels)
    fashion_shards(root / "fashion_shards", images, labels)
    digits_folder(root / "digits", digits_n)
    captions = caption_csv(root / "photos")
    suite = {
        "name": "offline-three",
        "tasks": [
            {"name": "fashion-mnist", "kind": "zeroshot", "path": "wds_fashion_mnist_test", "title": "Fashion-MNIST"},
            {
                "name": "digits",
                "kind": "zeroshot",
                "path": "digits",
                "templates": "generic",
                "main_metric": "mean_per_class_recall",
                "title": "sklearn digits",
            },
            {
                "name": "photos",
                "kind": "retrieval",
                "path": os.path.join("photos", "captions.csv"),
                "title": "skimage photos",
            },
        ],
    }
    suite_file = root / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(suite, sort_keys=False))
    return SuiteData(root, suite_file, root / "fashion_shards", root / "digits", captions)
