"""Checkpoints on a cluster: full disks, non-finite weights, pruning, and `latest` decided by rank 0."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.ranks import run_on_ranks
from train.checkpoint.files import (
    CheckpointWriteError,
    CheckpointWriter,
    NonFiniteCheckpointError,
    checkpoint_name,
    resolve_resume,
    resolve_resume_on_main,
)


def _writer(root: Path, keep_last: int = 2) -> CheckpointWriter:
    return CheckpointWriter(root, keep_last=keep_last, rank=0, barrier=lambda: None)


def _save(writer: CheckpointWriter, step: int, **kwargs) -> Path:
    return writer.save(step, lambda d: (d / "model.pt").write_bytes(b"w" * 10), {"step": step}, **kwargs)


def test_full_disk_names_directory_and_free_space_and_removes_partial_dir(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    _save(writer, 1)

    def disk_full(directory: Path) -> None:
        (directory / "model.pt").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "optimizer.pt"))

    with pytest.raises(CheckpointWriteError) as info:
        writer.save(2, disk_full, {"step": 2})
    message = str(info.value)
    assert "No space left on device" in message and str(tmp_path) in message
    assert "GiB free of" in message and "still names step_00000001" in message
    assert not list(tmp_path.glob(".tmp-*"))  # the partial directory does not keep filling the disk
    assert resolve_resume(tmp_path, "latest") == tmp_path / checkpoint_name(1)


def test_opaque_stream_error_still_names_directory_and_free_space(tmp_path: Path) -> None:
    def torch_save_error(directory: Path) -> None:  # what torch.save raises on a full disk
        raise RuntimeError("basic_ios::clear: iostream error")

    with pytest.raises(CheckpointWriteError, match=r"basic_ios::clear.*GiB free of .*no checkpoint"):
        _writer(tmp_path).save(1, torch_save_error, {"step": 1})
    assert not list(tmp_path.iterdir())


def test_non_finite_weights_are_never_published_nor_prune_finite_ones(tmp_path: Path) -> None:
    writer = _writer(tmp_path, keep_last=2)
    for step in (1, 2):
        _save(writer, step)
    for step in (3, 4, 5):  # a diverged run keeps trying to save (the probe: NaN checkpoints pruned finite ones)
        with pytest.raises(NonFiniteCheckpointError, match=f"step_0+{step}.*NaN or inf.*still names step_0+2"):
            _save(writer, step, weights_finite=lambda: False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001", "step_00000002"]


def _resolve_missing(rank: int, world_size: int, root: str) -> str:
    try:
        resolve_resume_on_main(Path(root), str(Path(root) / "nope"))
    except FileNotFoundError as err:
        return str(err)
    return "no error"


@pytest.mark.slow
def test_rank0_resolves_latest_and_every_rank_gets_its_answer(tmp_path: Path) -> None:
    for rank_dir in ("a", "b"):
        writer = _writer(tmp_path / rank_dir)
        _save(writer, 3)
    # Rank 0 reads `a`; rank 1 is pointed at `b` whose pointer it corrupts: it must still resume rank 0's answer.
    names = run_on_ranks(_resolve_on_views, 2, (str(tmp_path),), init_group=True, timeout=120)
    assert names == ["step_00000003", "step_00000003"]
    errors = run_on_ranks(_resolve_missing, 2, (str(tmp_path / "a"),), init_group=True, timeout=120)
    assert all("is not a complete checkpoint" in e for e in errors)


def _resolve_on_views(rank: int, world_size: int, root: str) -> str | None:
    view = Path(root) / ("a" if rank == 0 else "b")
    if rank == 1:
        (view / "latest").write_text("step_00000099")  # a stale / racing view of the shared directory
    path = resolve_resume_on_main(view, "latest")
    return None if path is None else path.name
