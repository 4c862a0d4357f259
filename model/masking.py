"""FLIP patch masking: keep a random subset of patch tokens per sample, during training only."""

from __future__ import annotations

import torch
from torch import nn


def num_kept(num_patches: int, ratio: float) -> int:
    """Patch tokens kept at mask `ratio`: `max(1, int(L * (1 - r)))` as in FLIP and timm."""
    return max(1, int(num_patches * (1.0 - ratio)))


class FlipMasking(nn.Module):
    """Drops patch tokens after position embeddings; prefix (class) tokens are always kept.

    The ratio is a runtime setting (`ratio` attribute) so a schedule can switch to unmasked
    tuning (ratio 0). An optional `generator` makes the choice of kept patches reproducible.
    """

    def __init__(self, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.ratio = 0.0
        self.generator: torch.Generator | None = None

    def set_ratio(self, ratio: float) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
        self.ratio = float(ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.ratio == 0.0:
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        batch, length, width = patches.shape
        keep = num_kept(length, self.ratio)
        noise = torch.rand(batch, length, generator=self.generator, device=self.generator_device(x))
        keep_idx = noise.argsort(dim=1)[:, :keep].to(x.device)
        kept = patches.gather(1, keep_idx.unsqueeze(-1).expand(batch, keep, width))
        return torch.cat([prefix, kept], dim=1)

    def generator_device(self, x: torch.Tensor) -> torch.device:
        return self.generator.device if self.generator is not None else x.device

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, num_prefix_tokens={self.num_prefix_tokens}"
