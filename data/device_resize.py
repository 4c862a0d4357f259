"""Crop + resize a batch of images on any device with Pillow's bicubic filter, as batched matrix products.

Pillow's `Image.resize(size, BICUBIC, box=...)` is separable: two passes, each a weighted sum of input pixels
with weights that depend only on the box, the sizes and the filter (Resample.c `precompute_coeffs`: bicubic
a = -0.5, support widened by the downscale factor, i.e. antialiased), each rounded and clipped to uint8; the
horizontal pass runs first unless the height shrinks by much more than the width (Pillow 13). Here each pass is a
dense weight matrix built on the device from the boxes, so a batch of differently sized crops of differently sized
images (zero-padded to one shape) resizes in two `bmm`s. Pillow keeps its weights in 22-bit fixed point; these
are float32, so a pixel may differ from Pillow's by one level where a sum lands next to .5 (tested).
"""

from __future__ import annotations

import torch

BICUBIC_A = -0.5  # Pillow's bicubic (Keys, a = -0.5), support 2
CHUNK = 64  # samples resized at once


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    a = BICUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_weights(
    start: torch.Tensor, stop: torch.Tensor, in_size: torch.Tensor, out_size: int, width: int
) -> torch.Tensor:
    """[B, out_size, width] float32 weights of one axis: output i of sample b is sum_j w[b, i, j] * input[b, j].

    `start`/`stop`: the box's edges on this axis [B] (float), `in_size`: the image's true extent [B] (the input is
    zero-padded to `width`); Pillow's precompute_coeffs, vectorised (taps outside [xmin, xmax) are zero).
    """
    start, stop, in_size = (t.to(torch.float64).view(-1, 1, 1) for t in (start, stop, in_size))
    scale = (stop - start) / out_size
    filterscale = scale.clamp(min=1.0)
    support = 2.0 * filterscale
    center = start + (torch.arange(out_size, device=start.device, dtype=torch.float64).view(1, -1, 1) + 0.5) * scale
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), in_size)
    j = torch.arange(width, device=start.device, dtype=torch.float64).view(1, 1, -1)
    w = _bicubic((j - center + 0.5) / filterscale) * ((j >= xmin) & (j < xmax))
    total = w.sum(-1, keepdim=True)
    return (w / torch.where(total == 0, 1.0, total)).to(torch.float32)


def _round_u8(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5).clamp_(0, 255)


def vertical_first(sizes: torch.Tensor, out_size: int) -> torch.Tensor:
    """[B] bool: Pillow (>= 13) runs the vertical pass first when the height shrinks by more than twice as many
    pixels as the width (whole-image sizes, not the box); the intermediate rounding makes the order visible."""
    shrink_h, shrink_w = sizes[:, 0] - out_size, sizes[:, 1] - out_size
    return (shrink_h > 0) & (shrink_h > 2 * shrink_w)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor, out_size: int) -> torch.Tensor:
    """uint8 images [B, H, W, 3] (each zero-padded from its true (h, w) = `sizes[b]`), crop boxes [B, 4] as
    (left, top, right, bottom) -> uint8 [B, out_size, out_size, 3]: Pillow's bicubic `resize(box=...)` of each.

    Runs where `images` is; `boxes` and `sizes` are host tensors (the pass order is chosen from them without a
    device sync). Weights are built on the device (float64 centres), products in IEEE float32 (TF32 would lose about
    a quarter level).
    """
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"crop_resize takes uint8 [B, H, W, 3] images, got {images.dtype} {tuple(images.shape)}")
    if boxes.device.type != "cpu" or sizes.device.type != "cpu":
        raise ValueError("crop_resize takes boxes and sizes as host tensors (they come from the loader)")
    b, h, w, _ = images.shape
    if b > CHUNK:  # bounds the float32 copies and weights (about 0.4 GB per chunk of 512 px images)
        parts = [
            crop_resize(images[i : i + CHUNK], boxes[i : i + CHUNK], sizes[i : i + CHUNK], out_size)
            for i in range(0, b, CHUNK)
        ]
        return torch.cat(parts)
    first = vertical_first(sizes, out_size)
    device = images.device
    boxes_d, sizes_d = boxes.to(device, non_blocking=True), sizes.to(device, non_blocking=True)
    wx = resample_weights(boxes_d[:, 0], boxes_d[:, 2], sizes_d[:, 1], out_size, w)  # [B, S, W]
    wy = resample_weights(boxes_d[:, 1], boxes_d[:, 3], sizes_d[:, 0], out_size, h)  # [B, S, H]
    with _ieee_matmul(device):
        if not first.any():
            return _horizontal_first(images, wx, wy)
        if first.all():
            return _vertical_first(images, wx, wy)
        out = torch.empty((b, out_size, out_size, 3), dtype=torch.uint8, device=device)
        for rows, fn in ((~first, _horizontal_first), (first, _vertical_first)):
            idx = rows.nonzero().flatten().to(device, non_blocking=True)
            out[idx] = fn(images[idx], wx[idx], wy[idx])
        return out


def _horizontal_first(images: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    b, h, w, _ = images.shape
    s = wx.shape[1]
    x = images.permute(0, 1, 3, 2).reshape(b, h * 3, w).to(torch.float32)  # [B, H*3, W]
    rows = _round_u8(torch.bmm(x, wx.transpose(1, 2))).view(b, h, 3 * s)  # horizontal: [B, H, 3*S]
    out = _round_u8(torch.bmm(wy, rows))  # vertical: [B, S, 3*S]
    return out.view(b, s, 3, s).permute(0, 1, 3, 2).to(torch.uint8).contiguous()


def _vertical_first(images: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    b, h, w, _ = images.shape
    s = wx.shape[1]
    cols = _round_u8(torch.bmm(wy, images.reshape(b, h, w * 3).to(torch.float32)))  # vertical: [B, S, W*3]
    cols = cols.view(b, s, w, 3).permute(0, 1, 3, 2).reshape(b, s * 3, w)
    out = _round_u8(torch.bmm(cols, wx.transpose(1, 2)))  # horizontal: [B, S*3, S]
    return out.view(b, s, 3, s).permute(0, 1, 3, 2).to(torch.uint8).contiguous()


class _ieee_matmul:
    """Full float32 products on CUDA for the duration (the trainer may allow TF32 globally)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> None:
        if self.cuda:
            self.saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = self.saved
