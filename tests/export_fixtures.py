"""Real inputs for the export tests and the three ways to embed them: ours, exported open_clip, exported HF.

Inputs are the Fashion-MNIST test images and the photos scikit-image ships, with captions; each library
runs its own preprocessing and tokenizer on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch import nn

from data.tokenizer import get_tokenizer
from data.transforms import eval_transform, normalize_batch
from evaluation.prompts import FASHION_MNIST_CLASSNAMES
from model import CLIP, create_model
from tools import make_shards

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
PHOTOS = {  # scikit-image's bundled photos (no download) and a caption for each
    "astronaut": "a photo of an astronaut in front of the american flag.",
    "coffee": "a cup of coffee on a saucer!",
    "chelsea": "a close-up photo of a tabby cat.",
    "rocket": "a rocket on its launch pad, 2 minutes before lift-off",
    "camera": "a black and white photo of a man with a camera",
    "coins": "Old coins on a dark background.",
    "moon": "the surface of the moon",
    "page": "a scanned page of text",
    "hubble_deep_field": "galaxies seen by the Hubble space telescope",
    "immunohistochemistry": "a microscope image of stained tissue",
}


def fashion_mnist_test(n: int | None = None) -> tuple[list[Image.Image], torch.Tensor]:
    """The first `n` (default all 10k) Fashion-MNIST test images as grey PIL images, and their labels."""
    images_file = os.path.join(FASHION_MNIST, make_shards.FASHION_FILES["test"][0])
    if not os.path.exists(images_file):
        pytest.skip(f"{images_file} missing: install Debian's dataset-fashion-mnist (make fashion-mnist)")
    images = make_shards._read_idx(images_file)[:n]
    labels = make_shards._read_idx(os.path.join(FASHION_MNIST, make_shards.FASHION_FILES["test"][1]))[:n]
    return [Image.fromarray(np.ascontiguousarray(a), "L") for a in images], torch.as_tensor(labels.astype(np.int64))


def photos(names: tuple[str, ...] = tuple(PHOTOS)) -> tuple[list[Image.Image], list[str]]:
    return [Image.fromarray(getattr(skimage.data, name)()) for name in names], [PHOTOS[name] for name in names]


def fashion_captions() -> list[str]:
    """The demo's training captions: every template of tools/make_shards.py for every class."""
    return [make_shards.caption(t, name) for name in FASHION_MNIST_CLASSNAMES for t in make_shards.CAPTION_TEMPLATES]


class HFTowers(nn.Module):
    """A `CLIPModel` behind our encode_image / encode_text interface (for the shared zero-shot code)."""

    def __init__(self, model: transformers.CLIPModel) -> None:
        super().__init__()
        self.model = model

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.model.get_text_features(input_ids=input_ids).pooler_output
        return F.normalize(features, dim=-1) if normalize else features


@dataclass
class Embedders:
    """Our model and the two exports, each loaded by its own library with its own preprocessing."""

    ours: CLIP
    open_clip_model: nn.Module
    open_clip_preprocess: object
    open_clip_tokenizer: object
    hf: transformers.CLIPModel
    processor: transformers.CLIPProcessor  # PIL backend: OpenAI's preprocessing, pixel for pixel

    @classmethod
    def load(cls, ours: CLIP, open_clip_dir: Path, hf_dir: Path) -> Embedders:
        oc_model, _, oc_preprocess = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
        hf = transformers.CLIPModel.from_pretrained(hf_dir)
        processor = transformers.CLIPProcessor.from_pretrained(hf_dir, backend="pil")
        return cls(
            ours.eval(),
            oc_model.eval(),
            oc_preprocess,
            open_clip.get_tokenizer(f"local-dir:{open_clip_dir}"),
            hf.eval(),
            processor,
        )

    def pixels(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Each library's preprocessed images [N, 3, S, S]: {"ours", "open_clip", "hf"}."""
        transform = eval_transform(self.ours.config.vision.image_size)
        return {
            "ours": torch.stack([transform(i) for i in images]),
            "open_clip": torch.stack([self.open_clip_preprocess(i) for i in images]),
            "hf": self.processor(images=images, return_tensors="pt")["pixel_values"],
        }

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Normalised image embeddings per library, each from its own preprocessing."""
        pixels = self.pixels(images)
        return {
            "ours": self.ours.encode_image(pixels["ours"], normalize=True),
            "open_clip": self.open_clip_model.encode_image(pixels["open_clip"], normalize=True),
            "hf": F.normalize(self.hf.get_image_features(pixel_values=pixels["hf"]).pooler_output, dim=-1),
        }

    @torch.no_grad()
    def texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Normalised text embeddings per library (HF with the processor's attention mask)."""
        context = self.ours.config.text.context_length
        hf_inputs = self.processor(text=texts, return_tensors="pt", padding="max_length", truncation=True)
        return {
            "ours": self.ours.encode_text(get_tokenizer(context)(texts), normalize=True),
            "open_clip": self.open_clip_model.encode_text(self.open_clip_tokenizer(texts), normalize=True),
            "hf": F.normalize(self.hf.get_text_features(**hf_inputs).pooler_output, dim=-1),
        }


def briefly_trained_demo(steps: int = 60, batch_size: int = 64) -> CLIP:
    """The demo CLIP after `steps` contrastive steps on Fashion-MNIST training images and their captions.

    A random CLIP gives every test image the same class, so its zero-shot predictions would agree
    trivially; after 60 steps it predicts all ten classes (about 40% top-1).
    """
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model("demo")
    images_file, labels_file = (os.path.join(FASHION_MNIST, f) for f in make_shards.FASHION_FILES["train"])
    if not os.path.exists(images_file):
        pytest.skip(f"{images_file} missing: install Debian's dataset-fashion-mnist (make fashion-mnist)")
    images = make_shards._read_idx(images_file)
    labels = torch.as_tensor(make_shards._read_idx(labels_file).astype(np.int64))
    tokenize = get_tokenizer(model.config.text.context_length)
    captions = torch.stack(
        [
            tokenize([make_shards.caption(t, name) for t in make_shards.CAPTION_TEMPLATES])
            for name in FASHION_MNIST_CLASSNAMES
        ]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 20)
        rows = torch.randint(0, len(images), (batch_size,), generator=generator)
        label = labels[rows]
        template = torch.randint(0, captions.shape[1], (batch_size,), generator=generator)
        image_features, text_features, scale = model(normalize_batch(images[rows.numpy()]), captions[label, template])
        logits = scale.exp() * image_features @ text_features.T
        same_class = (label[:, None] == label[None, :]).float()  # captions of one class are interchangeable
        target = same_class / same_class.sum(dim=1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
