"""A checkpoint from elsewhere cannot run code: every file of it loads with weights_only=True.

The probe's attack: replace one file of a real checkpoint with a pickle whose payload runs on load, and rewrite
meta.json's checksums so the checkpoint looks intact (whoever writes a checkpoint writes its checksums too).
Resuming must refuse that file by name, and the payload must never run.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tests.ranks import run_on_ranks
from tests.tiny_run import tiny_config
from train.checkpoint.files import damage, file_records
from train.checkpoint.trusted import load_file

pytestmark = pytest.mark.slow

OURS = ("temperature.pt", "loss_rank0.pt", "data_rank0.pt", "rng_rank0.pt")
BACKEND_FILES = {  # each backend's own files of a 1-rank checkpoint
    "ddp": ("model.pt", "optimizer.pt"),
    "fsdp2": ("dcp/.metadata",),  # a plain pickle (DCP's tensors are raw bytes)
    "deepspeed:zero2": ("deepspeed/state/mp_rank_00_model_states.pt",
                        "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"),
}  # fmt: skip


class Payload:
    """Unpickling this runs `touch <marker>` (what an attacker's file would do, with worse commands)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _config(out_dir: str, shards: str, backend: str, resume: str | None):
    cfg = tiny_config(out_dir, backend, batch_size=4)
    cfg.data.path, cfg.data.workers = shards, 0
    cfg.epochs, cfg.max_steps = 1, 2
    cfg.checkpoint.every_steps, cfg.checkpoint.resume = 2, resume
    return cfg


def _train(rank: int, world_size: int, out_dir: str, shards: str, backend: str) -> int:
    from train.trainer import Trainer

    with Trainer(_config(out_dir, shards, backend, None)) as trainer:
        return trainer.fit()["steps"]


def _resume_each(rank: int, world_size: int, runs: list[str], shards: str, backend: str) -> list[str]:
    """Resume each run directory in turn; what each one raised (or 'resumed at step N')."""
    from train.trainer import Trainer

    answers = []
    for out_dir in runs:
        try:
            with Trainer(_config(out_dir, shards, backend, "latest")) as trainer:
                answers.append(f"resumed at step {trainer.step}")
        except Exception as err:  # noqa: BLE001 - the test reads what was raised
            answers.append(f"{type(err).__name__}: {err}")
    return answers


def _plant(run: Path, part: str, marker: Path) -> None:
    """Replace `part` of the run's checkpoint by a payload and record its size and checksum in meta.json."""
    checkpoint = run / "checkpoints" / "step_00000002"
    payload = {"state": Payload(marker), "optimizer": Payload(marker)}
    if part.endswith(".pt"):
        torch.save(payload, checkpoint / part)
    else:
        (checkpoint / part).write_bytes(pickle.dumps(payload))
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"] = file_records(checkpoint)
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    assert damage(checkpoint) is None  # the checksums vouch for the payload


@pytest.mark.parametrize("backend", list(BACKEND_FILES))
def test_a_payload_in_any_checkpoint_part_is_refused_and_never_runs(backend: str, shards: str, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    parts = [*BACKEND_FILES[backend], *(OURS if backend == "ddp" else ())]  # our parts load alike on every backend
    assert run_on_ranks(_train, 1, (str(clean), shards, backend)) == [2]
    for part in parts:
        assert (clean / "checkpoints" / "step_00000002" / part).is_file(), part
    for part in [p for p in parts if p.endswith(".pt") and not p.startswith("deepspeed")]:
        assert load_file(clean / "checkpoints" / "step_00000002" / part) is not None  # real parts load as data
    runs, markers = [], []
    for part in parts:
        name = part.replace("/", "-")
        run, marker = tmp_path / name, tmp_path / f"PWNED-{name}"
        shutil.copytree(clean, run)
        _plant(run, part, marker)
        runs.append(str(run))
        markers.append(marker)
    if backend.startswith("deepspeed"):  # one engine per process
        answers = [run_on_ranks(_resume_each, 1, ([run], shards, backend))[0][0] for run in runs]
    else:
        answers = run_on_ranks(_resume_each, 1, (runs, shards, backend))[0]
    for part, answer, marker in zip(parts, answers, markers, strict=True):
        assert not marker.exists(), f"{part}: the payload ran"
        assert answer.startswith("CheckpointDamaged: "), (part, answer)
        assert "step_00000002 could not be loaded" in answer and "weights_only" in answer.lower(), (part, answer)
        assert "system" in answer, (part, answer)  # the refusal names the global it met
