"""Training FLOPs of one sample, from the model config alone (for `perf/mfu`).

Counts the matrix multiplies (2 FLOPs per multiply-add) of both towers' forward at a FLIP mask
ratio, times 3 for forward + backward (activation recomputation is not counted: MFU measures
useful model FLOPs). Norms, softmax and activations are left out, as in PaLM's MFU.
"""

from __future__ import annotations

from model.configs import CLIPConfig
from model.masking import num_kept


def _transformer_flops(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
    """Forward FLOPs of `layers` pre-norm blocks on `tokens` tokens (full, non-causal-skipping attention)."""
    projections = 4 * width * width + 2 * width * int(width * mlp_ratio)  # qkv + out, fc1 + fc2
    attention = 2 * tokens * width  # q @ k^T and attn @ v, per token
    return 2.0 * layers * tokens * (projections + attention)


def forward_flops_per_sample(cfg: CLIPConfig, mask_ratio: float = 0.0) -> float:
    """FLOPs of one image-text pair's forward at `mask_ratio`."""
    v, t = cfg.vision, cfg.text
    patches = v.num_patches
    patch_embed = 2.0 * patches * v.in_chans * v.patch_size**2 * v.width
    tokens = num_kept(patches, mask_ratio) + 1  # kept patches + the class token
    vision = patch_embed + _transformer_flops(tokens, v.width, v.layers, v.mlp_ratio) + 2.0 * v.width * cfg.embed_dim
    text = _transformer_flops(t.context_length, t.width, t.layers, t.mlp_ratio) + 2.0 * t.width * cfg.embed_dim
    return vision + text


def train_flops_per_sample(cfg: CLIPConfig, mask_ratio: float = 0.0) -> float:
    """Forward + backward FLOPs of one pair (3x the forward)."""
    return 3.0 * forward_flops_per_sample(cfg, mask_ratio)
