#!/usr/bin/env python
"""Build webdataset shards (img2dataset layout) + manifest.json, or a manifest for existing shards.

  python tools/make_shards.py fashion-mnist --out DIR        # DIR/train and DIR/test (labelled)
  python tools/make_shards.py fashion-mosaic --out DIR       # 2x2 mosaics: train/, test/ (+ test.csv), val/, zeroshot/
  python tools/make_shards.py folder --src IMAGES --out DIR  # image files with same-stem .txt captions
  python tools/make_shards.py csv --src FILE.csv --out DIR   # image path + caption columns
  python tools/make_shards.py manifest --shards SRC --out INDEX  # index e.g. img2dataset output (SRC read only)

Every sample gets json {"key": int}: the row of the source (Fashion-MNIST / csv) or the position
in the sorted file list (folder). The index gives each sample with an image a dense row 0..N-1
(its row in the per-sample training state) and keeps that key as its source key.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from data import remote
from data.config import CsvOptions, DataConfig
from data.index_report import checks_line, download_holes, holes_lines, holes_record
from data.manifest import build_manifest
from data.shards import IMAGE_EXTS, ShardWriter
from data.sources import CsvSource, SkipSample
from data.url_secrets import refuse_argument_secrets
from evaluation.prompts import FASHION_MNIST_CLASSNAMES as FASHION_CLASSES
from evaluation.prompts import get_classnames
from tools.mosaic import Mosaic, distinct_mosaics, random_mosaics, tiled_items

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CAPTION_TEMPLATES = [
    "a photo of {article} {name}.",
    "a black and white picture of {article} {name}.",
    "a grayscale photo of {article} {name}.",
    "a low resolution photo of {article} {name}.",
    "a small picture of {article} {name}.",
    "a product photo of {article} {name}.",
    "a close-up photo of {article} {name}.",
    "{article} {name} on a dark background.",
]


def _article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def caption(template: str, name: str) -> str:
    text = template.format(article=_article(name), name=name)
    return text[0].upper() + text[1:] if template.startswith("{") else text


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    if magic == 2049:
        return np.frombuffer(data, dtype=np.uint8, offset=8)
    raise ValueError(f"{path}: not an idx image/label file (magic {magic})")


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _finish(out: str, paths: list[str], extra: dict | None, skipped: Counter, workers: int = 1) -> dict:
    holes = download_holes(paths)  # img2dataset's record of failed downloads beside its shards
    if holes:
        extra = (extra or {}) | {"download_holes": holes_record(holes)}
    manifest = build_manifest(
        paths,
        out,
        extra,
        workers=workers,
        progress=lambda it: tqdm(it, total=len(paths), desc=f"indexing {out}", unit="shard"),
    )
    print(
        f"{out}: {manifest['total']} samples in {len(paths)} shards, {manifest['num_samples']} with an image"
        + (f", skipped while building: {dict(skipped)}" if skipped else "")
    )
    print("\n".join([checks_line(manifest), *holes_lines(holes)]))
    return manifest


def _read_fashion(src: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] and labels [N] of one Fashion-MNIST split."""
    img_file, lab_file = (os.path.join(src, f) for f in FASHION_FILES[split])
    if not os.path.exists(img_file):
        raise SystemExit(f"{img_file} not found: install Debian's dataset-fashion-mnist (make fashion-mnist)")
    return _read_idx(img_file), _read_idx(lab_file)


def fashion_mnist(args) -> None:
    prompts = {name: [caption(t, name) for t in CAPTION_TEMPLATES] for name in FASHION_CLASSES}
    extra = {
        "classes": list(FASHION_CLASSES),
        "templates": CAPTION_TEMPLATES,
        "class_prompts": prompts,
        "description": "Fashion-MNIST (28x28 grey PNG); json carries the class label",
    }
    for split in args.splits.split(","):
        if split not in FASHION_FILES:
            raise SystemExit(f"unknown split {split!r}; choose from {list(FASHION_FILES)}")
        images, labels = _read_fashion(args.src, split)
        n = len(images) if args.limit is None else min(args.limit, len(images))
        rng = random.Random(f"{args.seed}/{split}")
        out = os.path.join(args.out, split)
        with ShardWriter(out, args.shard_size) as w:
            for key in tqdm(range(n), desc=f"fashion-mnist {split}", unit="img"):
                name = FASHION_CLASSES[int(labels[key])]
                w.write(
                    key, _png(images[key]), "png", caption(rng.choice(CAPTION_TEMPLATES), name), label=int(labels[key])
                )
        _finish(out, w.paths, extra, Counter())


