"""Exact resume after a killed run, resume on a different number of ranks, checkpoint crash safety."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.ranks import die_after_logging, run_on_ranks
from tests.tiny_run import tiny_config
from train.checkpoint.files import CheckpointWriter, is_complete, resolve_resume
from train.losses.sample_state import merge_shards

WORLD, LOCAL_BATCH, KILL_AT, EVERY = 2, 4, 5, 2


def _config(out_dir: str, shards: str, backend: str, world_size: int, resume: str | None):
    cfg = tiny_config(out_dir, backend, batch_size=LOCAL_BATCH * WORLD // world_size)
    cfg.data.path, cfg.data.workers, cfg.data.shuffle_window = shards, 1, 16
    cfg.epochs, cfg.max_steps = 2, 6  # 5 steps per epoch: crosses an epoch boundary (gamma changes)
    cfg.flip.mask_ratio = 0.5
    cfg.flip.tuning_samples, cfg.flip.tuning_lr = 16, 1e-4  # then 2 unmasked tuning steps
    cfg.checkpoint.every_steps, cfg.checkpoint.resume = EVERY, resume
    return cfg


def _run(rank: int, world_size: int, out_dir: str, shards: str, backend: str, kill_at: int, resume: str | None):
    from train.trainer import Trainer

    trainer = Trainer(_config(out_dir, shards, backend, world_size, resume))
    if kill_at:
        die_after_logging(trainer, kill_at)
    first_step = trainer.step
    result = trainer.fit()
    return {
        "first_step": first_step,
        "losses": result["losses"],
        "params": trainer.backend.full_state_dict(),
        "loss": trainer.loss.state_dict(),
    }


def _loaded(rank: int, world_size: int, out_dir: str, shards: str, backend: str, resume: str):
    """What a run resuming from `resume` holds before and after fit() (the plan is complete: no step runs)."""
    from train.trainer import Trainer

    trainer = Trainer(_config(out_dir, shards, backend, world_size, resume))
    state = {"step": trainer.step, "params": trainer.backend.full_state_dict(), "loss": trainer.loss.state_dict()}
    state["losses"] = trainer.fit()["losses"]
    return state


@pytest.fixture(scope="module")
def uninterrupted(shards: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, list]]:
    """Per backend, one uninterrupted 2-rank run (its directory and per-rank results), shared by the tests."""
    runs: dict[str, tuple[Path, list]] = {}

    def run(backend: str) -> tuple[Path, list]:
        if backend not in runs:
            out = tmp_path_factory.mktemp(f"full-{backend.replace(':', '-')}")
            runs[backend] = out, run_on_ranks(_run, WORLD, (str(out), shards, backend, 0, None))
        return runs[backend]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "fsdp2", "deepspeed:zero2"])
def test_killed_run_resumes_exactly(backend: str, shards: str, uninterrupted: Callable, tmp_path: Path) -> None:
    full = uninterrupted(backend)[1][0]
    killed = run_on_ranks(_run, WORLD, (str(tmp_path / "cut"), shards, backend, KILL_AT, None))
    assert killed == [None, None]
    latest = resolve_resume(tmp_path / "cut" / "checkpoints", "latest")
    assert latest is not None and latest.name == f"step_{KILL_AT - KILL_AT % EVERY:08d}"
    resumed = run_on_ranks(_run, WORLD, (str(tmp_path / "cut"), shards, backend, 0, "latest"))[0]
    assert resumed["first_step"] == KILL_AT - KILL_AT % EVERY
    expected = torch.tensor(full["losses"][resumed["first_step"] :])
    got = torch.tensor(resumed["losses"])
    assert len(full["losses"]) == 8 and len(got) == 8 - resumed["first_step"]
    if backend.startswith("deepspeed"):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    else:
        assert torch.equal(got, expected), (got, expected)  # bitwise


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "fsdp2"])
def test_resume_on_fewer_ranks(backend: str, shards: str, uninterrupted: Callable, tmp_path: Path) -> None:
    """The 2-rank run's final checkpoint, loaded on 1 rank, holds the 2-rank run's final weights and state."""
    out, saved = uninterrupted(backend)
    ckpt = resolve_resume(out / "checkpoints", "latest")
    one = run_on_ranks(_loaded, 1, (str(tmp_path / "k1"), shards, backend, str(ckpt)))[0]
    assert one["step"] == 8 and len(saved[0]["losses"]) == 8
    assert one["params"].keys() == saved[0]["params"].keys()
    for name, value in saved[0]["params"].items():
        assert torch.equal(one["params"][name], value), name
    saved_table = merge_shards([s["loss"]["sample_state"] for s in saved])
    assert torch.equal(one["loss"]["sample_state"]["table"], saved_table)
    assert one["loss"]["sample_state"]["world_size"] == 1
    assert one["losses"] == []  # the plan was already complete: nothing retrained


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path, keep_last=2, rank=0, barrier=lambda: None)
    writer.save(1, lambda d: (d / "model.pt").write_bytes(b"one"), {"step": 1})

    def crash(directory: Path) -> None:
        (directory / "model.pt").write_bytes(b"half")
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        writer.save(2, crash, {"step": 2})
    latest = resolve_resume(tmp_path, "latest")
    assert latest == tmp_path / "step_00000001" and is_complete(latest)
    assert (latest / "model.pt").read_bytes() == b"one"
    assert not (tmp_path / "step_00000002").exists()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / ".tmp-step_00000002"))


def test_keep_last_prunes_oldest(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path, keep_last=2, rank=0, barrier=lambda: None)
    for step in (1, 2, 3):
        writer.save(step, lambda d: None, {"step": step})
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002", "step_00000003"]
    assert (tmp_path / "latest").read_text() == "step_00000003"
    assert resolve_resume(tmp_path / "nothing-yet", "latest") is None
