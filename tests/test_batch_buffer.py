"""data.batch_buffer: a loader worker decodes into pooled buffers and writes one again only after the consumer gave
it back; what a consumer holds is never overwritten, and training with the pool equals training without it."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.photo_shards import build
from data.batch_buffer import HEADER, Arena, BufferPool, give_back
from data.config import DataConfig
from data.device_transforms import DecodedCrop, EncodedCrop, device_pixels
from data.loader import build_train_loader
from data.transforms import TrainTransform
from tests.ranks import run_on_ranks


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """DataComp-layout photo shards (sizes vary, so arenas grow and buffers of several sizes are pooled)."""
    path = str(tmp_path_factory.mktemp("photos") / "datacomp")
    build(path, "datacomp", samples=48, shards=2, seed=5, workers=1)
    return path


def _bytes(buffer: torch.Tensor) -> bytes:
    return buffer.numpy().tobytes()


def test_arena_moves_when_outgrown_and_keeps_what_was_written() -> None:
    arena = Arena(BufferPool(shared=False, size=4), expected=2)
    arena.slot(10)[:] = range(10)
    arena.commit(10)
    arena.slot(5)[:] = 99  # written, not committed: a failed decode
    arena.slot(100)[:] = 7  # outgrows the first buffer (room for 2 x 10 bytes, x ROOM)
    arena.commit(100)
    assert _bytes(arena.take()) == bytes(range(10)) + bytes([7] * 100)
    assert arena.take().storage_offset() == HEADER


def test_the_first_slot_of_a_batch_fits_an_image_larger_than_any_batch_before() -> None:
    arena = Arena(BufferPool(shared=False, size=4), expected=2, reserve=100)  # the largest batch so far: 100 bytes
    assert len(arena.slot(1000)) == 1000


def _png(size: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode).save(
        buffer, format="PNG" if mode != "CMYK" else "JPEG"
    )
    return buffer.getvalue()


def test_a_large_pillow_image_opening_a_later_batch_is_kept_not_skipped() -> None:
    """After a batch of small images, a batch starts with a PNG and a CMYK JPEG bigger than that whole batch: both
    decode (through Pillow) into the arena with the host path's pixels."""
    crop = DecodedCrop(16)
    first = crop.batch(2)
    for _ in range(2):
        first.encoded(_png(8), random.Random(0))
    first.pack(first.stack([((8, 8), (0, 0, 8, 8))] * 2, False) | {"tokens": torch.zeros(2, 4)})
    assert 0 < crop.largest < 64 * 64 * 3
    second = crop.batch(2)
    for data in (_png(64), _png(64, "CMYK")):
        (h, w), _ = second.encoded(data, random.Random(0))
        assert (h, w) == (64, 64)
    expected = np.concatenate(
        [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")).reshape(-1) for d in (_png(64), _png(64, "CMYK"))]
    )
    assert np.array_equal(second.arena.take().numpy(), expected)


def test_an_opened_image_that_fails_to_decode_draws_the_box_where_the_host_path_does() -> None:
    """A lazily opened, truncated PNG (a source that yields PIL images): both paths skip it, and the random stream is
    left in the same state, so every later box of the batch is the same."""
    truncated = _png(32)[:-200]
    states = []
    for transform in (TrainTransform(16), DecodedCrop(16).batch(1), EncodedCrop(16)):
        rng = random.Random(7)
        with pytest.raises(OSError), Image.open(io.BytesIO(truncated)) as img:
            transform.pixels(img, rng)
        states.append(rng.random())
    assert states[0] == states[1] == states[2]


def test_pool_reuses_only_given_back_buffers_and_forgets_the_oldest_when_all_are_out() -> None:
    pool = BufferPool(shared=False, size=2)
    first, second = pool.acquire(100), pool.acquire(100)
    assert first.data_ptr() != second.data_ptr()
    give_back({"decoded": first[HEADER : HEADER + 5], "tokens": torch.zeros(3)})
    assert pool.acquire(50).data_ptr() == first.data_ptr()  # given back and large enough
    second[HEADER:] = 3
    third = pool.acquire(100)  # both out: `first` (oldest) is forgotten, a new one made
    assert third.data_ptr() not in (first.data_ptr(), second.data_ptr()) and len(pool.buffers) == 2
    assert bool((second[HEADER:] == 3).all())  # never handed out again while out


def test_give_back_leaves_other_tensors_alone() -> None:
    plain = torch.full((HEADER + 8,), 1, dtype=torch.uint8)
    give_back({"decoded": plain[HEADER:], "pixels": plain})
    assert bool((plain == 1).all())


def _pixels(batch: dict) -> list[torch.Tensor]:
    """What the trainer reads of a batch, copied out."""
    return [device_pixels(batch, "cpu", 32), *(batch[k].clone() for k in ("tokens", "index", "boxes", "sizes"))]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_held_batches_stay_whole_while_given_back_ones_are_reused(photos, workers) -> None:
    """The consumer keeps every third batch and gives the others back after the next one arrives (as the trainer
    does); two epochs. Every batch equals the same batch from a loader whose consumer gives nothing back."""
    cfg = DataConfig(path=photos, batch_size=8, workers=workers, image_size=32, resize="device", prefetch_factor=1)
    reference, kept = [], build_train_loader(cfg)
    for epoch in range(2):
        kept.set_epoch(epoch)
        reference += [_pixels(b) for b in kept]
    kept.close()
    loader = build_train_loader(cfg)
    held, seen, pointers, previous = [], [], [], None
    for epoch in range(2):
        loader.set_epoch(epoch)
        for n, batch in enumerate(loader):
            seen.append(_pixels(batch))
            pointers.append(batch["decoded"].untyped_storage().data_ptr())
            if previous is not None:
                give_back(previous)
            previous = None if n % 3 == 0 else batch
            if n % 3 == 0:
                held.append((len(seen) - 1, batch))
    loader.close()
    assert len(seen) == len(reference) >= 6
    if workers == 0:  # given-back buffers were written again (with a worker, the pool lives in its process)
        assert len(set(pointers)) < len(pointers)
    for a, b in zip(seen, reference, strict=True):
        assert _equal(a, b)
    for i, batch in held:
        assert _equal(_pixels(batch), reference[i])


def test_a_batch_crosses_as_one_buffer(photos) -> None:
    """Tokens, index, boxes and sizes are views of the images' pooled buffer (one shared-memory segment)."""
    batch = next(iter(build_train_loader(DataConfig(path=photos, batch_size=8, workers=0, resize="device"))))
    storages = {v.untyped_storage().data_ptr() for v in batch.values() if isinstance(v, torch.Tensor)}
    assert len(storages) == 1 and batch["decoded"].storage_offset() == HEADER
    assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape == (8, 77)


def test_in_process_pool_reuses_given_back_buffers(photos) -> None:
    cfg = DataConfig(path=photos, batch_size=8, workers=0, image_size=32, resize="device")
    pointers = []
    for batch in build_train_loader(cfg):
        pointers.append(batch["decoded"].untyped_storage().data_ptr())
        give_back(batch)
    assert len(pointers) >= 4 and len(set(pointers)) < len(pointers)


def _train(rank: int, world_size: int, out_dir: str, photos: str, pooled: bool) -> list[float]:
    import train.trainer
    from tests.tiny_run import tiny_config

    if not pooled:
        train.trainer.give_back = lambda batch: None
    cfg = tiny_config(out_dir)
    cfg.data = DataConfig(path=photos, batch_size=8, workers=1, image_size=32, resize="device", prefetch_factor=1)
    cfg.epochs, cfg.max_steps = 2, 10
    return train.trainer.Trainer(cfg).fit()["losses"]


@pytest.mark.slow
def test_training_with_the_pool_equals_training_without(photos, tmp_path) -> None:
    """A tiny run fed by one loader worker with `data.resize: device`: the trainer gives each batch back after the
    next one arrives; the same run with give_back switched off has the same losses, bit for bit."""
    (pooled,) = run_on_ranks(_train, 1, (str(tmp_path / "pooled"), photos, True))
    (fresh,) = run_on_ranks(_train, 1, (str(tmp_path / "fresh"), photos, False))
    assert len(pooled) == 10 and pooled == fresh