def fashion_mosaic(args) -> None:
    """2x2 mosaics (56 px grey) with positional captions; see tools/mosaic.py for the splits."""
    train_images, train_labels = _read_fashion(args.src, "train")
    test_images, test_labels = _read_fashion(args.src, "test")
    base = {"classes": list(FASHION_CLASSES), "seed": args.seed}
    used_by_train: set[int] = set()

    def splits() -> Iterator[tuple[str, Iterable[Mosaic]]]:
        # val is drawn after train has been written: from the train images no training mosaic uses.
        yield "train", random_mosaics(train_images, train_labels, args.train_size, f"{args.seed}/train")
        yield "test", distinct_mosaics(test_images, test_labels, args.test_size, f"{args.seed}/test")
        if args.val_size:
            yield (
                "val",
                distinct_mosaics(
                    train_images, train_labels, args.val_size, f"{args.seed}/val", exclude=frozenset(used_by_train)
                ),
            )

    test_rows: list[tuple[int, bytes, str]] = []
    for split, mosaics in splits():
        out = os.path.join(args.out, split)
        extra = base | {"description": f"Fashion-MNIST 2x2 mosaics ({split} images), json carries cell labels"}
        with ShardWriter(out, args.shard_size) as w:
            for key, m in enumerate(tqdm(mosaics, desc=f"mosaic {split}", unit="img")):
                data = _png(m.pixels)
                w.write(key, data, "png", m.caption, cells=list(m.labels))
                if split == "train":
                    used_by_train.update(m.sources)
                if split == "test":
                    test_rows.append((key, data, m.caption))
        _finish(out, w.paths, extra, Counter())
    _write_csv(test_rows, os.path.join(args.out, "test.csv"))
    out = os.path.join(args.out, "zeroshot")
    extra = base | {"description": "single Fashion-MNIST test items shown in all four cells; json carries the class"}
    with ShardWriter(out, args.shard_size) as w:
        items = tiled_items(test_images, test_labels, args.zeroshot_size)
        for key, (pixels, label, text) in enumerate(tqdm(items, desc="mosaic zeroshot", unit="img")):
            w.write(key, _png(pixels), "png", text, label=label)
    _finish(out, w.paths, extra, Counter())


def _write_csv(rows: list[tuple[int, bytes, str]], csv_path: str) -> None:
    """A caption set as csv (filepath, title) of PNG files next to it: the same pairs for csv readers."""
    image_dir = os.path.splitext(csv_path)[0] + "_images"
    os.makedirs(image_dir, exist_ok=True)
    lines = [("filepath", "title")]
    for key, data, text in rows:
        name = os.path.join(os.path.basename(image_dir), f"{key:09d}.png")
        with open(os.path.join(os.path.dirname(csv_path), name), "wb") as f:
            f.write(data)
        lines.append((name, text))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(lines)
    print(f"{csv_path}: {len(rows)} image-caption rows")


def folder(args) -> None:
    """Images with same-stem .txt captions; --labels-from-dirs: a class-per-folder tree (captions optional)."""
    found = []
    for root, _, names in os.walk(args.src):
        found += [os.path.join(root, f) for f in names if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTS]
    found.sort()
    if not found:
        raise SystemExit(f"no {'/'.join(IMAGE_EXTS)} images under {args.src}")
    classes = sorted({os.path.relpath(os.path.dirname(p), args.src) for p in found}) if args.labels_from_dirs else None
    names = classes
    if classes and args.classnames:
        names = list(get_classnames(args.classnames))
        if len(names) != len(classes):
            raise SystemExit(
                f"--classnames {args.classnames} names {len(names)} classes, {args.src} has "
                f"{len(classes)} class folders"
            )
    skipped: Counter = Counter()
    with ShardWriter(args.out, args.shard_size) as w:
        for key, path in enumerate(tqdm(found, desc="folder", unit="img")):
            txt = os.path.splitext(path)[0] + ".txt"
            text = open(txt, encoding="utf-8").read().strip() if os.path.exists(txt) else ""
            if not text and not classes:
                skipped["missing_caption"] += 1
                continue
            with open(path, "rb") as f:
                data = f.read()
            meta = {"label": classes.index(os.path.relpath(os.path.dirname(path), args.src))} if classes else {}
            w.write(key, data, path.rsplit(".", 1)[-1], text or None, **meta)
    extra = {"classes": names, "class_folders": classes} if classes else None
    _finish(args.out, w.paths, extra, skipped)


def from_csv(args) -> None:
    csv = CsvOptions(args.image_key, args.caption_key, separator=args.sep, image_root=args.image_root)
    cfg = DataConfig(source="csv", path=args.src, csv=csv)
    src = CsvSource(cfg)
    skipped: Counter = Counter()
    with ShardWriter(args.out, args.shard_size) as w:
        for row in tqdm(range(int(src.shard_sizes.sum())), desc="csv", unit="row"):
            try:
                raw = src.read(*divmod(row, 1000))
                if not os.path.isfile(raw.image):
                    raise SkipSample("missing_image")
            except SkipSample as e:
                skipped[e.reason] += 1
                continue
            with open(raw.image, "rb") as f:
                data = f.read()
            ext = raw.image.rsplit(".", 1)[-1].lower()
            w.write(raw.key, data, ext if ext in IMAGE_EXTS else "jpg", raw.caption)
    if not w.paths:
        raise SystemExit(f"no usable rows in {args.src}: {dict(skipped)}")
    _finish(args.out, w.paths, None, skipped)


