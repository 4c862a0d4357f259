"""Per-sample state: shard bounds, re-partitioning between world sizes, duplicate keys (no comms)."""

from __future__ import annotations

import pytest
import torch

from train.losses.sample_state import (
    SampleState,
    last_occurrence,
    merge_shards,
    repartition_shards,
    shard_bounds,
    state_bytes_per_rank,
)

COLUMNS = {"log_u1": float("-inf"), "tau1": 0.03}


def filled_shards(num_samples: int, world_size: int, layout: str = "sharded") -> tuple[list[dict], torch.Tensor]:
    """Shards of a random full table, as K ranks would save them."""
    full = torch.randn(num_samples, len(COLUMNS), generator=torch.Generator().manual_seed(num_samples))
    shards = []
    for rank in range(world_size):
        state = SampleState(num_samples, COLUMNS, layout, rank=rank, world_size=world_size)
        state.table.copy_(full[state.start : state.stop])
        shards.append(state.state_dict())
    return shards, full


def test_shard_bounds_cover_the_key_space() -> None:
    assert [shard_bounds(10, 3, r) for r in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert [shard_bounds(2, 4, r) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert state_bytes_per_rank(10, 2, 3, "sharded") == 4 * 2 * 4
    assert state_bytes_per_rank(10, 2, 3, "replicated") == 10 * 2 * 4


def test_initial_values() -> None:
    state = SampleState(7, COLUMNS, rank=1, world_size=2)
    assert (state.start, state.stop) == (4, 7)
    assert torch.isneginf(state.table[:, 0]).all() and (state.table[:, 1] == 0.03).all()


def test_repartition_2_to_1_to_2_is_lossless() -> None:
    shards2, full = filled_shards(11, 2)
    shards1 = repartition_shards(shards2, 1)
    assert len(shards1) == 1 and torch.equal(shards1[0]["table"], full)
    back = repartition_shards(shards1, 2)
    for old, new in zip(shards2, back, strict=True):
        assert torch.equal(old["table"], new["table"]) and (old["start"], old["stop"]) == (new["start"], new["stop"])
    # and load into live states of the new world size
    state = SampleState(11, COLUMNS, rank=1, world_size=2)
    state.load_state_dict(back[1])
    assert torch.equal(state.table, full[6:])


def test_repartition_uneven_and_layout_change() -> None:
    shards3, full = filled_shards(10, 3)
    assert torch.equal(merge_shards(list(reversed(shards3))), full)  # any order
    assert torch.equal(merge_shards(repartition_shards(shards3, 4)), full)
    replicated = repartition_shards(shards3, 2, layout="replicated")
    assert all(torch.equal(s["table"], full) for s in replicated)
    assert torch.equal(merge_shards(repartition_shards(replicated, 3, layout="sharded")), full)


def test_load_and_merge_reject_mismatches() -> None:
    shards2, _ = filled_shards(11, 2)
    with pytest.raises(ValueError, match="repartition_shards"):
        SampleState(11, COLUMNS, rank=0, world_size=1).load_state_dict(shards2[0])
    with pytest.raises(ValueError, match="num_samples"):
        SampleState(12, COLUMNS, rank=0, world_size=2).load_state_dict(shards2[0])
    with pytest.raises(ValueError, match="one shard per rank"):
        merge_shards(shards2[:1])


def test_last_occurrence_and_key_checks() -> None:
    keys = torch.tensor([4, 2, 4, 9, 2, 4])
    assert last_occurrence(keys).tolist() == [False, False, False, True, True, True]
    state = SampleState(10, COLUMNS, rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        state.fetch(torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="int64"):
        state.fetch(torch.tensor([3, 1], dtype=torch.int32))
