"""CLIP image preprocessing.

Training: RandomResizedCrop(scale 0.9-1.0, ratio 3/4-4/3, bicubic) -> RGB -> normalize.
Evaluation: exactly OpenAI CLIP's `_transform`: Resize(shortest side, bicubic) -> CenterCrop ->
RGB -> ToTensor -> Normalize.

The per-sample stage stops at a uint8 array (PIL work only); normalisation is done once per
batch in `normalize_pixels`: on the training device for training batches (4x fewer bytes than
float32 cross the host-device link, 12x for grey), on the host for evaluation batches. Calling a transform on a single
image still returns the usual normalised float tensor [3, H, W].
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

from data.batch_buffer import empty_uint8
from model.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

# normalised = pixel * _SCALE[c] + _OFFSET[c]  ==  (pixel / 255 - mean[c]) / std[c]
_SCALE = tuple(1.0 / (255.0 * s) for s in OPENAI_CLIP_STD)
_OFFSET = tuple(-m / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, strict=True))


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] (or [B, H, W] grey) on any device -> float32 [B, 3, H, W] with CLIP mean/std.

    The trainer calls it on the training device, so uint8 (grey: one channel) is what crosses the
    host-device link. Per-channel Python constants: no constant tensor is copied to the device.
    """
    x = pixels.unsqueeze(1) if pixels.dim() == 3 else pixels.permute(0, 3, 1, 2)  # grey: broadcast to three
    out = torch.empty((x.shape[0], 3, x.shape[2], x.shape[3]), dtype=torch.float32, device=pixels.device)
    out.copy_(x.expand(-1, 3, -1, -1))  # one strided uint8 -> float32 pass straight into NCHW
    for channel, (scale, offset) in enumerate(zip(_SCALE, _OFFSET, strict=True)):
        out[:, channel].mul_(scale).add_(offset)
    return out


def normalize_batch(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """`normalize_pixels` of a host array (evaluation batches, single images)."""
    if isinstance(pixels, np.ndarray) and not pixels.flags.writeable:
        pixels = pixels.copy()
    return normalize_pixels(torch.as_tensor(pixels))


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """PIL image -> uint8 [H, W, 3]; grey images stay [H, W] (expanded to 3 channels per batch)."""
    if img.mode == "L":
        return np.asarray(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def random_resized_crop_box(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop drawn like torchvision's RandomResizedCrop.get_params."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height  # fallback: central crop with the aspect ratio clamped
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


class TrainTransform:
    """RandomResizedCrop (bicubic) to `size`; `rng` makes the crop reproducible."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.9, 1.0), ratio=(3 / 4, 4 / 3)) -> None:
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self._rng = random.Random()

    def pixels(self, img: Image.Image, rng: random.Random | None = None) -> np.ndarray:
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")  # palette / alpha / CMYK: convert before resampling
        box = random_resized_crop_box(img.width, img.height, rng or self._rng, self.scale, self.ratio)
        # resize with a source box = crop + resize in one pass; grey stays one channel (same result).
        img = img.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        return to_rgb_array(img)

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return normalize_batch(self.pixels(img, rng)[None])[0]

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, bicubic, CLIP mean/std)"


class EvalTransform:
    """OpenAI CLIP's eval preprocessing: shortest side -> size (bicubic), center crop, RGB, normalize."""

    def __init__(self, size: int) -> None:
        self.size = size

    def pixels(self, img: Image.Image, rng: random.Random | None = None) -> np.ndarray:
        n, (w, h) = self.size, img.size
        # torchvision Resize(int): short side -> n, long side -> int(n * long / short)
        new_w, new_h = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        if new_w < n or new_h < n:  # only for degenerate sizes (long side rounding); pad like torchvision
            canvas = Image.new(img.mode, (max(n, new_w), max(n, new_h)))
            canvas.paste(img, ((max(n, new_w) - new_w) // 2, (max(n, new_h) - new_h) // 2))
            img, new_w, new_h = canvas, canvas.width, canvas.height
        top, left = int(round((new_h - n) / 2.0)), int(round((new_w - n) / 2.0))
        img = img.crop((left, top, left + n, top + n))
        return to_rgb_array(img)  # OpenAI converts to RGB after resize + crop

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return normalize_batch(self.pixels(img)[None])[0]

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize shortest side bicubic + center crop, CLIP mean/std)"


def train_transform(image_size: int, scale: tuple[float, float] = (0.9, 1.0)) -> TrainTransform:
    return TrainTransform(image_size, scale)


def eval_transform(image_size: int) -> EvalTransform:
    return EvalTransform(image_size)


def stack_pixels(arrays: list[np.ndarray], shared: bool = False) -> torch.Tensor:
    """Stack per-sample uint8 arrays into a uint8 tensor; all-grey batches stay [B, H, W].

    `shared` allocates it in shared memory, so a DataLoader worker hands it over without a copy.
    Workers ship uint8 (4x, for grey 12x, fewer bytes than float32) and the consumer normalises.
    """
    grey = all(a.ndim == 2 for a in arrays)
    h, w = arrays[0].shape[:2]
    out = empty_uint8((len(arrays), h, w) if grey else (len(arrays), h, w, 3), shared)
    view = out.numpy()
    for i, a in enumerate(arrays):
        view[i] = a if grey or a.ndim == 3 else a[..., None]
    return out
