"""Shared by the train and eval loaders: one record -> pixels, a list of samples -> a batch."""

from __future__ import annotations

import atexit
import functools
import io
import logging
import os
import signal
import weakref

import torch
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from data.image_limits import check_image_size
from data.sources import RawSample, SkipSample
from data.transforms import normalize_batch, stack_pixels

log = logging.getLogger(__name__)
SKIP_REASONS = ("corrupt_image", "missing_image", "missing_caption", "key_out_of_range", "image_too_large")
MAX_ATTEMPTS = 1000  # substitutes tried for one slot before the data is declared unusable


def load_sample(source, shard: int, i: int, transform, rng, num_samples: int, need_caption: bool = True):
    """(RawSample, uint8 pixels) of one record; raises SkipSample(reason)."""
    raw: RawSample = source.read(shard, i, need_caption)
    if raw.key >= num_samples:
        raise SkipSample("key_out_of_range")
    image = raw.image
    try:
        if isinstance(image, Image.Image):
            return raw, transform.pixels(image, rng)
        if isinstance(image, str) and not os.path.isfile(image):
            raise SkipSample("missing_image")
        if hasattr(transform, "encoded"):  # device-side transforms take the encoded bytes (data.device_transforms)
            if isinstance(image, str):
                with open(image, "rb") as f:
                    image = f.read()
            return raw, transform.encoded(bytes(image), rng)
        with Image.open(image if isinstance(image, str) else io.BytesIO(image)) as img:  # reads the header only
            check_image_size(img)
            return raw, transform.pixels(img, rng)
    except SkipSample:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        log.debug("skipping key %d: undecodable image (%s)", raw.key, e)
        raise SkipSample("corrupt_image") from None


def collate(pixels, captions, keys, tokenizer, counts, labels=None, image_size=0, stack=None) -> dict:
    """The worker's half of a batch: uint8 "pixels" (see `finish`), tokens [B, context_length], index, skip counts.

    An empty batch keeps the token width, so code that concatenates batches never sees a ragged shape. `stack`
    (a device-side transform's) replaces "pixels" by what it ships (data.device_transforms).
    """
    shared = get_worker_info() is not None
    if stack is not None and pixels:
        images = stack(pixels, shared)
    else:
        empty = torch.zeros(0, image_size, image_size, dtype=torch.uint8)
        images = {"pixels": stack_pixels(pixels, shared) if pixels else empty}
    batch = {
        **images,
        "tokens": tokenizer(captions) if captions else torch.zeros(0, tokenizer.context_length, dtype=torch.long),
        "index": torch.tensor(keys, dtype=torch.int64),
        "skipped": dict(counts),
    }
    if labels is not None:
        batch["label"] = torch.tensor(labels, dtype=torch.int64)
    return batch


def finish(batch: dict) -> dict:
    """Consumer side: uint8 pixels -> normalised float32 "images" [B,3,H,W] first in the dict."""
    return {"images": normalize_batch(batch.pop("pixels")), **batch}


def make_dataloader(
    dataset,
    sampler,
    workers: int,
    pin_memory: bool,
    prefetch_factor: int,
    worker_priority: str = "normal",
    seed: int = 0,
) -> DataLoader:
    """Each item is a whole batch (batch_size=None); workers persist across epochs, run at
    `worker_priority` (see DataConfig) and ignore the preemption signals (`_init_worker`).
    The workers' base seed comes from `seed`: drawn from the global RNG, it would move the RNG state a
    checkpoint saves by one draw per (re)start, so a resumed run's state would differ from an uninterrupted one's."""
    loader = DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=functools.partial(_init_worker, worker_priority),
        generator=torch.Generator().manual_seed(seed),
    )
    if workers > 0:  # registered after multiprocessing's own exit hook, so it runs first (atexit is LIFO)
        atexit.register(_stop_workers, weakref.ref(loader))
    return loader


def _stop_workers(ref: weakref.ref) -> None:
    """At interpreter exit, stop the workers through the loader's own queue: multiprocessing's exit hook would
    SIGTERM them and wait, and they ignore SIGTERM (WORKER_IGNORED_SIGNALS)."""
    loader = ref()
    iterator = None if loader is None else getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


# A launcher signals each rank's whole process group, and `scancel` every process of a job step: a loader
# worker that died of one of these would fail its rank mid-step (torch's worker SIGTERM handler exits unless
# the signal came from its parent). The rank handles them (saves the step, exits 75) and stops its workers
# itself; a worker whose rank died anyway exits through the loader's parent watchdog.
WORKER_IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def _init_worker(priority: str, worker_id: int) -> None:
    for sig in WORKER_IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if priority == "low":
        os.nice(19)  # clamped to the lowest priority, 19
    elif priority == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
