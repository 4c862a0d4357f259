"""Vision tower: a timm VisionTransformer laid out like OpenAI CLIP's ViT, with FLIP masking."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from model.configs import VisionConfig
from model.masking import FlipMasking


def create_vision_tower(cfg: VisionConfig, embed_dim: int, quick_gelu: bool = False) -> VisionTransformer:
    """timm ViT with `norm_pre`, class token, CLS pooling, final norm and a bias-free projection head.

    The patch embedding has no bias (timm drops it when `pre_norm=True`), matching CLIP's conv1,
    so parameters map 1:1 onto open_clip's and Hugging Face's CLIP vision towers.
    """
    vit = VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=embed_dim,
        global_pool="token",
        embed_dim=cfg.width,
        depth=cfg.layers,
        num_heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        pre_norm=True,
        final_norm=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
        act_layer="quick_gelu" if quick_gelu else "gelu",
    )
    vit.head = nn.Linear(cfg.width, embed_dim, bias=False)
    nn.init.normal_(vit.head.weight, std=cfg.width**-0.5)
    vit.patch_drop = FlipMasking(num_prefix_tokens=vit.num_prefix_tokens)
    return vit


def vision_masking(vit: VisionTransformer) -> FlipMasking:
    """The tower's FLIP masking module (where `set_mask_ratio` writes)."""
    masking = vit.patch_drop
    if not isinstance(masking, FlipMasking):
        raise TypeError("vision tower was not built by create_vision_tower (no FlipMasking)")
    return masking


def encode_patches(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Pooled, projected image embedding [B, embed_dim] (CLS token after the final norm)."""
    return vit.forward_head(vit.forward_features(images))
