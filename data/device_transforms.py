"""The train crop-resize on the training device (`data.resize: device`, `data.decode: device`).

A loader worker draws each crop box exactly as `TrainTransform` does (same seeded stream, same box, so a resumed
stream is bit-identical) but does not resample:

- `resize: device`: the worker decodes the JPEG (libjpeg-turbo through simplejpeg; Pillow for other formats and
  CMYK, same pixels) and ships the whole uint8 image (unpadded, back to back) with its box and size;
- `decode: device`: the worker only reads the header (size, for the box) and ships the JPEG bytes; the trainer
  decodes them on the device (`torchvision.io.decode_jpeg`, nvJPEG on CUDA, batched; libjpeg-turbo on CPU).

The trainer then crops and resizes the whole batch at once (`data.device_resize.crop_resize`, Pillow's bicubic
within one level) and normalises as usual. The same code runs on CPU (tests) and CUDA.
"""

from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from data.batch_buffer import Arena, BufferPool, empty_uint8
from data.device_resize import crop_resize
from data.image_limits import check_image_size, check_size
from data.transforms import normalize_pixels, random_resized_crop_box
from data.types import Batch

try:
    import simplejpeg
except ImportError:  # a pinned dependency; without it Pillow decodes (the same pixels, slower)
    simplejpeg = None


class _Crop:
    """Shared by both: the crop box from the same seeded stream as TrainTransform."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.9, 1.0), ratio=(3 / 4, 4 / 3)) -> None:
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        return random_resized_crop_box(width, height, rng, self.scale, self.ratio)


def _rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def _ends_whole(data: bytes) -> bool:
    """A JPEG that ends with its EOI marker (a truncated one does not; Pillow refuses it, libjpeg pads it grey)."""
    return data.rstrip(b"\0")[-2:] == b"\xff\xd9"


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a grey or colour (YCbCr/RGB) JPEG from its header (libjpeg-turbo, 20x cheaper than
    Pillow's parser); None for anything else (CMYK, other formats, unreadable headers): Pillow opens those."""
    if simplejpeg is None or data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (height, width) if colorspace in ("Gray", "YCbCr", "RGB") else None


class DecodedCrop(_Crop):
    """`data.resize: device`: the worker decodes each image into its batch's buffer and ships it with its box.

    Draws the box at the point TrainTransform does (after the header for RGB/grey images, after decoding for other
    modes), so an image that fails to decode consumes the stream alike and later boxes stay equal. `batch(n)` gives
    the builder of one batch; its samples go to its `stack`."""

    def __init__(
        self, size: int, scale: tuple[float, float] = (0.9, 1.0), ratio=(3 / 4, 4 / 3), pool_size: int = 4
    ) -> None:
        super().__init__(size, scale, ratio)
        self.pool_size = pool_size  # see BufferPool: the loader's prefetch_factor + 2
        self.largest = 0  # bytes of the largest batch built here: the next batch's room
        self._pool: BufferPool | None = None  # made in the process that fills it (a loader worker, or this one)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_pool": None}

    def batch(self, expected: int) -> _DecodedBatch:
        if self._pool is None:
            self._pool = BufferPool(get_worker_info() is not None, self.pool_size)
        return _DecodedBatch(self, Arena(self._pool, expected, self.largest))


