"""Parameter counts of a CLIPConfig, from its shape alone (no torch, no timm): what `tools/export.py --info` prints
without importing the model code. tests/test_first_hours.py checks them against the built model for every config."""

from __future__ import annotations

from model.configs import CLIPConfig


def _block(width: int, mlp_ratio: float) -> int:
    """One pre-norm transformer block: two LayerNorms, qkv and output projections, a two-layer MLP (all with bias)."""
    hidden = int(width * mlp_ratio)
    attention = (width * 3 * width + 3 * width) + (width * width + width)
    return 2 * 2 * width + attention + 2 * width * hidden + hidden + width


def parameter_counts(cfg: CLIPConfig) -> dict[str, int]:
    """{"visual", "text", "other"} parameter counts (other: the temperature and SigLIP's bias)."""
    v, t = cfg.vision, cfg.text
    grid = (v.image_size // v.patch_size) ** 2
    visual = (
        v.in_chans * v.patch_size**2 * v.width  # bias-free patch embedding (CLIP's conv1)
        + v.width
        + (grid + 1) * v.width  # class token, positions
        + 2 * v.width
        + v.layers * _block(v.width, v.mlp_ratio)
        + 2 * v.width  # norm_pre, blocks, final norm
        + v.width * cfg.embed_dim
    )
    text = (
        t.vocab_size * t.width
        + t.context_length * t.width
        + t.layers * _block(t.width, t.mlp_ratio)
        + 2 * t.width
        + t.width * cfg.embed_dim
    )
    return {"visual": visual, "text": text, "other": 1 + (cfg.init_logit_bias is not None)}
