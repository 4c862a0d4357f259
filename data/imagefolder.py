"""A class-per-folder image tree (ImageNet val after the usual valprep layout) as a labelled eval source.

`ROOT/<class>/<image>`: classes are the sorted sub-folder names (label = position), samples are
sorted by (class, file name) and the row is the key. Zero-shot class names come from the folder
names or, for WordNet ids, a registry (`eval.classnames: imagenet`, in sorted-wnid order).
"""

from __future__ import annotations

import os

import numpy as np

from data.config import DataConfig
from data.shards import IMAGE_EXTS
from data.sources import RawSample, SkipSample, _blocks, _Strings
from data.types import Source


def _is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTS


def is_image_folder(path: str) -> bool:
    """A local directory of class sub-folders holding images (and no shard manifest or tars)."""
    if "://" in path or not os.path.isdir(path) or os.path.exists(os.path.join(path, "manifest.json")):
        return False
    entries = list(os.scandir(path))
    if any(e.is_file() and e.name.endswith(".tar") for e in entries):
        return False
    for e in entries:
        if e.is_dir() and any(_is_image(f) for f in os.listdir(e.path)):
            return True
    return False


class ImageFolderSource(Source):
    kind = "imagefolder"
    has_labels = True

    def __init__(self, cfg: DataConfig) -> None:
        root = cfg.path
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root!r} does not exist")
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        paths, labels = [], []
        for label, name in enumerate(self.classes):
            files = sorted(f for f in os.listdir(os.path.join(root, name)) if _is_image(f))
            paths += [os.path.join(name, f) for f in files]
            labels += [label] * len(files)
        if not paths:
            raise ValueError(
                f"no {'/'.join(IMAGE_EXTS)} images in class sub-folders of {root!r} (want ROOT/<class>/<image>)"
            )
        counts = np.bincount(labels, minlength=len(self.classes))
        empty = [c for c, n in zip(self.classes, counts, strict=True) if not n]
        if empty:
            raise ValueError(
                f"class folders without images in {root!r}: {empty[:10]}; remove them (labels follow "
                "the sorted folder names)"
            )
        self.root, self._paths, self._labels = root, _Strings(paths), np.array(labels, dtype=np.int64)
        self.shard_sizes = _blocks(len(paths))
        self.num_samples = cfg.num_samples or len(paths)
        self.origin = root

    def key(self, shard: int, i: int) -> int:
        return shard * 1000 + i

    def read(self, shard: int, i: int, need_caption: bool = True) -> RawSample:
        row = shard * 1000 + i
        if need_caption:
            raise SkipSample("missing_caption")  # an image folder has labels, not captions
        return RawSample(row, "", os.path.join(self.root, self._paths[row]), int(self._labels[row]))