class _DecodedBatch:
    """One batch of DecodedCrop: each image is decoded straight into the batch's Arena (libjpeg-turbo through
    simplejpeg for whole RGB/grey JPEGs, the same pixels as Pillow's; Pillow for everything else).
    A sample is ((h, w), box)."""

    def __init__(self, crop: DecodedCrop, arena: Arena) -> None:
        self.crop, self.arena = crop, arena

    def pixels(self, img: Image.Image, rng: random.Random) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """An opened image; the box is drawn where TrainTransform draws it (before decoding L/RGB, after others)."""
        if img.mode in ("L", "RGB"):
            box = self.crop.box(img.width, img.height, rng)
            return self._keep(_rgb(img)), box
        rgb = _rgb(img)
        return self._keep(rgb), self.crop.box(img.width, img.height, rng)

    def encoded(self, data: bytes, rng: random.Random) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        size = jpeg_size(data)
        if size is None:
            return self._opened(data, rng)
        height, width = size
        check_size(width, height)
        box = self.crop.box(width, height, rng)
        n = height * width * 3
        if _ends_whole(data):
            try:
                simplejpeg.decode_jpeg(data, "RGB", buffer=self.arena.slot(n))
                self.arena.commit(n)
                return size, box
            except ValueError:
                pass  # Pillow reads it or rejects it the same way, below
        with Image.open(io.BytesIO(data)) as img:
            return self._keep(_rgb(img)), box

    def _opened(self, data: bytes, rng: random.Random) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            check_image_size(img)
            return self.pixels(img, rng)

    def _keep(self, rgb: np.ndarray) -> tuple[int, int]:
        self.arena.slot(rgb.size)[:] = rgb.reshape(-1)
        self.arena.commit(rgb.size)
        return rgb.shape[:2]

    def stack(self, items: list, shared: bool) -> dict[str, torch.Tensor]:
        """{"decoded": uint8 [sum of h*w*3] (the images back to back, unpadded: the device pads), "boxes": int64
        [B, 4], "sizes": int64 [B, 2] (h, w)}. `shared` was decided when the arena was made."""
        return {
            "decoded": self.arena.take(),
            "boxes": torch.tensor([b for _, b in items], dtype=torch.int64),
            "sizes": torch.tensor([s for s, _ in items], dtype=torch.int64),
        }

    def pack(self, batch: dict) -> dict:
        """`batch` (from `stack` and collate) with its tensors moved into the arena after the images: one buffer."""
        if "decoded" not in batch:  # no image in the batch
            return batch
        small = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "decoded"}
        decoded, views = self.arena.take_with(small)
        self.crop.largest = max(self.crop.largest, self.arena.used)
        return batch | views | {"decoded": decoded}


def _flat(arrays: list, shared: bool) -> torch.Tensor:
    """uint8 arrays or bytes back to back in one (shared-memory) tensor."""
    total = sum(len(a) if isinstance(a, bytes) else a.size for a in arrays)
    flat = empty_uint8((total,), shared)
    view, at = flat.numpy(), 0
    for a in arrays:
        a = np.frombuffer(a, dtype=np.uint8) if isinstance(a, bytes) else a.reshape(-1)
        view[at : at + a.size] = a
        at += a.size
    return flat


class EncodedCrop(_Crop):
    """`data.decode: device`: per sample (JPEG bytes, box, (h, w)); other formats are decoded here (uint8 array).
    Keeps no per-batch state: `batch(n)` is itself."""

    def batch(self, expected: int) -> EncodedCrop:
        return self

    @staticmethod
    def pack(batch: dict) -> dict:
        return batch

    def pixels(self, img: Image.Image, rng: random.Random) -> tuple[np.ndarray, tuple, tuple[int, int]]:
        """An opened image; the box is drawn where TrainTransform draws it (before decoding L/RGB, after others)."""
        if img.mode in ("L", "RGB"):
            box = self.box(img.width, img.height, rng)
            return _rgb(img), box, (img.height, img.width)
        rgb = _rgb(img)
        return rgb, self.box(img.width, img.height, rng), (img.height, img.width)

    def encoded(self, data: bytes, rng: random.Random) -> tuple[bytes | np.ndarray, tuple, tuple[int, int]]:
        size = jpeg_size(data) if _ends_whole(data) else None  # a truncated JPEG is opened (and refused) below
        if size is not None:
            check_size(size[1], size[0])
            return data, self.box(size[1], size[0], rng), size
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            check_image_size(img)
            if img.mode not in ("L", "RGB"):  # decoded here, before the box (as TrainTransform does)
                return self.pixels(img, rng)
            box, size = self.box(img.width, img.height, rng), (img.height, img.width)
            if img.format == "JPEG" and _ends_whole(data):
                return data, box, size
            return _rgb(img), box, size  # other formats; a truncated JPEG raises here, as on the host path

    @staticmethod
    def stack(items: list, shared: bool) -> dict:
        """{"jpeg": uint8 [total bytes] (JPEGs back to back), "jpeg_ends": int64 [B] (0 = not a JPEG: its pixels are in
        "other"), "other": [uint8 [h, w, 3]], "boxes": int64 [B, 4], "sizes": int64 [B, 2]}."""
        blobs = [p for p, _, _ in items if isinstance(p, bytes)]
        ends = np.cumsum([len(p) if isinstance(p, bytes) else 0 for p, _, _ in items])
        ends[[not isinstance(p, bytes) for p, _, _ in items]] = 0
        return {
            "jpeg": _flat(blobs, shared),
            "jpeg_ends": torch.from_numpy(ends.astype(np.int64)),
            "other": [torch.from_numpy(np.array(p)) for p, _, _ in items if not isinstance(p, bytes)],  # writable
            "boxes": torch.tensor([b for _, b, _ in items], dtype=torch.int64),
            "sizes": torch.tensor([s for _, _, s in items], dtype=torch.int64),
        }


