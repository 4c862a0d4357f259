"""Helpers shared by zero-shot classification and retrieval."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no FLIP masking, no dropout) and no autograd; the caller's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def unit_float(features: torch.Tensor) -> torch.Tensor:
    """Normalise in float32: under bf16 autocast the towers' own normalisation is only ~3 digits exact.

    Non-finite features (a diverged checkpoint) are an error: they would otherwise score a plausible-looking 0%.
    """
    if not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).any(dim=-1).sum())
        raise ValueError(
            f"the model produced NaN / inf features for {bad} of {features.shape[0]} inputs: its weights have "
            "diverged; evaluate an earlier checkpoint"
        )
    return F.normalize(features.float(), dim=-1)


def rank_of_target(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target column: how many other columns score at least as high.

    Ties count against the target and NaN scores beat everything, so a collapsed or diverged model
    (constant or NaN features) scores zero instead of 100%; ranks never depend on column order.
    """
    target_score = scores.gather(1, target[:, None])
    return (~(scores < target_score)).sum(dim=1) - 1


def cat_rows(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Concatenate per-batch rows; a rank without batches contributes an empty tensor."""
    return torch.cat(parts) if parts else torch.empty(0, dtype=dtype)
