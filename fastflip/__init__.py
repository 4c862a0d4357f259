"""FastFLIP's public Python API: load a trained CLIP and embed images and texts (fastflip.api)."""

from fastflip.api import Clip, load_clip

__all__ = ["Clip", "load_clip"]
