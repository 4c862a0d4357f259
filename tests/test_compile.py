"""model.compile (regional compile of each transformer block): a compiled step equals an eager one, and FLIP's
mask ratios cost one graph each, not a recompile per step."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config

TOL = 1e-5
MASKED_STEPS, TUNING_STEPS = 3, 2  # FLIP 50%, then unmasked tuning: two mask ratios


def _run(rank: int, world_size: int, out_dir: str, compile_blocks: bool) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    from train.trainer import Trainer

    cfg = tiny_config(out_dir)
    cfg.model = dataclasses.replace(cfg.model, compile=compile_blocks)
    cfg.flip = dataclasses.replace(cfg.flip, mask_ratio=0.5, tuning_samples=8 * TUNING_STEPS, tuning_lr=1e-4)
    cfg.max_steps = MASKED_STEPS
    with Trainer(cfg, FixedBatches(8, 0, 1, MASKED_STEPS + TUNING_STEPS)) as trainer:
        losses = trainer.fit()["losses"]
        params = {k: v.detach().clone() for k, v in trainer.backend.raw_model.state_dict().items()}
    return {"losses": losses, "params": params, "graphs": counters["stats"]["unique_graphs"]}


@pytest.mark.slow
def test_compiled_steps_equal_eager_steps_with_one_graph_per_mask_ratio(tmp_path) -> None:
    (eager,) = run_on_ranks(_run, 1, (str(tmp_path / "eager"), False))
    (compiled,) = run_on_ranks(_run, 1, (str(tmp_path / "compiled"), True), timeout=600)
    assert len(compiled["losses"]) == MASKED_STEPS + TUNING_STEPS
    assert max(abs(a - b) for a, b in zip(compiled["losses"], eager["losses"], strict=True)) < TOL
    worst = max((compiled["params"][k] - v).abs().max().item() for k, v in eager["params"].items())
    assert worst < TOL
    # vision block at ratio 0.5, vision block at ratio 0, text block: shared by every block of a tower
    assert compiled["graphs"] == 3
    assert eager["graphs"] == 0


@pytest.mark.slow  # torch.compile: seconds, make test only
def test_compile_blocks_keeps_the_state_dict_keys() -> None:
    from model import create_model

    eager, compiled = create_model("tiny"), create_model("tiny")
    compiled.compile_blocks()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert all(block._compiled_call_impl is not None for block in compiled.blocks())
    assert torch.equal(compiled.logit_scale, eager.logit_scale)
