"""The temperature is trained and used in fp32 on every backend, DeepSpeed bf16 included.

Under DeepSpeed bf16 the engine holds bf16 weights; a logit_scale inside the model would reach the
loss in bf16 and move tau in 1.6% jumps. The trainer's GlobalTemperature keeps it out of the engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config

STEPS = 20


class RecordingLoss:
    """The trainer's loss, recording the logit_scale tensor each call receives."""

    def __init__(self, loss: Any) -> None:
        self.loss, self.received = loss, []

    def __call__(self, image_features, text_features, index, logit_scale, logit_bias=None):  # noqa: ANN001, ANN204
        self.received.append(logit_scale)
        return self.loss(image_features, text_features, index, logit_scale, logit_bias)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loss, name)


def _train_bf16(rank: int, world_size: int, out_dir: str, backend: str) -> dict[str, Any]:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, backend)
    cfg.backend = dataclasses.replace(cfg.backend, precision="bf16")
    trainer = Trainer(cfg, FixedBatches(8, rank, world_size, STEPS))
    recording = RecordingLoss(trainer.loss)
    trainer.loss = recording
    try:
        trainer.fit()
        master = trainer.temperature.logit_scale
        return {
            "weight_dtypes": {p.dtype for p in trainer.backend.raw_model.parameters()},
            "received_dtypes": {t.dtype for t in recording.received},
            "received_master": all(t is master for t in recording.received),
            "calls": len(recording.received),
            "tau": float(trainer.temperature.tau),
            "init_tau": 0.07,
        }
    finally:
        trainer.close()


@pytest.mark.slow
def test_deepspeed_bf16_trains_tau_in_fp32_like_ddp(tmp_path) -> None:
    (ds,) = run_on_ranks(_train_bf16, 1, (str(tmp_path / "ds"), "deepspeed:zero2"))
    (ddp,) = run_on_ranks(_train_bf16, 1, (str(tmp_path / "ddp"), "ddp"))
    assert torch.bfloat16 in ds["weight_dtypes"]  # the engine holds bf16 weights, as on CUDA
    assert ds["calls"] == STEPS and ds["received_dtypes"] == {torch.float32} and ds["received_master"]
    assert ddp["received_dtypes"] == {torch.float32}
    assert ds["tau"] != pytest.approx(ds["init_tau"], rel=1e-4)  # tau moved
    assert ds["tau"] == pytest.approx(ddp["tau"], rel=1e-3)
