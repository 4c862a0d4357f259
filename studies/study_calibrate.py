"""Side-by-side step times of the study's model, to give FLIP arms their unmasked twin's wall-clock budget.

Timed interleaved (b, 2b, 2b masked, b, ...) so that load from other processes hits every setting alike;
the median of each is kept. A step is forward, a contrastive loss, backward and an AdamW step.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from model import create_model

MODEL = {"vision_image_size": 56, "vision_patch_size": 14, "text_context_length": 40}


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: int, mask: float) -> float:
    images = torch.randn(batch, 3, 56, 56)
    tokens = torch.randint(1, 49000, (batch, MODEL["text_context_length"]))
    model.set_mask_ratio(mask)
    start = time.perf_counter()
    img, txt, logit_scale = model(images, tokens)
    logits = logit_scale.exp() * img @ txt.T
    target = torch.arange(batch)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def calibrate(batch: int, repeats: int = 12, threads: int = 1) -> dict:
    """Median seconds per step at b, 2b and 2b with 50% masking (and their ratios to b)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("tiny", **MODEL).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    settings = {"b": (batch, 0.0), "2b": (2 * batch, 0.0), "2b_mask0.5": (2 * batch, 0.5)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for rep in range(repeats + 2):
        for key, (size, mask) in settings.items():
            seconds = _step(model, opt, size, mask)
            if rep >= 2:  # warm-up
                times[key].append(seconds)
    step_s = {k: statistics.median(v) for k, v in times.items()}
    return {
        "step_s": step_s,
        "ratio_to_b": {k: v / step_s["b"] for k, v in step_s.items()},
        "repeats": repeats,
        "threads": threads,
        "batch": batch,
    }
