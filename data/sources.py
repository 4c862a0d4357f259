"""Random-access sample sources: webdataset shards (via their index), csv, Hugging Face datasets.

Each source exposes `shard_sizes` (records per shard; csv/datasets use virtual shards of
BLOCK rows so that shard-level shuffling works the same), `num_samples` (index-space size N),
`classes` and `read(shard, i) -> RawSample`, which raises SkipSample(reason) for a record that
cannot become a training pair. Reads are cheap (no decoding); decoding happens in the loader.
"""

from __future__ import annotations

import csv
import glob
import logging
import mmap
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from data.cache import ShardCache
from data.config import DataConfig
from data.integrity import ShardChanged, shard_problem
from data.manifest import load_index, resolve_shards
from data.remote import is_remote, local_path
from data.retry import retrying
from data.types import Source

log = logging.getLogger(__name__)
BLOCK = 1000  # rows per virtual shard for csv / datasets sources
_MAX_OPEN = 64  # mapped shard files / cached indices per process


class SkipSample(Exception):
    """A record that is skipped and counted under `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RawSample:
    key: int
    caption: str
    image: bytes | str | Image.Image  # encoded bytes, a file path, or an already decoded image
    label: int = -1


def _blocks(n: int) -> np.ndarray:
    sizes = np.full(n // BLOCK, BLOCK, dtype=np.int64)
    return np.append(sizes, n % BLOCK) if n % BLOCK else sizes


class ShardSource(Source):
    """webdataset shards + their index; each read slices one memory-mapped shard file (no system call).

    Remote shards (fsspec URLs) are copied whole into the bounded `cache_dir` first (data/cache.py).
    `key_offset` moves this source's dense rows (several sources share one per-sample table).
    """

    kind = "webdataset"

    def __init__(self, cfg: DataConfig, path: str | None = None, index: str | None = None, key_offset: int = 0) -> None:
        path = cfg.path if path is None else path
        options = cfg.webdataset
        index = options.index if index is None else index
        self.origin = path or index
        self.retry_s = options.remote_retry_s
        self.shardset = retrying(
            lambda: resolve_shards(path, index, options.allow_missing_shards),
            f"the shards {path or index!r} and their index",
            self.retry_s,
        )
        self.shards = self.shardset.shards
        self.paths = [s.url for s in self.shards]
        self.shard_sizes = np.array([s.count for s in self.shards], dtype=np.int64)
        self.key_offset = key_offset
        self.num_samples = cfg.num_samples or self.shardset.num_samples
        self.classes = self.shardset.classes
        self.has_labels = self.classes is not None
        self._cache_args = (options.cache_dir, int(options.cache_max_gb * 2**30), options.remote_retry_s)
        self._cache: ShardCache | None = None
        self._indices: OrderedDict[int, np.ndarray] = OrderedDict()
        self._maps: OrderedDict[int, mmap.mmap] = OrderedDict()
        self._pid = os.getpid()

    @property
    def keys_are_rows(self) -> bool:
        return bool(self.shardset.manifest.get("keys_are_rows"))

    @property
    def manifest(self) -> dict:
        return self.shardset.manifest

    def describe(self) -> str:
        return f"webdataset {self.origin}"

    def _index(self, shard: int) -> np.ndarray:
        idx = self._indices.get(shard)
        if idx is None:
            info = self.shards[shard]
            idx = self._indices[shard] = retrying(lambda: load_index(info)[0], info.index_url, self.retry_s)
            if len(self._indices) > _MAX_OPEN:
                self._indices.popitem(last=False)
        return idx

    def _open(self, shard: int) -> BinaryIO:
        info = self.shards[shard]
        if not is_remote(info.url):
            return open(local_path(info.url), "rb")
        if self._cache is None:
            self._cache = ShardCache(*self._cache_args)
        return self._cache.open(info.url, info.bytes)

    def prefetch(self, shards) -> None:
        """Fetch the not yet cached remote shards among `shards` concurrently (a batch may need several)."""
        todo = [int(s) for s in shards if is_remote(self.shards[int(s)].url) and int(s) not in self._maps]
        if len(todo) > 1:
            with ThreadPoolExecutor(min(8, len(todo))) as pool:
                for f in pool.map(self._open, todo):
                    f.close()

    def _map(self, shard: int) -> mmap.mmap:
        if self._pid != os.getpid():  # forked into a DataLoader worker: map our own files
            self._maps.clear()
            self._pid = os.getpid()
        mapped = self._maps.get(shard)
        if mapped is None:
            with self._verified(shard) as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[shard] = mapped
            if len(self._maps) > _MAX_OPEN:
                self._maps.popitem(last=False)[1].close()
        return mapped

    def _verified(self, shard: int) -> BinaryIO:
        """The shard's local file, open and checked against its index entry (size, fingerprint:
        data/integrity.py). A cached copy that fails is fetched again once; a shard that still fails stops the run
        (ShardChanged)."""
        info = self.shards[shard]
        f = self._open(shard)
        problem = shard_problem(f, info, self._index(shard))
        if problem is not None and is_remote(info.url):
            log.warning("cached copy %s of %s is damaged (%s); fetching it again", f.name, info.url, problem)
            f.close()
            f = self._cache.refetch(info.url, info.bytes, lambda g: shard_problem(g, info, self._index(shard)))
            problem = shard_problem(f, info, self._index(shard))
        if problem is not None:
            f.close()
            raise ShardChanged(
                f"shard {info.url} changed since it was indexed as {info.name}: {problem}. Restore "
                "it, or re-index with tools/make_shards.py manifest"
            )
        return f

    def key(self, shard: int, i: int) -> int:
        row = int(self._index(shard)["row"][i])
        return self.key_offset + self.shards[shard].row_start + row if row >= 0 else -1

    def read(self, shard: int, i: int, need_caption: bool = True) -> RawSample:
        rec = self._index(shard)[i]
        if rec["row"] < 0 or rec["img_len"] < 0:
            raise SkipSample("missing_image")
        key = self.key_offset + self.shards[shard].row_start + int(rec["row"])
        caption = ""
        mapped = self._map(shard)
        if rec["txt_len"] >= 0:
            start = int(rec["txt_off"])
            caption = mapped[start : start + int(rec["txt_len"])].decode("utf-8", errors="replace")
        if need_caption and not caption.strip():
            raise SkipSample("missing_caption")
        start = int(rec["img_off"])
        image = mapped[start : start + int(rec["img_len"])]
        return RawSample(key, caption, image, int(rec["label"]))


class _Strings:
    """Many strings in one bytes buffer + offsets: no per-row Python objects for forked workers to touch."""

    def __init__(self, values: list[str]) -> None:
        encoded = [v.encode("utf-8") for v in values]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __getitem__(self, i: int) -> str:
        return self._data[self._offsets[i] : self._offsets[i + 1]].tobytes().decode("utf-8")

    def __len__(self) -> int:
        return len(self._offsets) - 1


class CsvSource(Source):
    """csv/tsv with an image-path column and a caption column; the data row number is the key."""

    kind = "csv"

    def __init__(self, cfg: DataConfig, label_key: str | None = None) -> None:
        if not os.path.isfile(cfg.path):
            raise FileNotFoundError(f"csv file {cfg.path!r} does not exist")
        options = cfg.csv
        sep = options.separator or ("\t" if cfg.path.endswith(".tsv") else ",")
        with open(cfg.path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter=sep)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"csv file {cfg.path!r} is empty")
            cols = {name: i for i, name in enumerate(header)}
            for k in (options.image_key, options.caption_key):
                if k not in cols:
                    raise ValueError(
                        f"column {k!r} not in {cfg.path} (columns: {header}); set data.csv.image_key / caption_key"
                    )
            ii, ci, li = cols[options.image_key], cols[options.caption_key], cols.get(label_key or "", -1)
            paths, captions, labels = [], [], []
            for row in reader:
                paths.append(row[ii] if len(row) > ii else "")
                captions.append(row[ci] if len(row) > ci else "")
                labels.append(int(row[li]) if 0 <= li < len(row) and row[li].strip().lstrip("-").isdigit() else -1)
        if not paths:
            raise ValueError(f"csv file {cfg.path!r} has no data rows")
        self.root = options.image_root or os.path.dirname(os.path.abspath(cfg.path))
        self._paths, self._captions = _Strings(paths), _Strings(captions)
        self._labels = np.array(labels, dtype=np.int64)
        self.shard_sizes = _blocks(len(paths))
        self.num_samples = cfg.num_samples or len(paths)
        self.classes = None
        self.has_labels = li >= 0
        self.origin = cfg.path

    def key(self, shard: int, i: int) -> int:
        return shard * BLOCK + i

    def read(self, shard: int, i: int, need_caption: bool = True) -> RawSample:
        row = shard * BLOCK + i
        caption = self._captions[row]
        if need_caption and not caption.strip():
            raise SkipSample("missing_caption")
        path = self._paths[row]
        if not path:
            raise SkipSample("missing_image")
        return RawSample(row, caption, os.path.join(self.root, path), int(self._labels[row]))


class HFSource(Source):
    """A Hugging Face `datasets` table (save_to_disk dir or local data files); the row is the key."""

    kind = "hf"

    def __init__(self, cfg: DataConfig, label_key: str | None = None) -> None:
        import datasets  # heavy import, only when used

        options = cfg.hf
        ds = _load_hf(cfg.path, options.split)
        for k in (options.image_key, options.caption_key):
            if k not in ds.column_names:
                raise ValueError(
                    f"column {k!r} not in {cfg.path} (columns: {ds.column_names}); set data.hf.image_key / caption_key"
                )
        if isinstance(ds.features[options.image_key], datasets.Image):
            ds = ds.cast_column(options.image_key, datasets.Image(decode=False))  # we decode (and count failures)
        cols = [options.image_key, options.caption_key]
        self.has_labels = bool(label_key) and label_key in ds.column_names
        if self.has_labels:
            cols.append(label_key)
        feature = ds.features.get(label_key) if self.has_labels else None
        self.classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        self.ds, self.image_key, self.caption_key, self.label_key = ds.select_columns(cols), *cols[:2], label_key
        self.shard_sizes = _blocks(len(ds))
        self.num_samples = cfg.num_samples or len(ds)
        self.origin = cfg.path
        if len(ds) == 0:
            raise ValueError(f"dataset at {cfg.path!r} has no rows")

    def key(self, shard: int, i: int) -> int:
        return shard * BLOCK + i

    def read(self, shard: int, i: int, need_caption: bool = True) -> RawSample:
        row = shard * BLOCK + i
        rec = self.ds[row]
        caption = rec[self.caption_key] or ""
        if need_caption and not (isinstance(caption, str) and caption.strip()):
            raise SkipSample("missing_caption")
        image = rec[self.image_key]
        if isinstance(image, dict):
            image = image.get("bytes") or image.get("path")
        if not image:
            raise SkipSample("missing_image")
        label = rec[self.label_key] if self.has_labels else -1
        return RawSample(row, str(caption), image, int(label) if isinstance(label, int) else -1)


def _load_hf(path: str, split: str):
    import datasets

    saved = ("dataset_info.json", "dataset_dict.json", "state.json")
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in saved):
        ds = datasets.load_from_disk(path)
    elif os.path.isdir(path) and glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True):
        ds = datasets.load_dataset("parquet", data_dir=path, split=split)
    else:
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        builder = {"jsonl": "json", "tsv": "csv"}.get(ext, ext)
        if builder not in ("parquet", "json", "csv", "arrow") or not os.path.exists(path):
            raise ValueError(f"{path!r} is neither a datasets.save_to_disk directory nor a parquet/json/csv/arrow file")
        ds = datasets.load_dataset(builder, data_files=path, split="train")
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"split {split!r} not in {path} (splits: {list(ds)}); set data.hf.split")
        ds = ds[split]
    return ds