def manifest(args) -> None:
    """Index shards that are only read (a read-only mount, a bucket, an HTTP server) into --out."""
    if remote.isdir(args.shards) and not args.shards.endswith(".tar"):
        paths = remote.list_tars(args.shards)
    else:
        paths = [u for u in remote.expand(args.shards) if u.endswith(".tar")]
        found = remote.sizes(paths)
        missing = [u for u in paths if found[u] is None]
        if missing:
            listing = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            if not args.allow_missing:
                raise SystemExit(
                    f"{len(missing)} of {len(paths)} shards named by {args.shards!r} do not exist: "
                    f"{listing}. Fix the pattern or pass --allow-missing"
                )
            print(f"indexing without {len(missing)} missing shards: {listing}")
            paths = [u for u in paths if found[u] is not None]
    if not paths:
        raise SystemExit(f"no .tar shards found at {args.shards!r}")
    dirs = {remote.dirname(u) for u in paths}
    out = args.out or (dirs.pop() if len(dirs) == 1 else None)
    if out is None:
        raise SystemExit("shards in several directories: name the index directory with --out")
    start = time.perf_counter()
    m = _finish(out, paths, None, Counter(), workers=args.workers)
    elapsed = time.perf_counter() - start
    print(
        f"indexed {m['total']} samples in {len(paths)} shards in {elapsed:.1f} s "
        f"({m['total'] / elapsed:.0f} samples/s, {sum(s['bytes'] for s in m['shards']) / elapsed / 2**20:.1f} MiB/s)"
        + (f"; problems: {json.dumps(m['problems'])[:2000]}" if m["problems"] else "")
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    fm = sub.add_parser("fashion-mnist", help="Fashion-MNIST idx files -> train/ and test/ shards")
    fm.add_argument("--src", default=FASHION_MNIST_DIR)
    fm.add_argument("--splits", default="train,test")
    fm.add_argument("--limit", type=int, default=None, help="first N images per split (for quick tests)")
    fm.add_argument("--seed", type=int, default=0, help="seed of the caption template choice")
    mo = sub.add_parser("fashion-mosaic", help="Fashion-MNIST 2x2 mosaics with positional captions")
    mo.add_argument("--src", default=FASHION_MNIST_DIR)
    mo.add_argument("--train-size", type=int, default=20_000, help="training mosaics (from the train images)")
    mo.add_argument("--test-size", type=int, default=1000, help="retrieval mosaics with distinct captions")
    mo.add_argument(
        "--val-size",
        type=int,
        default=500,
        help="validation mosaics with distinct captions, from train images no training mosaic uses (0: none)",
    )
    mo.add_argument("--zeroshot-size", type=int, default=10_000, help="single test items for zero-shot")
    mo.add_argument("--seed", type=int, default=0, help="seed of the item, tuple and wording choices")
    fo = sub.add_parser("folder", help="image folder with same-stem .txt captions")
    fo.add_argument("--src", required=True)
    fo.add_argument(
        "--labels-from-dirs",
        action="store_true",
        help="label = index of the sorted sub-folder name; images without a caption are kept (zero-shot sets)",
    )
    fo.add_argument(
        "--classnames",
        default="",
        help="class names from a registry (imagenet: folders are sorted WordNet ids) instead of the folder names",
    )
    cs = sub.add_parser("csv", help="csv with an image path and a caption column (row number = key)")
    cs.add_argument("--src", required=True)
    cs.add_argument("--image-key", default="filepath")
    cs.add_argument("--caption-key", default="title")
    cs.add_argument("--sep", default="", help="column separator; default tab for .tsv, comma otherwise")
    cs.add_argument("--image-root", default="", help="relative image paths resolve here (default: the csv's folder)")
    for q in (fm, mo, fo, cs):
        q.add_argument("--out", required=True)
        q.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    ma = sub.add_parser("manifest", help="index existing shards (e.g. img2dataset output) and write manifest.json")
    ma.add_argument(
        "--shards",
        required=True,
        help="directory of .tar shards or a brace pattern / glob over one "
        "or several directories; local paths or fsspec URLs (s3://, gs://, https://)",
    )
    ma.add_argument("--out", default="", help="index directory (local or URL; default: the shards' directory)")
    ma.add_argument("--workers", type=int, default=4, help="shards indexed in parallel")
    ma.add_argument("--allow-missing", action="store_true", help="index the shards that exist, list the others")
    args = p.parse_args(argv)
    refuse_argument_secrets(p, args)  # an index or results file would keep a URL's secret
    commands = {
        "fashion-mnist": fashion_mnist,
        "fashion-mosaic": fashion_mosaic,
        "folder": folder,
        "csv": from_csv,
        "manifest": manifest,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
