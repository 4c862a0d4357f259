"""Training and evaluation loaders: one batch format for every source.

Batches are `data.types.Batch` (plain dicts). Training batches are `{"pixels": uint8 [B,H,W,3] (grey: [B,H,W]),
"tokens": int64 [B,C], "index": int64 [B]}`, pinned when `pin_memory`; the trainer normalises the pixels on its device
(`data.transforms.normalize_pixels`). With `data.resize: device` / `data.decode: device` the pixels are replaced
by whole decoded images or JPEG bytes plus crop boxes, which the trainer crops and resizes on its device
(`data.device_transforms.device_pixels`). Evaluation batches carry normalised float32 `"images"`
[B,3,H,W] instead (plus `"label"` when the data is labelled). C is the tokenizer's context
length (77 for the CLIP configs, the model config's `context_length` in general). `index` is the
sample's stable key, i.e. its row in the per-sample state.

Each DataLoader item is a whole batch, built by whichever worker gets it from (epoch, batch
number) alone (see data/plan.py), so the order never depends on the worker count and a
resumed loader starts at the next batch without reading, let alone decoding, what it skips.
Augmentation randomness is seeded per batch too, so a resumed stream is bit-identical.

Unusable samples (corrupt or missing image, missing or empty caption, missing or non-integer
key, key >= num_samples) are skipped and counted by reason. In training the slot is refilled
with a deterministic substitute (the same slot of a later batch of this rank's epoch, so one
sample repeats) to keep every batch full and every rank in step. The counts travel inside each
batch from its worker to the main process, so `skipped_counts()` is exact over the batches
handed out so far (batches prefetched but not yet consumed are not counted yet; they are
counted when consumed, including after a resume).
"""

from __future__ import annotations

import logging
import random
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Dataset, Sampler

from data.batching import MAX_ATTEMPTS, SKIP_REASONS, collate, load_sample, make_dataloader
from data.config import DataConfig
from data.device_transforms import train_crop
from data.eval_loader import EvalLoader, build_eval_loader
from data.open_source import open_source
from data.plan import steps_per_epoch
from data.sources import SkipSample
from data.tokenizer import get_tokenizer
from data.transforms import TrainTransform
from data.types import Batch, Plan, Source

__all__ = ["TrainLoader", "build_train_loader", "EvalLoader", "build_eval_loader", "SKIP_REASONS"]

log = logging.getLogger(__name__)


class _TrainBatches(Dataset):
    """Map-style dataset over (epoch, batch number) -> a full, collated batch of one rank."""

    def __init__(
        self, source: Source, cfg: DataConfig, rank: int, world_size: int, tokenizer, num_samples: int
    ) -> None:
        self.source, self.cfg, self.rank, self.world_size = source, cfg, rank, world_size
        self.tokenizer, self.num_samples = tokenizer, num_samples
        self.device_crop = train_crop(cfg.resize, cfg.decode, cfg.image_size, cfg.train_crop_scale, cfg.prefetch_factor)
        self.transform = TrainTransform(cfg.image_size, cfg.train_crop_scale)
        self._plans: OrderedDict[int, Plan] = OrderedDict()

    def plan(self, epoch: int) -> Plan:
        plan = self._plans.get(epoch)
        if plan is None:
            c = self.cfg
            args = dict(
                batch_size=c.batch_size,
                seed=c.seed,
                epoch=epoch,
                rank=self.rank,
                world_size=self.world_size,
                window=c.shuffle_window,
                drop_last=c.drop_last,
            )
            plan = self._plans[epoch] = self.source.plan(**args)
            if len(self._plans) > 2:
                self._plans.popitem(last=False)
        return plan

    def __getitem__(self, item: tuple[int, int]) -> Batch:
        epoch, b = item
        plan = self.plan(epoch)
        shards, locs = plan.batch(b)
        self.source.prefetch(np.unique(shards))
        rng = random.Random(f"{self.cfg.seed}/{epoch}/{self.world_size}/{self.rank}/{b}")
        counts: Counter = Counter()
        transform = self.transform if self.device_crop is None else self.device_crop.batch(len(shards))
        pixels, captions, keys = [], [], []
        for j in range(len(shards)):
            s, i = int(shards[j]), int(locs[j])
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    raw, px = load_sample(self.source, s, i, transform, rng, self.num_samples)
                    break
                except SkipSample as e:
                    counts[e.reason] += 1
                    s, i = plan.substitute(b, j, attempt)
            else:
                raise RuntimeError(f"no usable sample in {MAX_ATTEMPTS} tries (skipped so far: {dict(counts)})")
            pixels.append(px)
            captions.append(raw.caption)
            keys.append(raw.key)
        if self.device_crop is None:
            return collate(pixels, captions, keys, self.tokenizer, counts)
        return transform.pack(collate(pixels, captions, keys, self.tokenizer, counts, stack=transform.stack))

    def __len__(self) -> int:
        return self.plan(0).steps


