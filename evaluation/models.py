"""What the suite evaluates: a FastFLIP checkpoint (any backend, consolidated here) or an exported open_clip /
Hugging Face folder, behind clip_benchmark's interface (`encode_image(images)`, `encode_text(tokens)`,
`tokenizer(list[str]) -> tensor`, a PIL -> tensor transform), with an identity that keys cached results."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_CONFIG = "config.json"


@dataclass
class Evaluable:
    model: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    transform: Callable[[Any], torch.Tensor]
    identity: str  # sha256 of what defines the weights (a checkpoint's meta.json, an export's files)
    description: str
    step: int | None = None  # the training step of a checkpoint
    meta: dict | None = None


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def checkpoint_identity(checkpoint: Path) -> str:
    """sha256 of meta.json, which records the size and CRC-32 of every file of the checkpoint."""
    return _sha256([checkpoint / "meta.json"])


def load_checkpoint(path: str | Path) -> Evaluable:
    """A step_* directory, a run's checkpoints/ folder or its `latest` pointer."""
    from data.tokenizer import get_tokenizer
    from data.transforms import eval_transform
    from train.checkpoint.consolidate import load_model
    from train.checkpoint.files import resolve_checkpoint

    checkpoint = resolve_checkpoint(path)
    identity = checkpoint_identity(checkpoint)  # before loading: a checkpoint replaced meanwhile fails loudly
    model, meta = load_model(checkpoint)
    if checkpoint_identity(checkpoint) != identity:
        raise FileNotFoundError(f"{checkpoint} changed while it was loaded (a run rewrote it); evaluate it again")
    return Evaluable(
        model,
        get_tokenizer(model.config.text.context_length),
        eval_transform(model.config.vision.image_size),
        identity,
        f"{checkpoint} (step {meta['step']}, model {meta['config']['model']['name']})",
        meta["step"],
        meta,
    )


def load_open_clip(folder: Path) -> Evaluable:
    """An open_clip hub folder (tools/export.py --to open_clip), with open_clip's own preprocessing."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return Evaluable(
        model.eval(),
        open_clip.get_tokenizer(f"local-dir:{folder}"),
        preprocess,
        _sha256(files),
        f"{folder} (open_clip)",
    )


class HFTowers(nn.Module):
    """A transformers `CLIPModel` with encode_image / encode_text."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.model.get_image_features(pixel_values=images).pooler_output
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.model.get_text_features(input_ids=tokens).pooler_output
        return F.normalize(features, dim=-1) if normalize else features


def load_hf(folder: Path) -> Evaluable:
    """A `CLIPModel.save_pretrained` folder (tools/export.py --to hf), with its processor's preprocessing."""
    import transformers

    model = transformers.CLIPModel.from_pretrained(folder).eval()
    processor = transformers.CLIPProcessor.from_pretrained(folder, backend="pil")

    def tokenize(texts: list[str]) -> torch.Tensor:
        return processor(text=texts, return_tensors="pt", padding="max_length", truncation=True)["input_ids"]

    def transform(image: Any) -> torch.Tensor:
        return processor(images=[image], return_tensors="pt")["pixel_values"][0]

    files = sorted(p for p in folder.iterdir() if p.is_file())
    return Evaluable(HFTowers(model), tokenize, transform, _sha256(files), f"{folder} (Hugging Face CLIPModel)")


def load_evaluable(path: str | Path) -> Evaluable:
    """A checkpoint (step_* dir, checkpoints/ dir, `latest`) or an exported open_clip / Hugging Face folder."""
    p = Path(path)
    if (p / OPEN_CLIP_CONFIG).is_file():
        return load_open_clip(p)
    if (p / HF_CONFIG).is_file() and not (p / "meta.json").is_file():
        return load_hf(p)
    return load_checkpoint(p)
