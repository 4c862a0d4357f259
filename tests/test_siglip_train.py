"""A SigLIP run end to end on 2 gloo ranks: the bias trains in fp32 outside the backend, is checkpointed,
and export to open_clip keeps it (open_clip builds its `logit_bias` from `init_logit_bias`); export to
Hugging Face refuses, since CLIPModel has no bias."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config
from tools.export import export

pytestmark = pytest.mark.slow
GLOBAL_BATCH, STEPS = 8, 3


def _train(rank: int, world_size: int, out_dir: str, backend: str) -> dict:
    from train.trainer import Trainer

    cfg = tiny_config(
        out_dir, backend, batch_size=GLOBAL_BATCH // world_size, name="siglip", version=None, lr_tau=None, rho=8.0
    )
    trainer = Trainer(cfg, FixedBatches(GLOBAL_BATCH, rank, world_size, STEPS))
    result = trainer.fit()
    return {
        "losses": result["losses"],
        "bias": trainer.temperature.logit_bias.clone(),
        "scale": trainer.temperature.logit_scale.clone(),
    }


@pytest.mark.parametrize("backend", ["ddp", "deepspeed:zero3", "fsdp2"])
def test_siglip_trains_checkpoints_and_exports_the_bias(backend: str, tmp_path: Path) -> None:
    import open_clip

    ranks = run_on_ranks(_train, 2, (str(tmp_path / "run"), backend), timeout=900)
    bias = ranks[0]["bias"]
    assert torch.equal(bias, ranks[1]["bias"]) and bias.item() != -10.0  # replicated, and it moved
    assert all(math.isfinite(v) for v in ranks[0]["losses"])
    checkpoint = tmp_path / "run" / "checkpoints" / "latest"
    folder = export(checkpoint, "open_clip", tmp_path / "open_clip")
    model = open_clip.create_model(f"local-dir:{folder}")
    assert torch.equal(model.logit_bias.detach().reshape(1), bias)
    assert torch.equal(model.logit_scale.detach().reshape(1), ranks[0]["scale"])
    with pytest.raises(ValueError, match="no logit bias"):
        export(checkpoint, "hf", tmp_path / "hf")
