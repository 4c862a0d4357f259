"""A rank that stalls anywhere in a training step ends the run with CollectiveTimeout naming the step and rank."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config

STEP_TIMEOUT_S, GRACE_S, STALL_S = 1.0, 3.0, 7.0  # the stall outlasts the timeout plus the survivors' grace
STALLED_STEP = 2


class StallingBatches(FixedBatches):
    """Rank 1 stops for STALL_S in step STALLED_STEP: before its batch, or while logging (skip counts)."""

    def __init__(self, where: str, *args: int) -> None:
        super().__init__(*args)
        self.where = where

    def __iter__(self) -> Iterator[dict]:
        for batch in super().__iter__():
            if self.where == "loader" and self._stalls_now():
                time.sleep(STALL_S)
            yield batch

    def skipped_counts(self) -> dict[str, int]:
        if self.where == "logging" and self._stalls_now():
            time.sleep(STALL_S)
        return {}

    def _stalls_now(self) -> bool:  # position counts the batches taken, step STALLED_STEP's included
        return self.rank == 1 and self.position == STALLED_STEP


def _train(rank: int, world_size: int, out_dir: str, where: str) -> str:
    import train.faults.timeouts
    from train.trainer import Trainer

    train.faults.timeouts._REPORT_GRACE_S = GRACE_S
    cfg = tiny_config(out_dir, batch_size=4)
    cfg.backend.step_timeout_s = STEP_TIMEOUT_S
    trainer = Trainer(cfg, StallingBatches(where, 8, rank, world_size, 5))
    try:
        trainer.fit()
        return "finished"
    except RuntimeError as err:
        return f"{type(err).__name__}: {err}"
    finally:
        trainer.close(completed=False)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["loader", "logging"])
def test_a_stalled_rank_is_named_with_the_step(where: str, tmp_path) -> None:
    waiting, _ = run_on_ranks(_train, 2, (str(tmp_path), where), timeout=120)
    assert waiting.startswith("CollectiveTimeout: rank 0: a collective during training step 2 "), waiting
    assert "rank(s) 1 did not answer" in waiting, waiting
