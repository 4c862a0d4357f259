"""webdataset tar shards in the img2dataset layout: writing them and indexing them.

A sample is the run of consecutive tar members sharing a prefix (`000000042.png`,
`000000042.txt`, `000000042.json`), grouped as webdataset does. Its json carries the stable
integer "key" (img2dataset writes it as a digit string; both are accepted) and optionally a
class "label". Each shard `X.tar` gets a sidecar index `X.idx.npy` (one record per sample:
key, label and the byte ranges of image and caption), which lets the loader read any sample
with two `pread`s: shuffling, splitting across ranks/workers and mid-epoch resume then need
no sequential tar scan.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter

import numpy as np

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
INDEX_DTYPE = np.dtype(
    [("key", "<i8"), ("label", "<i8"), ("img_off", "<i8"), ("img_len", "<i8"), ("txt_off", "<i8"), ("txt_len", "<i8")]
)
KEY_MISSING = -1  # no json, or json without "key"
KEY_INVALID = -2  # json unreadable or key not a non-negative integer
_PREFIX_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def index_path(tar_path: str) -> str:
    """Sidecar index of a shard: `dir/000000.tar` -> `dir/000000.idx.npy`."""
    base = tar_path[:-4] if tar_path.endswith(".tar") else tar_path
    return base + ".idx.npy"


def parse_key(value) -> int:
    """json "key" -> int; img2dataset's zero-padded digit strings are accepted."""
    if isinstance(value, bool):
        return KEY_INVALID
    if isinstance(value, int):
        return value if value >= 0 else KEY_INVALID
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return KEY_INVALID


def _record(members: dict[str, tarfile.TarInfo], tf: tarfile.TarFile) -> tuple:
    key, label = KEY_MISSING, -1
    if "json" in members:
        try:
            meta = json.loads(tf.extractfile(members["json"]).read())
            key = parse_key(meta["key"]) if "key" in meta else KEY_MISSING
            if isinstance(meta.get("label"), int) and not isinstance(meta.get("label"), bool):
                label = meta["label"]
        except (ValueError, TypeError, AttributeError):  # not json / not an object
            key = KEY_INVALID
    img = next((members[e] for e in IMAGE_EXTS if e in members), None)
    txt = members.get("txt")
    return (
        key,
        label,
        img.offset_data if img else -1,
        img.size if img else -1,
        txt.offset_data if txt else -1,
        txt.size if txt else -1,
    )


def index_tar(tar_path: str) -> np.ndarray:
    """Scan a shard's headers (plus the small json members) into an INDEX_DTYPE array.

    Members with no image/txt/json extension are ignored; a truncated tar keeps the samples
    read before the damage (the error is reported by `build_index`'s caller via a short count).
    """
    records: list[tuple] = []
    current: dict[str, tarfile.TarInfo] = {}
    prefix = None
    with tarfile.open(tar_path, "r:") as tf:
        try:
            for member in tf:
                if not member.isfile():
                    continue
                m = _PREFIX_EXT.match(member.name)
                if not m:
                    continue
                pre, ext = m.group(1), m.group(2).lower()
                if ext not in IMAGE_EXTS and ext not in ("txt", "json"):
                    continue
                if pre != prefix or ext in current:
                    if current:
                        records.append(_record(current, tf))
                    current, prefix = {}, pre
                current[ext] = member
        except (tarfile.ReadError, EOFError, OSError):
            pass  # truncated shard: keep what was complete
        if current:
            records.append(_record(current, tf))
    return np.array(records, dtype=INDEX_DTYPE)


def index_stats(index: np.ndarray) -> Counter:
    """Counts of samples that the loader will skip, by reason (what the index already shows)."""
    c = Counter()
    c["missing_key"] = int((index["key"] == KEY_MISSING).sum())
    c["bad_key"] = int((index["key"] == KEY_INVALID).sum())
    c["missing_image"] = int((index["img_len"] < 0).sum())
    c["missing_caption"] = int((index["txt_len"] < 0).sum())
    return +c


class ShardWriter:
    """Writes samples into `dir/000000.tar`, `dir/000001.tar`, ... of `shard_size` samples each."""

    def __init__(self, out_dir: str, shard_size: int = 10_000, name_format: str = "{:06d}.tar") -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.shard_size, self.name_format = out_dir, shard_size, name_format
        self.paths: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0
        self._count = 0

    def write(self, key: int | str | None, image: bytes | None, image_ext: str, caption: str | None, **meta) -> None:
        """One sample; None for image/caption/key leaves that member out (for making bad samples)."""
        if self._tar is None or self._in_shard >= self.shard_size:
            self._next_shard()
        name = f"{key:09d}" if isinstance(key, int) and key >= 0 else f"{self._count:09d}"
        if image is not None:
            self._add(f"{name}.{image_ext.lower()}", image)
        if caption is not None:
            self._add(f"{name}.txt", caption.encode("utf-8"))
        payload = dict(meta)
        if key is not None:
            payload["key"] = key
        self._add(f"{name}.json", json.dumps(payload).encode("utf-8"))
        self._in_shard += 1
        self._count += 1

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def _next_shard(self) -> None:
        self.close()
        path = os.path.join(self.out_dir, self.name_format.format(len(self.paths)))
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        self.paths.append(path)
        self._in_shard = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
