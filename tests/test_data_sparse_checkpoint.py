"""Checkpoints written before dense rows (per-sample state indexed by source key, no `dataset.rows`):
resumed when the rows equal the integer keys, refused with the reason otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data_fixtures import write_shards
from tests.ranks import run_on_ranks
from tests.tiny_run import tiny_config
from train.checkpoint.files import resolve_resume


def _run(rank: int, world_size: int, out_dir: str, shards: str, resume: str | None) -> int:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, "ddp", batch_size=4)
    cfg.data.path, cfg.data.workers = shards, 0
    cfg.epochs, cfg.max_steps = 1, 2
    cfg.checkpoint.every_steps, cfg.checkpoint.resume = 2, resume
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer.step


def _as_old_checkpoint(out_dir: Path) -> None:
    ckpt = resolve_resume(out_dir / "checkpoints", "latest")
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["dataset"]["rows"] == "dense"
    meta["dataset"] = {"num_samples": meta["dataset"]["num_samples"]}  # as versions before dense rows wrote it
    (ckpt / "meta.json").write_text(json.dumps(meta))


@pytest.mark.slow
@pytest.mark.parametrize("keys_are_rows", [True, False])
def test_old_sparse_key_checkpoint(tmp_path: Path, keys_are_rows: bool) -> None:
    keys = list(range(12)) if keys_are_rows else [3 * i for i in range(12)]
    write_shards(str(tmp_path / "shards"), [6, 6], keys=keys)
    args = (str(tmp_path / "run"), str(tmp_path / "shards"))
    assert run_on_ranks(_run, 1, (*args, None)) == [2]
    _as_old_checkpoint(tmp_path / "run")
    if keys_are_rows:
        assert run_on_ranks(_run, 1, (*args, "latest")) == [2]  # nothing left to train: it resumed at step 2
    else:
        with pytest.raises(Exception, match="indexes its per-sample state by source key"):
            run_on_ranks(_run, 1, (*args, "latest"))
