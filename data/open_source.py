"""The one place that maps `data.source` (and `data.sources`) to a source class; the classes import nothing back."""

from __future__ import annotations

from data.config import DataConfig
from data.imagefolder import ImageFolderSource
from data.mixing import MixedSource
from data.sources import CsvSource, HFSource, ShardSource
from data.types import Source


def open_source(cfg: DataConfig, label_key: str | None = None) -> Source:
    """The configured source: several weighted shard sources, webdataset shards, csv, a class-per-folder tree or a
    Hugging Face dataset (`label_key`: the column or json field holding an evaluation label)."""
    if cfg.sources:
        return MixedSource(cfg)
    if cfg.source == "webdataset":
        return ShardSource(cfg)
    if cfg.source == "csv":
        return CsvSource(cfg, label_key)
    if cfg.source == "imagefolder":
        return ImageFolderSource(cfg)
    return HFSource(cfg, label_key)