class _Positions(Sampler):
    """Yields (epoch, batch) from the owner's position at the time iteration starts."""

    def __init__(self, owner: TrainLoader) -> None:
        self._owner = weakref.ref(owner)  # no reference cycle: dropping the loader stops its workers at once

    def __iter__(self):
        owner = self._owner()
        return iter([(owner.epoch, b) for b in range(owner.position, owner.steps_per_epoch)])

    def __len__(self) -> int:
        owner = self._owner()
        return owner.steps_per_epoch - owner.position


class TrainLoader:
    """Resumable, deterministic per-rank training stream (a data.types.TrainStream). Iterating yields the rest of
    the current epoch.

    `set_epoch(e)` moves to the start of epoch e (it keeps the position when e is already the
    current epoch, so calling it after `load_state_dict` continues mid-epoch).
    """

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, tokenizer=None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} / world_size {world_size} is not a valid pair")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.source = open_source(cfg)
        self.num_samples = int(self.source.num_samples)
        self.total = self.source.samples_per_epoch
        # True when every sample's dense row equals its integer source key (csv/datasets rows, the shards this
        # repo writes): per-sample state saved by versions that indexed it by source key still fits.
        self.keys_are_rows = self.source.keys_are_rows
        if self.total == 0:
            raise ValueError(f"the {cfg.source} data at {cfg.path!r} has no samples")
        self.steps_per_epoch = steps_per_epoch(self.total, cfg.batch_size, world_size, cfg.drop_last)
        self.epoch, self.position = 0, 0
        self._skipped: Counter = Counter()
        tokenizer = tokenizer or get_tokenizer()
        self._batches = _TrainBatches(self.source, cfg, rank, world_size, tokenizer, self.num_samples)
        self._loader = make_dataloader(
            self._batches,
            _Positions(self),
            cfg.workers,
            cfg.pin_memory,
            cfg.prefetch_factor,
            cfg.worker_priority,
            cfg.seed,
        )
        if rank == 0:
            log.info(
                "train data: %s, %d samples, index space %d, %d steps/epoch of %d x %d",
                self.source.describe(),
                self.total,
                self.num_samples,
                self.steps_per_epoch,
                cfg.batch_size,
                world_size,
            )
            if composition := self.source.composition():
                log.info("train data: mixed sources per epoch: %s", composition)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        if self.position >= self.steps_per_epoch:
            return
        for batch in self._loader:
            self._count(batch.pop("skipped"))
            self.position += 1
            yield batch

    def _count(self, counts: dict) -> None:
        new = [r for r in counts if r not in self._skipped]
        self._skipped.update(counts)
        if new:
            log.warning("data: skipping unusable samples (%s); totals so far %s", new, dict(self._skipped))

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is garbage collected)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader._iterator = None

    def skipped_counts(self) -> dict[str, int]:
        """Skips by reason over all batches handed out (restored by load_state_dict); every reason listed."""
        return {r: int(self._skipped.get(r, 0)) for r in SKIP_REASONS} | dict(self._skipped)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.cfg.seed,
            "world_size": self.world_size,
            "batch_size": self.cfg.batch_size,
            "total": self.total,
            "steps_per_epoch": self.steps_per_epoch,
            "skipped": dict(self._skipped),
        }

    def load_state_dict(self, sd: dict, strict: bool = True) -> None:
        """Continue where `sd` was taken. A different seed/world size/batch size/dataset mid-epoch cannot
        continue that epoch's order: strict raises; otherwise the loader moves to the next epoch's start."""
        same = all(
            sd[k] == v
            for k, v in (
                ("seed", self.cfg.seed),
                ("world_size", self.world_size),
                ("batch_size", self.cfg.batch_size),
                ("total", self.total),
            )
        )
        self._skipped = Counter(sd.get("skipped", {}))
        self.epoch, self.position = int(sd["epoch"]), int(sd["position"])
        if not same and self.position == sd.get("steps_per_epoch"):  # saved at an epoch's end
            self.epoch, self.position = self.epoch + 1, 0
        if not same and 0 < self.position:
            msg = (
                f"data stream state { ({k: sd[k] for k in ('seed', 'world_size', 'batch_size', 'total')}) } "
                f"does not match this loader (seed {self.cfg.seed}, world_size {self.world_size}, batch_size "
                f"{self.cfg.batch_size}, total {self.total}); cannot resume mid-epoch"
            )
            if strict:
                raise ValueError(msg)
            log.warning("%s: starting epoch %d from its beginning", msg, self.epoch + 1)
            self.epoch, self.position = self.epoch + 1, 0
        self.position = min(self.position, self.steps_per_epoch)


def build_train_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1, tokenizer=None) -> TrainLoader:
    return TrainLoader(cfg, rank, world_size, tokenizer)
