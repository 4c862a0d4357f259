"""The largest image a loader decodes: a bigger one is skipped and counted (`image_too_large`) from its header,
before any pixel is decoded (a 12000x12000 PNG stalls a worker for seconds every time it is drawn). Torch-free."""

from __future__ import annotations

from PIL import Image

from data.sources import SkipSample

MAX_IMAGE_PIXELS = 8192 * 8192


def check_image_size(img: Image.Image) -> None:
    """SkipSample("image_too_large") when the opened (header-only) `img` has more than MAX_IMAGE_PIXELS pixels."""
    check_size(img.width, img.height)


def check_size(width: int, height: int) -> None:
    """SkipSample("image_too_large") for an image of more than MAX_IMAGE_PIXELS pixels."""
    if width * height > MAX_IMAGE_PIXELS:
        raise SkipSample("image_too_large")
