"""A two-source weighted training run (2 gloo ranks, DDP) killed mid-epoch resumes bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from data.config import SourceSpec
from tests.data_fixtures import write_shards
from tests.ranks import die_after_logging, run_on_ranks
from tests.tiny_run import tiny_config
from train.checkpoint.files import resolve_resume

WORLD, LOCAL_BATCH, KILL_AT, EVERY = 2, 4, 5, 3  # checkpoint at step 3: mid epoch 0 (4 steps)


def _run(rank: int, world_size: int, out_dir: str, shards: str, kill_at: int, resume: str | None):
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, "ddp", batch_size=LOCAL_BATCH)
    cfg.data.path, cfg.data.workers, cfg.data.shuffle_window = "", 1, 16
    cfg.data.sources = [
        SourceSpec(os.path.join(shards, "a"), weight=2.0),
        SourceSpec(os.path.join(shards, "b"), weight=0.5),
    ]
    cfg.epochs, cfg.max_steps = 2, 7  # 20 + 8 samples per epoch: 4 steps of 8 per epoch, crosses an epoch
    cfg.checkpoint.every_steps, cfg.checkpoint.resume = EVERY, resume
    trainer = Trainer(cfg)
    if kill_at:
        die_after_logging(trainer, kill_at)
    first_step = trainer.step
    result = trainer.fit()
    return {"first_step": first_step, "losses": result["losses"], "num_samples": trainer.loader.num_samples}


@pytest.mark.slow
def test_two_source_run_resumes_exactly(tmp_path: Path) -> None:
    write_shards(str(tmp_path / "shards" / "a"), [6, 4])  # 10 samples x 2
    write_shards(str(tmp_path / "shards" / "b"), [5, 6, 5])  # 16 samples x 0.5
    shards = str(tmp_path / "shards")
    full = run_on_ranks(_run, WORLD, (str(tmp_path / "full"), shards, 0, None))[0]
    assert full["num_samples"] == 26 and len(full["losses"]) == 7
    assert run_on_ranks(_run, WORLD, (str(tmp_path / "cut"), shards, KILL_AT, None)) == [None, None]
    latest = resolve_resume(tmp_path / "cut" / "checkpoints", "latest")
    assert latest is not None and latest.name == f"step_{KILL_AT - KILL_AT % EVERY:08d}"
    resumed = run_on_ranks(_run, WORLD, (str(tmp_path / "cut"), shards, 0, "latest"))[0]
    assert resumed["first_step"] == KILL_AT - KILL_AT % EVERY
    got, expected = torch.tensor(resumed["losses"]), torch.tensor(full["losses"][resumed["first_step"] :])
    assert torch.equal(got, expected), (got, expected)  # bitwise
