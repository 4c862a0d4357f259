"""CLIP models: named configs, towers, FLIP masking.

The towers (`CLIP`, `create_model`) and FLIP masking load on first use: importing torch and timm costs seconds,
and a recipe reads and checks its config (which needs only the named configs) before any of them, so a config
error is reported that much sooner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from model.configs import MODEL_CONFIGS, CLIPConfig, TextConfig, VisionConfig, get_model_config

if TYPE_CHECKING:
    from model.clip import CLIP
    from model.masking import FlipMasking, num_kept

_ON_FIRST_USE = {"CLIP": "model.clip", "FlipMasking": "model.masking", "num_kept": "model.masking"}


def create_model(name: str, **overrides: object) -> CLIP:
    """Build a named CLIP (`ViT-B-32`, `ViT-B-16`, `ViT-L-14`, `ViT-H-14`, `tiny`, `demo`)."""
    from model.clip import CLIP  # noqa: PLC0415 (timm loads on first use)

    return CLIP(get_model_config(name, **overrides))


def __getattr__(name: str) -> Any:
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")


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
