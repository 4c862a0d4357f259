"""CLIP preprocessing: eval must equal OpenAI CLIP's recipe; train crop follows RandomResizedCrop."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision import transforms as T

from data.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    eval_transform,
    normalize_batch,
    random_resized_crop_box,
    stack_pixels,
    train_transform,
)

TOL = 1e-5  # float32 normalisation order differs from ToTensor+Normalize by ~4e-7


def openai_reference(n: int):
    """OpenAI CLIP's `_transform(n_px)` written with torchvision ops."""
    return T.Compose(
        [
            T.Resize(n, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(n),
            lambda im: im.convert("RGB"),
            T.ToTensor(),
            T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
        ]
    )


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(load_sample_image("china.jpg"))  # 640 x 427 RGB photo


@pytest.mark.parametrize("n", [224, 32, 336])
def test_eval_equals_openai_clip_on_a_real_photo(photo, n):
    for img in (photo, photo.transpose(Image.Transpose.ROTATE_90), photo.convert("L"), photo.crop((0, 0, 301, 200))):
        ours = eval_transform(n)(img)
        ref = openai_reference(n)(img)
        assert ours.shape == ref.shape == (3, n, n) and ours.dtype == torch.float32
        assert (ours - ref).abs().max().item() < TOL


def test_eval_equals_open_clip_image_transform(photo):
    import open_clip

    ref = open_clip.image_transform(224, is_train=False)(photo)
    assert (eval_transform(224)(photo) - ref).abs().max().item() < TOL


def test_crop_box_follows_random_resized_crop():
    rng = random.Random(0)
    for w, h in [(640, 427), (28, 28), (50, 300)]:
        for _ in range(300):
            left, top, right, bottom = random_resized_crop_box(w, h, rng, scale=(0.9, 1.0))
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
            bw, bh = right - left, bottom - top
            if (w, h) != (50, 300):  # the very tall image takes the central-crop fallback
                assert 0.9 * w * h * 0.97 <= bw * bh <= w * h
                assert 3 / 4 * 0.9 <= bw / bh <= 4 / 3 * 1.1
            else:
                assert (bw, bh) == (50, round(50 / (3 / 4)))


def test_train_transform_matches_torchvision_given_the_same_box(photo):
    """Our crop+resize equals torchvision's resized_crop up to PIL's resampling at the box border."""
    import torchvision.transforms.functional as F

    rng = random.Random(5)
    t = train_transform(64)
    ours = t(photo, random.Random(5))
    left, top, right, bottom = random_resized_crop_box(photo.width, photo.height, rng, (0.9, 1.0))
    ref = F.resized_crop(photo, top, left, bottom - top, right - left, [64, 64], T.InterpolationMode.BICUBIC)
    ref = T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(T.ToTensor()(ref))
    assert ours.shape == (3, 64, 64)
    assert (ours - ref).abs().mean().item() < 0.02  # same crop; only edge pixels may differ slightly


def test_grey_fast_path_equals_rgb_path():
    arr = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    grey = Image.fromarray(arr, "L")
    a = train_transform(32)(grey, random.Random(1))
    b = train_transform(32)(grey.convert("RGB"), random.Random(1))
    assert torch.equal(a, b)


def test_normalize_batch_equals_to_tensor_normalize():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    ref = torch.stack([T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(T.ToTensor()(x)) for x in rgb])
    assert (normalize_batch(rgb) - ref).abs().max().item() < TOL
    mixed = stack_pixels([rgb[0], rgb[1][..., 0]])
    assert mixed.shape == (2, 5, 7, 3) and np.array_equal(mixed[1, ..., 2], rgb[1][..., 0])
