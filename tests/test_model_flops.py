"""perf/mfu's FLOP count equals torch's FlopCounterMode on the real models (which does not count CPU SDPA)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model import create_model, get_model_config
from model.flops import attention_flops, forward_flops_per_sample, train_flops_per_sample


@pytest.mark.parametrize("name", ["tiny", "demo"])
@pytest.mark.parametrize("mask_ratio", [0.0, 0.5, 0.75])
def test_forward_flops_match_flop_counter(name: str, mask_ratio: float) -> None:
    cfg = get_model_config(name)
    model = create_model(name).train()
    model.set_mask_ratio(mask_ratio)
    images = torch.randn(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    tokens = torch.randint(1, 1000, (3, cfg.text.context_length))
    with FlopCounterMode(display=False) as counter:
        model(images, tokens)
    counted = counter.get_total_flops() / 3
    assert counted == pytest.approx(forward_flops_per_sample(cfg, mask_ratio) - attention_flops(cfg, mask_ratio))


def test_masking_halves_vision_work_and_training_is_three_forwards() -> None:
    cfg = get_model_config("ViT-B-16")
    assert train_flops_per_sample(cfg, 0.5) == pytest.approx(3 * forward_flops_per_sample(cfg, 0.5))
    full, half = forward_flops_per_sample(cfg, 0.0), forward_flops_per_sample(cfg, 0.5)
    assert 0.5 < half / full < 0.75  # the text tower is not masked
