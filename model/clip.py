"""The CLIP module: two towers, a shared embedding space and a learnable temperature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.configs import CLIPConfig
from model.text import TextTransformer
from model.vision import create_vision_tower, encode_patches, vision_masking


class CLIP(nn.Module):
    """Image and text encoders; `forward` returns normalised features and `logit_scale`.

    The model knows nothing of ranks or losses. `logit_scale` has shape [1] because FSDP2
    cannot shard 0-d parameters.
    """

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual = create_vision_tower(cfg.vision, cfg.embed_dim, cfg.quick_gelu)
        self.text = TextTransformer(cfg.text, cfg.embed_dim, cfg.quick_gelu)
        self.logit_scale = nn.Parameter(torch.full((1,), cfg.init_logit_scale))
        if cfg.init_logit_bias is not None:  # SigLIP: logits are exp(logit_scale) * s + logit_bias
            self.logit_bias = nn.Parameter(torch.full((1,), cfg.init_logit_bias))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = encode_patches(self.visual, images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # A copy made inside forward: under ZeRO-3 the parameter itself is released after forward.
        return (
            self.encode_image(images, normalize=True),
            self.encode_text(tokens, normalize=True),
            self.logit_scale.clone(),
        )

    @property
    def mask_ratio(self) -> float:
        return vision_masking(self.visual).ratio

    def set_mask_ratio(self, ratio: float, generator: torch.Generator | None = None) -> None:
        """FLIP mask ratio for training forwards (0 = unmasked tuning); eval never masks."""
        masking = vision_masking(self.visual)
        masking.set_ratio(ratio)
        masking.generator = generator

    def blocks(self) -> list[nn.Module]:
        """The repeated transformer blocks of both towers: the units a sharding backend wraps (FSDP2)."""
        return [*self.visual.blocks, *self.text.blocks]

    def compile_blocks(self) -> None:
        """Regional compile: each block compiles on its own (seconds, not minutes, and the module tree and
        state-dict keys stay as they are, so every backend wraps it unchanged). `dynamic=False`: one static
        graph per sequence length, i.e. one per FLIP mask ratio, reused by every block of a tower."""
        for block in self.blocks():
            block.compile(dynamic=False)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.visual.set_grad_checkpointing(enabled)
        self.text.grad_checkpointing = enabled
