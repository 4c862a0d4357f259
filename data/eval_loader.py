"""Evaluation reader: every sample once, in a fixed order (manifest shard order, then tar order).

Used for zero-shot classification (labelled shards: json "label", class names in the
manifest) and retrieval (captions -> "tokens"). Unusable samples are skipped and counted,
never substituted, so the last batch and batches with skips are smaller than batch_size.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from torch.utils.data import Dataset

from data.batching import SKIP_REASONS, collate, finish, load_sample, make_dataloader
from data.config import DataConfig
from data.open_source import open_source
from data.sources import SkipSample
from data.tokenizer import get_tokenizer
from data.transforms import EvalTransform
from data.types import Batch, Source


class _EvalBatches(Dataset):
    def __init__(
        self, source: Source, batch_size: int, image_size: int, tokenizer, num_samples: int, need_caption: bool
    ) -> None:
        self.source, self.batch_size, self.image_size = source, batch_size, image_size
        self.tokenizer, self.num_samples, self.need_caption = tokenizer, num_samples, need_caption
        self.transform = EvalTransform(image_size)
        self.starts = np.concatenate([[0], np.cumsum(source.shard_sizes)])
        self.total = int(self.starts[-1])

    def __len__(self) -> int:
        return -(-self.total // self.batch_size)

    def __getitem__(self, b: int) -> Batch:
        pos = np.arange(b * self.batch_size, min((b + 1) * self.batch_size, self.total))
        shards = np.searchsorted(self.starts, pos, side="right") - 1
        counts: Counter = Counter()
        pixels, captions, keys, labels = [], [], [], []
        for s, p in zip(shards.tolist(), pos.tolist(), strict=True):
            try:
                raw, px = load_sample(
                    self.source, s, p - int(self.starts[s]), self.transform, None, self.num_samples, self.need_caption
                )
            except SkipSample as e:
                counts[e.reason] += 1
                continue
            pixels.append(px)
            captions.append(raw.caption)
            keys.append(raw.key)
            labels.append(raw.label)
        labels = labels if self.source.has_labels else None
        return collate(pixels, captions, keys, self.tokenizer, counts, labels, self.image_size)


class EvalLoader:
    """Single pass per iteration; `class_names` from the manifest (or a datasets ClassLabel), else None."""

    def __init__(self, cfg: DataConfig, tokenizer=None, label_key: str | None = "label", need_caption: bool = True):
        self.cfg = cfg
        self.source = open_source(cfg, label_key)
        self.num_samples = int(self.source.num_samples)
        self.class_names: list[str] | None = self.source.classes
        self.has_labels = bool(self.source.has_labels)
        self._batches = _EvalBatches(
            self.source, cfg.batch_size, cfg.image_size, tokenizer or get_tokenizer(), self.num_samples, need_caption
        )
        self.total = self._batches.total
        self._skipped: Counter = Counter()
        self.shard(0, 1)

    def shard(self, rank: int, world_size: int) -> EvalLoader:
        """Iterate only batches rank, rank + K, ... (sharded evaluation gathers and re-orders by index)."""
        batches = range(rank, len(self._batches), world_size)
        self._loader = make_dataloader(
            self._batches, batches, self.cfg.workers, self.cfg.pin_memory, self.cfg.prefetch_factor
        )
        return self

    @property
    def manifest(self) -> dict:
        """The shard manifest (class prompts/templates for zero-shot live here); {} for other sources."""
        return self.source.manifest

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self):
        self._skipped = Counter()
        for batch in self._loader:
            self._skipped.update(batch.pop("skipped"))
            if len(batch["index"]):
                yield finish(batch)

    def skipped_counts(self) -> dict[str, int]:
        """Skips by reason during the current (or last) pass."""
        return {r: int(self._skipped.get(r, 0)) for r in SKIP_REASONS} | dict(self._skipped)


def build_eval_loader(
    path: str,
    image_size: int,
    batch_size: int,
    workers: int = 0,
    *,
    source: str = "webdataset",
    tokenizer=None,
    label_key: str | None = "label",
    need_caption: bool = True,
    **options,
) -> EvalLoader:
    """`options` are DataConfig fields (csv=CsvOptions(...), hf=HfOptions(...), num_samples, pin_memory, ...).

    For csv / datasets sources `label_key` names an integer label column (optional)."""
    cfg = DataConfig(source=source, path=path, image_size=image_size, batch_size=batch_size, workers=workers, **options)
    return EvalLoader(cfg, tokenizer, label_key, need_caption)
