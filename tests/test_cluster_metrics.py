"""Data-skip counters are summed over ranks before rank 0 logs them (a corrupt sample on rank 1 counts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config


class SkippingBatches(FixedBatches):
    """Rank r reports r + 1 corrupt images (only rank 1's would be lost if rank 0 logged its own)."""

    def skipped_counts(self) -> dict[str, int]:
        return {"corrupt_image": self.rank + 1} | ({"bad_key": 5} if self.rank == 1 else {})


def _train(rank: int, world_size: int, out_dir: str) -> None:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, batch_size=4)
    Trainer(cfg, SkippingBatches(8, rank, world_size, steps=2, image_size=32)).fit()


@pytest.mark.slow
def test_skip_counters_are_summed_over_ranks(tmp_path: Path) -> None:
    run_on_ranks(_train, 2, (str(tmp_path),), timeout=240)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "train/loss" in row]
    assert logged and all(row["data/skipped_corrupt_image"] == 3 for row in logged)  # 1 + 2
    assert all(row["data/skipped_bad_key"] == 5 for row in logged)  # a reason only rank 1 saw
