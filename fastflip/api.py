"""Use a trained model from Python: load a checkpoint or an export, embed images and texts, score them.

    from fastflip import load_clip
    clip = load_clip("runs/x/checkpoints/latest")       # or a step_* dir, the run dir, an open_clip or HF export
    images = clip.embed_images(["cat.jpg", PIL.Image.open("dog.png")])   # [2, D], unit length
    texts = clip.embed_texts(["a photo of a cat", "a photo of a dog"])  # [2, D], unit length
    probs = clip.logits(images, texts).softmax(dim=-1)                # each image over the texts

Images get the evaluation preprocessing (shortest side to the model's size, bicubic, center crop, CLIP mean and
std: data.transforms.eval_transform), texts our CLIP tokenizer, as in training and tools/evaluate.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from data.tokenizer import get_tokenizer
from data.transforms import eval_transform
from model import CLIP, CLIPConfig, TextConfig, VisionConfig

ImageInput = Image.Image | str | Path


class Clip:
    """A CLIP in eval mode on `device` with its preprocessing; embeddings come back as float32 CPU tensors."""

    def __init__(self, model: CLIP, source: str, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.source = source  # the checkpoint or export folder it was loaded from
        self.transform = eval_transform(model.config.vision.image_size)
        self.tokenizer = get_tokenizer(model.config.text.context_length)

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 64) -> torch.Tensor:
        """Unit-length image embeddings [N, D] of PIL images or image files."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = [self.transform(_open(i)) for i in images[start : start + batch_size]]
            out.append(self.model.encode_image(torch.stack(batch).to(self.device), normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.embed_dim)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unit-length text embeddings [N, D]."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            out.append(self.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.embed_dim)

    @torch.no_grad()
    def logits(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[N_images, N_texts] logits as the model was trained: exp(logit_scale) x cosine (+ SigLIP's bias)."""
        logits = self.model.logit_scale.detach().float().cpu().exp() * image_embeddings @ text_embeddings.T
        bias = getattr(self.model, "logit_bias", None)
        return logits + bias.detach().float().cpu() if bias is not None else logits


def _open(image: ImageInput) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.open(image)


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> Clip:
    """A trained CLIP from a checkpoint of any backend (a step_* directory, a run's checkpoints/, its `latest` or the
    run directory) or from an export folder (`tools/export.py --to open_clip` or `--to hf`)."""
    folder = Path(path)
    if (folder / "open_clip_config.json").is_file():
        return Clip(_from_open_clip(folder), str(folder), device)
    if (folder / "config.json").is_file() and not (folder / "meta.json").is_file():
        return Clip(_from_hf(folder), str(folder), device)
    from train.checkpoint.consolidate import load_model  # any backend's checkpoint, consolidated on the CPU

    model, meta = load_model(folder)
    return Clip(model, f"{folder} (step {meta['step']})", device)


def _from_open_clip(folder: Path) -> CLIP:
    from model.convert_open_clip import from_open_clip, load_open_clip_state

    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    config = CLIPConfig(
        embed_dim=cfg["embed_dim"],
        quick_gelu=cfg.get("quick_gelu", False),
        init_logit_bias=cfg.get("init_logit_bias"),
        vision=VisionConfig(
            image_size=_int(v["image_size"]),
            patch_size=_int(v["patch_size"]),
            width=v["width"],
            layers=v["layers"],
            head_width=v.get("head_width", 64),
            mlp_ratio=v.get("mlp_ratio", 4.0),
        ),
        text=TextConfig(
            context_length=t["context_length"],
            vocab_size=t["vocab_size"],
            width=t["width"],
            heads=t["heads"],
            layers=t["layers"],
            mlp_ratio=t.get("mlp_ratio", 4.0),
        ),
    )
    return _with_state(config, lambda template: from_open_clip(load_open_clip_state(folder), template))


def _from_hf(folder: Path) -> CLIP:
    from model.convert_hf import from_hf, load_hf_state

    cfg = json.loads((folder / "config.json").read_text())
    v, t = cfg["vision_config"], cfg["text_config"]
    config = CLIPConfig(
        embed_dim=cfg["projection_dim"],
        quick_gelu=v.get("hidden_act") == "quick_gelu",
        vision=VisionConfig(
            image_size=v["image_size"],
            patch_size=v["patch_size"],
            width=v["hidden_size"],
            layers=v["num_hidden_layers"],
            head_width=v["hidden_size"] // v["num_attention_heads"],
            mlp_ratio=v["intermediate_size"] / v["hidden_size"],
            in_chans=v.get("num_channels", 3),
        ),
        text=TextConfig(
            context_length=t["max_position_embeddings"],
            vocab_size=t["vocab_size"],
            width=t["hidden_size"],
            heads=t["num_attention_heads"],
            layers=t["num_hidden_layers"],
            mlp_ratio=t["intermediate_size"] / t["hidden_size"],
        ),
    )
    return _with_state(config, lambda template: from_hf(load_hf_state(folder), template))


def _with_state(config: CLIPConfig, convert) -> CLIP:  # noqa: ANN001 (template -> our state dict)
    model = CLIP(config)
    model.load_state_dict(convert(model.state_dict()), strict=True)
    return model


def _int(value: int | list[int]) -> int:
    """open_clip writes some sizes as [n, n]."""
    return value[0] if isinstance(value, list) else value
