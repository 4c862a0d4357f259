"""CLIP models: named configs, towers, FLIP masking."""

from __future__ import annotations

from model.clip import CLIP
from model.configs import MODEL_CONFIGS, CLIPConfig, TextConfig, VisionConfig, get_model_config
from model.masking import FlipMasking, num_kept


def create_model(name: str, **overrides: object) -> CLIP:
    """Build a named CLIP (`ViT-B-32`, `ViT-B-16`, `ViT-L-14`, `ViT-H-14`, `tiny`, `demo`)."""
    return CLIP(get_model_config(name, **overrides))


__all__ = [
    "CLIP",
    "MODEL_CONFIGS",
    "CLIPConfig",
    "FlipMasking",
    "TextConfig",
    "VisionConfig",
    "create_model",
    "get_model_config",
    "num_kept",
]
