"""optim.accum_steps in the trainer on 2 gloo ranks: 2 micro-batches train like the whole batch on each backend
(fp32 losses within 1e-5 relative over 3 steps; the DeepSpeed engine's accumulation boundary included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config

pytestmark = pytest.mark.slow
GLOBAL_BATCH, STEPS = 8, 3


def _train(rank: int, world_size: int, out_dir: str, backend: str, accum_steps: int) -> list[float]:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, backend, batch_size=GLOBAL_BATCH // world_size)
    cfg.optim.accum_steps = accum_steps
    with Trainer(cfg, FixedBatches(GLOBAL_BATCH, rank, world_size, STEPS)) as trainer:
        return trainer.fit()["losses"]


@pytest.mark.parametrize("backend", ["ddp", "deepspeed:zero2", "fsdp2"])
def test_accumulated_run_equals_big_batch_run(backend: str, tmp_path: Path) -> None:
    big, accumulated = (run_on_ranks(_train, 2, (str(tmp_path / f"a{m}"), backend, m), timeout=900)[0] for m in (1, 2))
    assert len(big) == STEPS
    for a, b in zip(accumulated, big, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (accumulated, big)


def _run(rank: int, world_size: int, out_dir: str, stop_at: int, resume: bool) -> list[float]:
    """An accum_steps=2 FLIP run (mask 0.5: the replayed masks and the checkpointed mask generator matter)."""
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, "ddp", batch_size=GLOBAL_BATCH // world_size)
    cfg.optim.accum_steps, cfg.flip.mask_ratio = 2, 0.5
    cfg.checkpoint.resume = "latest" if resume else None
    with Trainer(cfg, FixedBatches(GLOBAL_BATCH, rank, world_size, 4)) as trainer:
        if stop_at:
            trainer.train_steps(stop_at)
            trainer.save_checkpoint()
            return trainer.losses[:stop_at].tolist()
        return trainer.fit()["losses"]


def test_accumulated_run_resumes_exactly(tmp_path: Path) -> None:
    full = run_on_ranks(_run, 2, (str(tmp_path / "full"), 0, False), timeout=900)[0]
    head = run_on_ranks(_run, 2, (str(tmp_path / "cut"), 2, False), timeout=900)[0]
    tail = run_on_ranks(_run, 2, (str(tmp_path / "cut"), 0, True), timeout=900)[0]
    assert head + tail == full  # bitwise
