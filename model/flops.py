"""Training FLOPs of one sample, from the model config alone (for `perf/mfu`).

Counts the matrix multiplies (2 FLOPs per multiply-add) of both towers' forward at a FLIP mask
ratio, times 3 for forward + backward (activation recomputation is not counted: MFU measures
useful model FLOPs). Norms, softmax and activations are left out, as in PaLM's MFU.
"""

from __future__ import annotations

from model.configs import CLIPConfig
from model.masking import num_kept


def _tokens(cfg: CLIPConfig, mask_ratio: float) -> tuple[int, int]:
    """(image tokens: kept patches + the class token, text tokens)."""
    return num_kept(cfg.vision.num_patches, mask_ratio) + 1, cfg.text.context_length


def _projection_flops(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
    """Forward FLOPs of the dense layers of `layers` blocks: qkv + out projections, fc1 + fc2."""
    return 2.0 * layers * tokens * (4 * width * width + 2 * width * int(width * mlp_ratio))


def attention_flops(cfg: CLIPConfig, mask_ratio: float = 0.0) -> float:
    """Forward FLOPs of q @ k^T and attn @ v in both towers (full matrices, also for the causal text)."""
    image, text = _tokens(cfg, mask_ratio)
    v, t = cfg.vision, cfg.text
    return 4.0 * (v.layers * image * image * v.width + t.layers * text * text * t.width)


def forward_flops_per_sample(cfg: CLIPConfig, mask_ratio: float = 0.0) -> float:
    """FLOPs of one image-text pair's forward at `mask_ratio`."""
    v, t = cfg.vision, cfg.text
    image, text = _tokens(cfg, mask_ratio)
    patch_embed = 2.0 * v.num_patches * v.in_chans * v.patch_size**2 * v.width
    vision = patch_embed + _projection_flops(image, v.width, v.layers, v.mlp_ratio) + 2.0 * v.width * cfg.embed_dim
    text_tower = _projection_flops(text, t.width, t.layers, t.mlp_ratio) + 2.0 * t.width * cfg.embed_dim
    return vision + text_tower + attention_flops(cfg, mask_ratio)


def train_flops_per_sample(cfg: CLIPConfig, mask_ratio: float = 0.0) -> float:
    """Forward + backward FLOPs of one pair (3x the forward)."""
    return 3.0 * forward_flops_per_sample(cfg, mask_ratio)
