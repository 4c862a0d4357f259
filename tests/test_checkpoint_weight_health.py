"""A blown-up checkpoint is not called healthy: resuming a run at a far too high optim.lr (the probe used 1000) writes
checkpoints whose largest |weight| jumped far past the last healthy one's; they are unhealthy although their
loss is finite, the last healthy checkpoint survives pruning, and the run's advice names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ranks import run_on_ranks
from tests.tiny_run import tiny_config
from train.checkpoint.files import last_healthy

pytestmark = pytest.mark.slow


def _run(
    rank: int,
    world_size: int,
    out_dir: str,
    shards: str,
    lr: float,
    steps: int,
    resume: str | None,
    weight_factor: float = 10.0,
) -> str:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, "ddp", batch_size=4)
    cfg.data.path, cfg.data.workers = shards, 0
    cfg.epochs, cfg.max_steps = 1, steps
    cfg.optim.lr, cfg.optim.warmup_steps = lr, 0
    cfg.checkpoint.every_steps, cfg.checkpoint.keep_last, cfg.checkpoint.resume = 1, 1, resume
    cfg.checkpoint.allow_changes = ["optim.lr", "optim.warmup_steps", "max_steps"]
    cfg.checkpoint.healthy_weight_factor = weight_factor
    try:
        with Trainer(cfg) as trainer:
            return f"done at step {trainer.fit()['steps']}; advice: {trainer.checkpoints.resume_advice()}"
    except Exception as err:  # noqa: BLE001 - the test reads how the run ended
        return f"{type(err).__name__}: {err}"


def test_a_weight_jump_is_unhealthy_and_the_last_healthy_checkpoint_is_kept(shards: str, tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    assert run_on_ranks(_run, 1, (str(tmp_path), shards, 1e-3, 4, None)) == [
        f"done at step 4; advice: the last healthy checkpoint is {root / 'step_00000004'}: resume with "
        f"checkpoint.resume={root / 'step_00000004'}"
    ]
    before = json.loads((root / "step_00000004" / "meta.json").read_text())["health"]
    assert before["healthy"] and 0 < before["max_abs_weight"] < 10
    # lr 20 multiplies the largest weight by ~4 while every loss stays finite (1000, as the probe used, also makes
    # the loss non-finite at once, which the loss rule already catches); a factor of 3 calls that unhealthy.
    ended = run_on_ranks(_run, 1, (str(tmp_path), shards, 20.0, 8, "latest", 3.0))[0]
    after = [json.loads((p / "meta.json").read_text())["health"] for p in sorted(root.glob("step_*"))[1:]]
    assert [p.name for p in sorted(root.glob("step_*"))] == ["step_00000004", "step_00000008"]
    assert after, ended
    first = after[0]
    assert first["recent_loss"] is not None and first["max_abs_weight"] > 3 * before["max_abs_weight"], first
    assert not first["healthy"] and first["reason"].startswith("largest |weight| "), first
    assert "step_00000004" in first["reason"]
    assert last_healthy(root) == root / "step_00000004"  # kept by pruning (keep_last=1)
    assert str(root / "step_00000004") in ended, ended


def test_the_weight_health_reads_trainable_parameters_only() -> None:
    """Frozen parameters (logit_scale 2.66, SigLIP's frozen logit_bias -10) are no sign of a blow-up; bf16 shards
    are compared in fp32."""
    from types import SimpleNamespace

    import torch

    from model import create_model
    from train.backends.base import Backend
    from train.trainer import Trainer

    model = create_model("tiny", init_logit_bias=-10.0)
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith("logit_"))
    trainable = max(float(p.detach().abs().max()) for p in model.parameters() if p.requires_grad)
    assert trainable < 10.0 == float(model.logit_bias.abs())  # the frozen bias is the largest weight
    backend = SimpleNamespace(raw_model=model, local_shards=lambda: Backend.local_shards(backend))
    fake = SimpleNamespace(backend=backend)
    assert Trainer._max_abs_weight(fake) == trainable
    model.to(torch.bfloat16)
    assert Trainer._max_abs_weight(fake) == pytest.approx(trainable, rel=1e-2)
