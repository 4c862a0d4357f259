"""webdataset tar shards in the img2dataset layout: writing them and indexing them.

A sample is the run of consecutive tar members sharing a prefix (`000000042.jpg`,
`000000042.txt`, `000000042.json`), grouped as webdataset does. Its source key is the json
"key" (img2dataset's digit string or an int), else the json "uid" (DataComp), else the tar's
`__key__` (the member prefix). Indexing a shard gives one record per sample: its dense row
within the shard (-1 when it has no image), label and the byte ranges of image and caption,
which lets the loader read any sample with two slices of the shard: shuffling, splitting
across ranks/workers and mid-epoch resume then need no sequential tar scan.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter
from typing import IO

import numpy as np

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
INDEX_DTYPE = np.dtype(
    [("row", "<i8"), ("label", "<i8"), ("img_off", "<i8"), ("img_len", "<i8"), ("txt_off", "<i8"), ("txt_len", "<i8")]
)
_PREFIX_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def source_key(meta: dict | None, prefix: str) -> str:
    """json "key" (int or digit string), else json "uid", else the tar member prefix (webdataset's __key__)."""
    for name in ("key", "uid"):
        value = (meta or {}).get(name)
        if isinstance(value, int | str) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return prefix


def _record(members: dict[str, tarfile.TarInfo], meta_bytes: bytes | None, prefix: str) -> tuple[tuple, str]:
    label, meta = -1, None
    if meta_bytes is not None:
        try:
            meta = json.loads(meta_bytes)
            meta = meta if isinstance(meta, dict) else None
        except (ValueError, TypeError):  # not json: the sample keeps its tar key
            meta = None
        if meta and isinstance(meta.get("label"), int) and not isinstance(meta.get("label"), bool):
            label = meta["label"]
    img = next((members[e] for e in IMAGE_EXTS if e in members), None)
    txt = members.get("txt")
    rec = (
        0,
        label,
        img.offset_data if img else -1,
        img.size if img else -1,
        txt.offset_data if txt else -1,
        txt.size if txt else -1,
    )
    return rec, source_key(meta, prefix.rsplit("/", 1)[-1])


def scan_tar(fileobj: IO[bytes], size: int, stream: bool = False) -> tuple[np.ndarray, list[str], str]:
    """Scan a shard's headers (plus the small json members) -> (INDEX_DTYPE records, source keys, problem).

    `stream` reads the tar front to back (remote files: one sequential read); otherwise it seeks past
    the member data. `problem` is "" or what is wrong with the tar: a truncated tar keeps the samples
    that are complete before the damage and says where it was cut.
    """
    records, keys = [], []
    current: dict[str, tarfile.TarInfo] = {}
    prefix, problem, end, meta_bytes = None, "", 0, None

    def flush() -> None:
        if current:
            rec, key = _record(current, meta_bytes, prefix)
            records.append(rec)
            keys.append(key)

    with tarfile.open(fileobj=fileobj, mode="r|" if stream else "r:") as tf:
        try:
            for member in tf:
                if member.offset_data + member.size > size:
                    problem = f"truncated: member {member.name} ends past the file's {size} bytes"
                    break
                end = member.offset_data + member.size
                if not member.isfile():
                    continue
                m = _PREFIX_EXT.match(member.name)
                if not m:
                    continue
                pre, ext = m.group(1), m.group(2).lower()
                if ext not in IMAGE_EXTS and ext not in ("txt", "json"):
                    continue
                if pre != prefix or ext in current:
                    flush()
                    current, prefix, meta_bytes = {}, pre, None
                current[ext] = member
                if ext == "json":  # read now: a stream cannot go back to it
                    meta_bytes = tf.extractfile(member).read()
        except (tarfile.ReadError, EOFError, OSError) as e:
            problem = f"truncated or damaged after byte {end}: {e}"
        if not problem and size < -(-end // 512) * 512 + 1024:  # no end-of-archive blocks: cut at a member boundary
            problem = f"truncated: no end-of-archive marker after byte {end}"
        if problem and current:  # the sample at the cut may be incomplete: drop it
            current = {}
        flush()
    index = np.array(records, dtype=INDEX_DTYPE)
    has_image = index["img_len"] >= 0
    index["row"] = np.where(has_image, np.cumsum(has_image) - 1, -1)
    return index, keys, problem


def index_stats(index: np.ndarray) -> Counter:
    """Counts of samples that the loader will skip, by reason (what the index already shows)."""
    c = Counter()
    c["missing_image"] = int((index["img_len"] < 0).sum())
    c["missing_caption"] = int((index["txt_len"] <= 0).sum())
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
