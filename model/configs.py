"""Named CLIP model configs (open_clip dimensions) in one registry."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class VisionConfig:
    """Vision tower shape: a ViT laid out like OpenAI CLIP's."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    in_chans: int = 3

    def __post_init__(self) -> None:
        """A patch grid must cover the image exactly: a remainder would be cropped away without a word."""
        size, patch = self.image_size, self.patch_size
        if size % patch:
            below, above = size - size % patch, size - size % patch + patch
            patches = [p for p in range(2, size // 2 + 1) if size % p == 0]
            raise ValueError(
                f"image size {size} is not a multiple of the patch size {patch} ({size // patch}x{size // patch} "
                f"patches would drop {size % patch} pixel(s) of each row and column); use image size {below} or "
                f"{above} (data.image_size and model.overrides.vision_image_size) or a patch size that divides {size}"
                f" (model.overrides.vision_patch_size: {', '.join(map(str, patches)) or 'none'})"
            )

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextConfig:
    """Text tower shape: causal CLIP transformer with EOT pooling."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP model: both towers, joint embedding size and activation."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False
    init_logit_scale: float = 2.6592600369262695  # log(1 / 0.07)
    init_logit_bias: float | None = None  # SigLIP's learnable bias (open_clip's field); None = no bias


MODEL_CONFIGS: dict[str, CLIPConfig] = {
    "ViT-B-32": CLIPConfig(
        embed_dim=512,
        vision=VisionConfig(patch_size=32, width=768, layers=12),
        text=TextConfig(width=512, heads=8, layers=12),
    ),
    "ViT-B-16": CLIPConfig(
        embed_dim=512,
        vision=VisionConfig(patch_size=16, width=768, layers=12),
        text=TextConfig(width=512, heads=8, layers=12),
    ),
    "ViT-L-14": CLIPConfig(
        embed_dim=768,
        vision=VisionConfig(patch_size=14, width=1024, layers=24),
        text=TextConfig(width=768, heads=12, layers=12),
    ),
    "ViT-H-14": CLIPConfig(
        embed_dim=1024,
        vision=VisionConfig(patch_size=14, width=1280, layers=32, head_width=80),
        text=TextConfig(width=1024, heads=16, layers=24),
    ),
    # Tiny configs for tests and the CPU demo (Fashion-MNIST at its native 28 px, patch 7 -> 16 patches;
    # captions are short, so the demo's text context is 16 tokens).
    "tiny": CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        text=TextConfig(width=64, heads=2, layers=2),
    ),
    "demo": CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=28, patch_size=7, width=128, layers=4, head_width=32),
        text=TextConfig(context_length=16, width=128, heads=4, layers=2),
    ),
}


def get_model_config(name: str, **overrides: object) -> CLIPConfig:
    """Look up a named config; `overrides` replace top-level fields or `vision_*`/`text_*` fields."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_CONFIGS))}")
    cfg = MODEL_CONFIGS[name]
    top: dict[str, object] = {}
    vision: dict[str, object] = {}
    text: dict[str, object] = {}
    for key, value in overrides.items():
        if key.startswith("vision_") and hasattr(cfg.vision, key[7:]):
            vision[key[7:]] = value
        elif key.startswith("text_") and hasattr(cfg.text, key[5:]):
            text[key[5:]] = value
        elif key in CLIPConfig.__dataclass_fields__ and key not in ("vision", "text"):
            top[key] = value
        else:
            raise KeyError(f"unknown model override {key!r} for model {name!r}")
    return replace(cfg, vision=replace(cfg.vision, **vision), text=replace(cfg.text, **text), **top)
