"""Training stream over real tar shards: keys, rank split, equal step counts, determinism, resume, bad input."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from data.config import DataConfig
from data.loader import build_train_loader
from data.shards import ShardWriter
from data.tokenizer import get_tokenizer
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize_pixels
from tests.checks import keys_of
from tests.data_fixtures import caption_of, decode_colors, key_color, meta, png, write_raw_tar, write_shards

MEAN, STD = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float64), torch.tensor(OPENAI_CLIP_STD, dtype=torch.float64)


def cfg(path, **kw) -> DataConfig:
    base = dict(path=str(path), batch_size=4, workers=0, image_size=8, seed=3, shuffle_window=16)
    return DataConfig(**{**base, **kw})


def epoch(loader, e: int | None = None) -> list[dict]:
    if e is not None:
        loader.set_epoch(e)
    return list(loader)


def test_keys_round_trip(tmp_path):
    """Sparse source keys 1, 4, 7, ... become dense rows 0..11 in (shard, position) order."""
    keys = write_shards(tmp_path, [5, 7], keys=[3 * i + 1 for i in range(12)])
    loader = build_train_loader(cfg(tmp_path), 0, 1)
    assert loader.num_samples == 12 and loader.steps_per_epoch == 3
    batches = epoch(loader)
    assert sorted(keys_of(batches)) == list(range(12))
    tok = get_tokenizer()
    for b in batches:
        assert b["pixels"].dtype == torch.uint8 and b["pixels"].shape == (4, 8, 8, 3)  # normalised on the device
        assert b["tokens"].dtype == torch.int64 and b["tokens"].shape == (4, 77)
        assert b["index"].dtype == torch.int64
        colors = decode_colors(normalize_pixels(b["pixels"]), MEAN, STD)
        for j, row in enumerate(b["index"].tolist()):
            assert tuple(colors[j]) == key_color(keys[row])  # the pixels belong to this row's sample
            assert torch.equal(b["tokens"][j], tok([caption_of(keys[row])])[0])


def test_two_ranks_disjoint_and_cover(tmp_path):
    keys = write_shards(tmp_path, [7, 13, 5, 11])  # 36 samples, global batch 8
    seen_by_epoch = []
    for drop_last in (True, False):
        ranks = [build_train_loader(cfg(tmp_path, drop_last=drop_last), r, 2) for r in range(2)]
        assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == (4 if drop_last else 5)
        for e in range(4):
            got = [keys_of(epoch(r, e)) for r in ranks]
            if drop_last:  # 32 of 36, no sample twice, ranks disjoint
                assert len(set(got[0]) | set(got[1])) == 32 == len(got[0]) + len(got[1])
                seen_by_epoch.append(set(got[0]))
            else:  # every sample seen; the 4 padding slots repeat samples from the epoch's start
                assert set(got[0]) | set(got[1]) == set(keys)
                assert len(got[0]) + len(got[1]) == 40
    assert len({frozenset(s) for s in seen_by_epoch}) > 1  # samples are reshuffled across ranks each epoch


def test_equal_batch_counts_with_uneven_shards_and_workers(tmp_path):
    write_shards(tmp_path, [1, 30, 2, 0, 9])  # 42 samples, one empty shard
    counts = []
    for r in range(3):
        loader = build_train_loader(cfg(tmp_path, workers=2), r, 3)
        batches = epoch(loader)
        assert all(len(b["index"]) == 4 for b in batches)
        counts.append(len(batches))
    assert counts == [4, 4, 4]  # ceil(42 / 12)


def test_fewer_shards_than_workers_times_ranks(tmp_path):
    keys = write_shards(tmp_path, [16])
    got = [keys_of(epoch(build_train_loader(cfg(tmp_path, workers=2), r, 2))) for r in range(2)]
    assert sorted(got[0] + got[1]) == keys


def test_order_depends_only_on_seed_epoch_world_size(tmp_path):
    write_shards(tmp_path, [10, 6, 9, 7])
    a = [epoch(build_train_loader(cfg(tmp_path, workers=w), 0, 1), 0) for w in (0, 2)]
    assert keys_of(a[0]) == keys_of(a[1])
    assert all(torch.equal(x["pixels"], y["pixels"]) for x, y in zip(a[0], a[1], strict=True))
    other_epoch = keys_of(epoch(build_train_loader(cfg(tmp_path), 0, 1), 1))
    other_seed = keys_of(epoch(build_train_loader(cfg(tmp_path, seed=4), 0, 1), 0))
    assert other_epoch != keys_of(a[0]) and other_seed != keys_of(a[0])
    assert sorted(other_epoch) == sorted(keys_of(a[0]))


def test_resume_mid_epoch_with_workers(tmp_path):
    write_shards(tmp_path, [9, 14, 5, 12])  # 40 samples -> 10 batches
    c = cfg(tmp_path, workers=2, image_size=6, train_crop_scale=(0.5, 1.0))
    full = build_train_loader(c, 0, 1)
    reference = epoch(full, 1) + epoch(full, 2)

    first = build_train_loader(c, 0, 1)
    first.set_epoch(1)
    before = []
    for b in first:
        before.append(b)
        if len(before) == 4:
            break
    state = first.state_dict()
    assert state["epoch"] == 1 and state["position"] == 4
    del first

    resumed = build_train_loader(c, 0, 1)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # a trainer re-announcing the epoch keeps the position
    after = epoch(resumed) + epoch(resumed, 2)
    got = before + after
    assert keys_of(got) == keys_of(reference)
    assert all(torch.equal(x["pixels"], y["pixels"]) for x, y in zip(got, reference, strict=True))
    assert all(torch.equal(x["tokens"], y["tokens"]) for x, y in zip(got, reference, strict=True))


def test_break_and_continue_same_loader(tmp_path):
    """A consumer may stop iterating (e.g. to evaluate) and iterate again: it continues, with workers too."""
    write_shards(tmp_path, [20])
    c = cfg(tmp_path, workers=2)
    reference = keys_of(epoch(build_train_loader(c, 0, 1)))
    loader = build_train_loader(c, 0, 1)
    got = []
    while loader.position < loader.steps_per_epoch:
        for b in loader:
            got += b["index"].tolist()
            break
    assert got == reference
    assert list(loader) == []  # the epoch is used up until set_epoch moves on
    loader.close()


def test_resume_with_other_world_size(tmp_path):
    write_shards(tmp_path, [24])
    one = build_train_loader(cfg(tmp_path), 0, 1)
    next(iter(one))
    two = build_train_loader(cfg(tmp_path), 0, 2)
    with pytest.raises(ValueError, match="cannot resume mid-epoch"):
        two.load_state_dict(one.state_dict())
    two.load_state_dict(one.state_dict(), strict=False)
    assert (two.epoch, two.position) == (1, 0)


def _bad_shards(directory) -> tuple[list[int], dict[str, int]]:
    """22 good samples and one of each kind of bad one; returns the good rows and the planted skips."""
    w = ShardWriter(str(directory), shard_size=13)
    for k in range(10):  # rows 0..9
        w.write(k, png(k), "png", caption_of(k))
    w.write(100, b"this is not an image", "jpg", "corrupt")  # row 10
    w.write(101, png(101)[:40], "png", "truncated png")  # row 11
    w.write(None, png(102), "png", "no key: the tar key stands in")  # row 12, good
    w.write("abc", png(103), "png", "a string key")  # row 13, good
    w.write(104, png(104), "png", None)  # row 14, no caption
    w.write(105, None, "png", "no image")  # no row
    for k in range(10, 20):  # rows 15..24
        w.write(k, png(k), "png", caption_of(k))
    w.write(106, png(106), "png", "row beyond num_samples")  # row 25
    w.close()
    from data.manifest import build_manifest

    build_manifest(w.paths, str(directory))
    good = [*range(10), 12, 13, *range(15, 25)]
    planted = {"corrupt_image": 2, "missing_caption": 1, "missing_image": 1, "key_out_of_range": 1}
    return good, planted


def test_bad_samples_skipped_and_counted(tmp_path):
    good, planted = _bad_shards(tmp_path)  # 27 samples; num_samples=25 makes row 25 out of range
    c = cfg(tmp_path, batch_size=3, num_samples=25, shuffle_window=0)
    counts = {}
    for w in (0, 2):
        loader = build_train_loader(c.__class__(**{**c.__dict__, "workers": w}), 0, 1)
        batches = epoch(loader)
        got = keys_of(batches)
        assert len(got) == 27 and all(len(b["index"]) == 3 for b in batches)
        assert set(got) == set(good)  # every good sample, no bad one
        assert len(got) - len(set(got)) == sum(planted.values())  # each bad slot refilled by a repeat
        counts[w] = loader.skipped_counts()
        assert all(counts[w][r] >= n for r, n in planted.items()), counts[w]
    assert counts[0] == counts[2]  # counts from worker processes reach the main process exactly

    # partial epochs: the count covers exactly the batches handed out, whatever the workers prefetched
    partial = {}
    for w in (0, 2):
        loader = build_train_loader(c.__class__(**{**c.__dict__, "workers": w}), 0, 1)
        it = iter(loader)
        for _ in range(5):
            next(it)
        partial[w] = loader.skipped_counts()
        state = loader.state_dict()
    assert partial[0] == partial[2]
    resumed = build_train_loader(c, 0, 1)
    resumed.load_state_dict(state)
    epoch(resumed)
    assert resumed.skipped_counts() == counts[0]  # counts persist through state_dict


def test_img2dataset_string_keys_and_manifest_tool(tmp_path):
    import tools.make_shards as make_shards

    members = []
    for k in range(6):
        name = f"{k:09d}"
        members += [(f"{name}.jpg", png(k)), (f"{name}.txt", caption_of(k).encode()), (f"{name}.json", meta(name))]
    write_raw_tar(os.path.join(tmp_path, "00000.tar"), members)
    with pytest.raises(FileNotFoundError, match="make_shards.py manifest --shards"):
        build_train_loader(cfg(tmp_path), 0, 1)
    make_shards.main(["manifest", "--shards", str(tmp_path)])
    loader = build_train_loader(cfg(tmp_path / "{00000..00000}.tar", batch_size=2), 0, 1)
    assert sorted(keys_of(epoch(loader))) == list(range(6))


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="10 of 10 shard"):
        build_train_loader(cfg(tmp_path / "missing-{000..009}.tar"), 0, 1)
    write_shards(tmp_path / "empty", [0])
    with pytest.raises(ValueError, match="no samples"):
        build_train_loader(cfg(tmp_path / "empty"), 0, 1)
    write_shards(tmp_path / "ok", [4])
    with pytest.raises(ValueError, match="drop_last"):
        build_train_loader(cfg(tmp_path / "ok", drop_last=True, batch_size=3), 0, 2)
    tar = next(p for p in (tmp_path / "ok").iterdir() if p.suffix == ".tar")
    with open(tar, "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(ValueError, match="stale"):
        build_train_loader(cfg(tmp_path / "ok"), 0, 1)


def test_index_space_is_the_dense_row_count(tmp_path):
    write_shards(tmp_path, [3, 3], keys=[0, 5, 9, 2, 40, 7])
    loader = build_train_loader(cfg(tmp_path, batch_size=2), 0, 1)
    assert loader.num_samples == 6  # not max key + 1 = 41
    assert np.array_equal(np.sort(keys_of(epoch(loader))), np.arange(6))


@pytest.mark.parametrize("priority", ["low", "idle"])
def test_workers_run_at_the_configured_priority(tmp_path, priority: str):
    write_shards(tmp_path, [12])
    loader = build_train_loader(cfg(tmp_path, workers=2, worker_priority=priority), 0, 1)
    own = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))
    next(iter(loader))  # the workers have started
    pids = [w.pid for w in loader._loader._iterator._workers]
    expected = (19, own[1]) if priority == "low" else (own[0], os.SCHED_IDLE)
    deadline = time.monotonic() + 30  # a loaded machine may not have started the second worker's init yet
    while True:
        got = [(os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid)) for pid in pids]
        if got == [expected] * 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == [expected] * 2
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)) == own  # the rank keeps its own
    loader.close()


def test_unknown_worker_priority_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data.worker_priority must be one of"):
        cfg(tmp_path, worker_priority="lowest")