def train_crop(resize: str, decode: str, size: int, scale: tuple[float, float], prefetch_factor: int = 2):
    """The worker-side transform for (data.resize, data.decode); None = the host path (TrainTransform).
    An unresolved "auto" (no trainer device known: benchmarks, tools) is the host path."""
    if decode == "device":
        return EncodedCrop(size, scale)
    return DecodedCrop(size, scale, pool_size=prefetch_factor + 2) if resize == "device" else None


def resolve_resize(cfg, device: torch.device):
    """`cfg` (a DataConfig) with resize "auto" made "device" for a CUDA trainer (or decode "device"), else "host"."""
    if cfg.resize != "auto":
        return cfg
    on_device = torch.device(device).type == "cuda" or cfg.decode == "device"
    return dataclasses.replace(cfg, resize="device" if on_device else "host")


def has_device_work(batch: Batch) -> bool:
    return "decoded" in batch or "jpeg" in batch


def device_images(batch: Batch, device: torch.device, size: int) -> torch.Tensor:
    """The model's float32 [B, 3, size, size] input on `device`, whichever image fields `batch` carries
    (data.types): uint8 pixels and device crops are normalised there, normalised images pass."""
    if "pixels" in batch:
        return normalize_pixels(batch["pixels"].to(device, non_blocking=True))
    if has_device_work(batch):  # data.resize / data.decode: device
        return normalize_pixels(device_pixels(batch, device, size))
    return batch["images"].to(device, non_blocking=True)


def device_pixels(batch: Batch, device: torch.device | str, size: int) -> torch.Tensor:
    """uint8 [B, size, size, 3] on `device` from a batch of `DecodedCrop` or `EncodedCrop` samples."""
    device = torch.device(device)
    sizes = batch["sizes"]
    if "decoded" in batch:
        flat = batch["decoded"].to(device, non_blocking=True)  # one copy of the unpadded images
        if bool((sizes == sizes[0]).all()):  # one size (img2dataset's border layout): a view, no padding
            images = flat.view(len(sizes), int(sizes[0, 0]), int(sizes[0, 1]), 3)
            return crop_resize(images, batch["boxes"], sizes, size)
        ends = (sizes[:, 0] * sizes[:, 1] * 3).cumsum(0).tolist()
        starts = [0, *ends[:-1]]
        images = [flat[a:e].view(int(h), int(w), 3) for a, e, (h, w) in zip(starts, ends, sizes.tolist(), strict=True)]
    else:
        images = _decode_on(device, batch)
    return crop_resize(_pad(images, sizes, device), batch["boxes"], sizes, size)


def _pad(images: list[torch.Tensor], sizes: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[h, w, 3] images on `device` -> zero-padded uint8 [B, Hmax, Wmax, 3]."""
    h, w = (int(v) for v in sizes.max(0).values)
    out = torch.zeros((len(images), h, w, 3), dtype=torch.uint8, device=device)
    for i, img in enumerate(images):
        out[i, : img.shape[0], : img.shape[1]] = img
    return out


def _decode_on(device: torch.device, batch: Batch) -> list[torch.Tensor]:
    """JPEG bytes -> [h, w, 3] uint8 images on `device` (one batched decode_jpeg call; the rest arrive decoded)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as e:
        raise RuntimeError(
            "data.decode: device decodes with torchvision.io.decode_jpeg: pip install torchvision "
            "(requirements.txt pins it), or set data.decode: host"
        ) from e
    ends, flat = batch["jpeg_ends"].tolist(), batch["jpeg"]
    blobs, at = [], 0
    for end in ends:
        if end:
            blobs.append(flat[at:end])
            at = end
    decoded = iter(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device) if blobs else [])
    others = iter(batch["other"])
    return [next(decoded).permute(1, 2, 0) if end else next(others).to(device, non_blocking=True) for end in ends]
