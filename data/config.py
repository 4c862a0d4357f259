"""Typed configuration of the training data stream (the `data:` YAML section, parsed by train.config_io)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from data.url_secrets import refuse_url_secrets

SOURCES = ("webdataset", "csv", "hf", "imagefolder")  # imagefolder: evaluation only (no captions)
WORKER_PRIORITIES = ("normal", "low", "idle")
RESIZE_PLACES = ("auto", "host", "device")
DECODE_PLACES = ("host", "device")


@dataclass
class WebDatasetOptions:
    """`data.webdataset`: the shards' index, remote shards' cache and retries, and missing shards (data.source:
    webdataset; every source of data.sources too)."""

    # Where the shard index (manifest.json + X.idx.npz, from `make_shards.py manifest --out`) lives when
    # it is not beside the shards (read-only mounts, buckets, shards in several directories); local or URL.
    index: str = ""
    # Remote shards are copied whole into this local directory (default: a per-user folder in the temp
    # dir), which keeps at most cache_max_gb, evicting the shards used longest ago.
    cache_dir: str = ""
    cache_max_gb: float = 50.0
    # Remote reads that fail transiently are retried with backoff for this long; then the run saves and ends with
    # status "data unavailable" (exit 69), which tools/slurm_train.sbatch requeues (data/retry.py).
    remote_retry_s: float = 300.0  # + a margin below backend.step_timeout_s (checked with remote data)
    # Shards named by data.path that do not exist stop the run (listed); true trains without them.
    allow_missing_shards: bool = False

    def validate(self) -> None:
        for name in ("index", "cache_dir"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"data.webdataset.{name} must be a string, got {getattr(self, name)!r}")
        retry = self.remote_retry_s
        if not isinstance(retry, int | float) or isinstance(retry, bool) or retry < 0:
            raise ValueError(f"data.webdataset.remote_retry_s must be a number of seconds >= 0, got {retry!r}")
        cache = self.cache_max_gb
        if not isinstance(cache, int | float) or isinstance(cache, bool) or cache <= 0:
            raise ValueError(f"data.webdataset.cache_max_gb must be a number > 0, got {cache!r}")
        if not isinstance(self.allow_missing_shards, bool):
            raise ValueError(
                f"data.webdataset.allow_missing_shards must be true or false, got {self.allow_missing_shards!r}"
            )


@dataclass
class CsvOptions:
    """`data.csv`: the columns of a csv/tsv file of image paths and captions (data.source: csv)."""

    image_key: str = "filepath"
    caption_key: str = "title"
    separator: str = ""  # "" = tab for .tsv files, comma otherwise
    image_root: str = ""  # relative image paths resolve against this; "" = the csv's folder

    def validate(self) -> None:
        _strings(self, "data.csv")
        if len(self.separator) > 1:
            raise ValueError(f"data.csv.separator must be one character or empty, got {self.separator!r}")


@dataclass
class HfOptions:
    """`data.hf`: the split and columns of a Hugging Face `datasets` table (data.source: hf)."""

    image_key: str = "image"
    caption_key: str = "text"
    split: str = "train"

    def validate(self) -> None:
        _strings(self, "data.hf")


# data.source -> its own options section (a source without one has no options of its own)
SOURCE_OPTIONS = {"webdataset": WebDatasetOptions, "csv": CsvOptions, "hf": HfOptions}


@dataclass
class SourceSpec:
    """One of several mixed shard sources (`data.sources`, data/mixing.py)."""

    path: str = ""  # like data.path
    index: str = ""  # like data.webdataset.index
    weight: float = 1.0  # samples per epoch = round(weight x its samples): 2 = each sample twice, 0.5 = half

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.path, str) or not isinstance(self.index, str) or not (self.path or self.index):
            raise ValueError(f"data.sources: each source needs a path (or an index), got {self!r}")
        if not isinstance(self.weight, int | float) or isinstance(self.weight, bool) or not self.weight > 0:
            raise ValueError(f"data.sources: weight must be a number > 0, got {self.weight!r} for {self.path!r}")


@dataclass
class DataConfig:
    """Where the training pairs come from and how they are batched.

    `path` is, per source: webdataset -> a directory of shards, a brace pattern or glob of .tar shards
    (several directories need `index`), a manifest.json, each local or an fsspec URL (s3://, gs://,
    https://); "" with `index` set = every shard in the index;
    csv -> the csv/tsv file; hf -> a `datasets.save_to_disk` directory or local data files.
    """

    source: str = "webdataset"
    path: str = ""
    batch_size: int = 256  # per rank
    workers: int = 4  # DataLoader worker processes per rank
    image_size: int = 224
    seed: int = 0
    # Size of the index space (per-sample state length). None: from the manifest (the number of samples
    # with an image: dense rows 0..N-1) or the number of rows. Samples whose row is >= this are skipped.
    num_samples: int | None = None
    # Samples are shuffled within windows of this many consecutive (shard-shuffled) samples of a
    # rank's epoch chunk; 0 means one window = the whole chunk.
    shuffle_window: int = 50_000
    # False: the epoch is padded by wrapping around to its start so every sample is seen and every
    # rank gets full batches; True: the tail that does not fill a global batch is left out.
    drop_last: bool = False
    train_crop_scale: tuple[float, float] = (0.9, 1.0)
    # Where the train crop is resized and the JPEG decoded (data/device_transforms.py). "host": the worker crops,
    # bicubic-resizes and ships the final uint8 pixels. resize "device": the worker decodes and ships the whole
    # image plus its box (same seeded box); the trainer resizes the batch on its device (Pillow's bicubic within
    # one level; about 3x fewer worker cores per image). "auto": device when the trainer runs on CUDA, host on CPU
    # (where the "device" is the same cores). decode "device" (needs resize device or auto): the worker ships the
    # JPEG bytes and the trainer decodes them on its device (nvJPEG on CUDA), so a worker only reads bytes.
    resize: str = "auto"
    decode: str = "host"
    # Several webdataset sources mixed with weights instead of path / webdataset.index: [{path, index, weight}, ...].
    sources: list[SourceSpec] = field(default_factory=list)
    pin_memory: bool = False
    prefetch_factor: int = 2
    # CPU priority of the worker processes: "normal", "low" (niceness 19) or "idle" (Linux SCHED_IDLE:
    # a worker runs only on cores the ranks leave idle). Where workers and ranks share too few cores
    # (the 2-core CPU demo), a worker that takes a core mid-step stalls its rank and, at the next
    # all-reduce, every rank. `perf/data_s` shows whether the workers still keep up.
    worker_priority: str = "normal"
    # Each source's own options (SOURCE_OPTIONS), set only with that data.source.
    webdataset: WebDatasetOptions = field(default_factory=WebDatasetOptions)
    csv: CsvOptions = field(default_factory=CsvOptions)
    hf: HfOptions = field(default_factory=HfOptions)

    def __post_init__(self) -> None:
        if isinstance(self.train_crop_scale, list):
            self.train_crop_scale = tuple(self.train_crop_scale)
        if isinstance(self.sources, list | tuple):
            self.sources = [SourceSpec(**s) if isinstance(s, dict) else s for s in self.sources]
        for name, options in SOURCE_OPTIONS.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, options(**getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        for name, options in SOURCE_OPTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, options):
                raise ValueError(f"data.{name} must be a mapping of {options.__name__} keys, got {section!r}")
            section.validate()
            if name != self.source and section != options():
                raise ValueError(
                    f"data.{name} is set but data.source is {self.source!r}; remove data.{name} or set "
                    f"data.source: {name}"
                )
        index = self.webdataset.index
        if self.sources and (self.source != "webdataset" or self.path or index):
            raise ValueError(
                "data.sources replaces data.path / data.webdataset.index (webdataset shards only); set one of them"
            )
        if not all(isinstance(s, SourceSpec) for s in self.sources):
            raise ValueError(f"data.sources must be a list of {{path, index, weight}} mappings, got {self.sources!r}")
        seen: dict[tuple[str, str], int] = {}
        for i, spec in enumerate(self.sources):
            key = (_location(spec.path), _location(spec.index))
            if key in seen:
                raise ValueError(
                    f"data.sources[{i}] repeats data.sources[{seen[key]}] ({spec.path or spec.index!r}): "
                    "its samples would be read twice under two sets of rows. List it once; to draw it "
                    "more often, raise its weight (weight: 2 shows every sample twice per epoch)"
                )
            seen[key] = i
        if not isinstance(self.path, str) or not (self.path or (self.source == "webdataset" and index) or self.sources):
            raise ValueError("data.path must be a non-empty string (shard dir/pattern/URL, csv file or datasets dir)")
        _int(self, "batch_size", 1)
        _int(self, "workers", 0)
        _int(self, "image_size", 1)
        _int(self, "seed", 0)
        _int(self, "shuffle_window", 0)
        _int(self, "prefetch_factor", 1)
        if self.resize not in RESIZE_PLACES:
            raise ValueError(f"data.resize must be one of {RESIZE_PLACES}, got {self.resize!r}")
        if self.decode not in DECODE_PLACES:
            raise ValueError(f"data.decode must be one of {DECODE_PLACES}, got {self.decode!r}")
        if self.decode == "device" and self.resize == "host":
            raise ValueError(
                "data.decode: device needs data.resize: device or auto (the decoded image stays on the device)"
            )
        if self.worker_priority not in WORKER_PRIORITIES:
            raise ValueError(f"data.worker_priority must be one of {WORKER_PRIORITIES}, got {self.worker_priority!r}")
        if self.worker_priority == "idle" and not hasattr(os, "SCHED_IDLE"):
            raise ValueError("data.worker_priority 'idle' needs Linux (SCHED_IDLE); use 'low' on this system")
        if self.num_samples is not None:
            _int(self, "num_samples", 1)
        for name in ("drop_last", "pin_memory"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"data.{name} must be true or false, got {getattr(self, name)!r}")
        scale = self.train_crop_scale
        if (
            not isinstance(scale, tuple)
            or len(scale) != 2
            or not all(isinstance(s, int | float) for s in scale)
            or not 0 < scale[0] <= scale[1] <= 1
        ):
            raise ValueError(f"data.train_crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale!r}")
        sources = [{"path": source.path, "index": source.index} for source in self.sources]
        refuse_url_secrets({"data": {"path": self.path, "webdataset": {"index": index}, "sources": sources}})


def _location(path: str) -> str:
    """One spelling per location, for comparing sources (no filesystem access)."""
    if not path or "://" in path:
        return path.rstrip("/")
    return os.path.normpath(os.path.abspath(path))


def _strings(section: CsvOptions | HfOptions, prefix: str) -> None:
    """Every field of an options section is a string."""
    for f in fields(section):
        if not isinstance(getattr(section, f.name), str):
            raise ValueError(f"{prefix}.{f.name} must be a string, got {getattr(section, f.name)!r}")


def _int(cfg: DataConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"data.{name} must be an integer >= {minimum}, got {value!r}")
