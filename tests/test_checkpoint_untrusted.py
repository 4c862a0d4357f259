"""A checkpoint from elsewhere cannot run code: every file of it loads with weights_only=True.

The probe's attack: replace one file of a real checkpoint with a pickle whose payload runs on load, and rewrite
meta.json's checksums so the checkpoint looks intact (whoever writes a checkpoint writes its checksums too).
Resuming must refuse that file by name, and the payload must never run.
"""

from __future__ import annotations

import dataclasses
import io
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
    "deepspeed:zero2": (
        "deepspeed/state/mp_rank_00_model_states.pt",
        "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ),
}


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


def _plant_dcp_bytes(checkpoint: Path, key: str | None, marker: Path) -> str:
    """Append a payload to `dcp/__0_0.distcp` and point a bytes item of `.metadata` at it: an existing one
    (the optimizer's param_groups) when `key` is None, else model key `key` re-declared as bytes. The
    `.metadata` itself holds only DCP's own classes, and meta.json's checksums vouch for both files."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    from train.checkpoint.trusted import _MetadataUnpickler

    dcp_dir = checkpoint / "dcp"
    with (dcp_dir / ".metadata").open("rb") as file:
        metadata = _MetadataUnpickler(file).load()
    if key is None:
        key = next(k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    else:
        metadata.state_dict_metadata[key] = BytesStorageMetadata()
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    distcp = dcp_dir / "__0_0.distcp"
    offset = distcp.stat().st_size
    with distcp.open("ab") as file:
        file.write(buffer.getvalue())
    template = next(iter(metadata.storage_data.values()))
    for index in [i for i in metadata.storage_data if i.fqn == key]:
        del metadata.storage_data[index]
    metadata.storage_data[MetadataIndex(key)] = dataclasses.replace(
        template, relative_path=distcp.name, offset=offset, length=len(buffer.getvalue())
    )
    (dcp_dir / ".metadata").write_bytes(pickle.dumps(metadata))
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"] = file_records(checkpoint)
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    assert damage(checkpoint) is None
    return key


def test_a_payload_in_fsdp2_bytes_items_never_runs(shards: str, tmp_path: Path) -> None:
    """FSDP2's `.distcp` files hold pickled non-tensor items (param_groups), and a `.metadata` may declare any
    key as such an item: resuming, exporting and load_clip read them as data only."""
    from torch.distributed.checkpoint.api import CheckpointException

    from fastflip import load_clip
    from tools.export import export

    clean = tmp_path / "clean"
    assert run_on_ranks(_train, 1, (str(clean), shards, "fsdp2")) == [2]
    optim_run, model_run = tmp_path / "optim", tmp_path / "model"
    for run in (optim_run, model_run):
        shutil.copytree(clean, run)
    optim_key = _plant_dcp_bytes(optim_run / "checkpoints" / "step_00000002", None, tmp_path / "PWNED-optim")
    assert optim_key.startswith("optim."), optim_key
    checkpoint = model_run / "checkpoints" / "step_00000002"
    _plant_dcp_bytes(checkpoint, "model.logit_scale", tmp_path / "PWNED-model")

    answer = run_on_ranks(_resume_each, 1, ([str(optim_run)], shards, "fsdp2"))[0][0]
    assert not (tmp_path / "PWNED-optim").exists(), "resume ran the optimizer item's payload"
    assert answer.startswith("CheckpointDamaged: ") and "weights_only" in answer.lower(), answer
    for load in (lambda: export(checkpoint, "open_clip", tmp_path / "export"), lambda: load_clip(checkpoint)):
        with pytest.raises(CheckpointException) as refused:  # DCP wraps the UnpicklingError per rank
            load()
        assert "posix.system" in str(refused.value), refused.value  # the refusal names the global
        assert not (tmp_path / "PWNED-model").exists(), "consolidation ran the model item's payload"


@pytest.mark.parametrize(
    ("backend", "part"), [("ddp", "model.pt"), *(("deepspeed:zero2", p) for p in BACKEND_FILES["deepspeed:zero2"])]
)
def test_a_payload_in_a_checkpoint_never_runs_on_export(backend: str, part: str, shards: str, tmp_path: Path) -> None:
    """Consolidation (DeepSpeed's zero_to_fp32 loads with weights_only=False) reads data only."""
    from tools.export import export

    run, marker = tmp_path / "run", tmp_path / "PWNED"
    assert run_on_ranks(_train, 1, (str(run), shards, backend)) == [2]
    _plant(run, part, marker)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        export(run / "checkpoints" / "step_00000002", "open_clip", tmp_path / "export")
    assert not marker.exists(), f"{part}: the payload ran"
    assert torch.load is torch.serialization.load  # the forced weights_only load is undone
