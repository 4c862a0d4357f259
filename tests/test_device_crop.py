"""data.resize / data.decode: device: the crop-resize done as a batch (here on CPU, the same code as on CUDA) gives
the host path's pixels within the stated tolerance, from the same seeded crop boxes, and resumes bit-exactly.

Tolerance against Pillow's bicubic (the host path): at most 1 level on any pixel, at most 0.002 levels on average
(Pillow's 22-bit fixed-point weights against float32 ones; decoding is the same libjpeg-turbo)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.photo_shards import build
from data.config import DataConfig
from data.device_resize import crop_resize, vertical_first
from data.device_transforms import device_pixels, has_device_work, resolve_resize
from data.loader import build_train_loader
from data.manifest import build_manifest
from data.shards import ShardWriter

MAX_LEVELS, MEAN_LEVELS = 1, 0.002
MODES = [("device", "host"), ("device", "device")]  # (data.resize, data.decode)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, str]:
    """Tiny photo shards in both stored layouts (img2dataset 256 px border, DataComp up to 512 px)."""
    root = tmp_path_factory.mktemp("photos")
    out = {}
    for layout in ("img2dataset", "datacomp"):
        out[layout] = str(root / layout)
        build(out[layout], layout, samples=24, shards=2, seed=3, workers=1)
    return out


def test_crop_resize_equals_pillow_bicubic_in_both_pass_orders() -> None:
    """Random sizes, boxes (down- and upscaling) and padding; both of Pillow 13's pass orders in one batch."""
    rng = np.random.default_rng(0)
    sizes = [(300, 90), (120, 400), (256, 256), (64, 70), (480, 200), (150, 150)]
    images, boxes, refs = [], [], []
    for h, w in sizes:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        box = (
            int(rng.integers(0, w // 4)),
            int(rng.integers(0, h // 4)),
            int(rng.integers(w // 2, w + 1)),
            int(rng.integers(h // 2, h + 1)),
        )
        images.append(img)
        boxes.append(box)
        refs.append(np.asarray(Image.fromarray(img).resize((96, 96), Image.Resampling.BICUBIC, box=box)))
    batch = torch.zeros(len(sizes), 480, 400, 3, dtype=torch.uint8)
    for i, img in enumerate(images):
        batch[i, : img.shape[0], : img.shape[1]] = torch.from_numpy(img)
    sizes_t = torch.tensor(sizes)
    first = vertical_first(sizes_t, 96)
    assert first.any() and not first.all()  # both orders are exercised
    out = crop_resize(batch, torch.tensor(boxes), sizes_t, 96)
    diff = (out.int() - torch.from_numpy(np.stack(refs)).int()).abs()
    assert diff.max().item() <= MAX_LEVELS and diff.float().mean().item() <= MEAN_LEVELS


def test_crop_resize_in_chunks_equals_one_pass(monkeypatch) -> None:
    import data.device_resize as device_resize

    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.integers(0, 256, (5, 40, 30, 3), dtype=np.uint8))
    boxes, sizes = torch.tensor([[1, 2, 29, 38]] * 5), torch.tensor([[40, 30]] * 5)
    whole = crop_resize(images, boxes, sizes, 16)
    monkeypatch.setattr(device_resize, "CHUNK", 2)
    assert torch.equal(crop_resize(images, boxes, sizes, 16), whole)


def test_crop_resize_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        crop_resize(torch.zeros(1, 8, 8, 3), torch.tensor([[0, 0, 8, 8]]), torch.tensor([[8, 8]]), 4)


@pytest.mark.parametrize("layout", ["img2dataset", "datacomp"])
def test_device_paths_give_the_host_pixels_from_the_same_boxes(photos, layout) -> None:
    def first_batches(resize: str, decode: str) -> list[dict]:
        cfg = DataConfig(path=photos[layout], batch_size=8, workers=0, image_size=64, resize=resize, decode=decode)
        loader = build_train_loader(cfg)
        return [b for _, b in zip(range(2), loader, strict=False)]

    host = first_batches("host", "host")
    for resize, decode in MODES:
        for h, d in zip(host, first_batches(resize, decode), strict=True):
            assert has_device_work(d) and "pixels" not in d
            assert torch.equal(h["index"], d["index"]) and torch.equal(h["tokens"], d["tokens"])
            diff = (device_pixels(d, "cpu", 64).int() - h["pixels"].int()).abs()
            assert diff.max().item() <= MAX_LEVELS and diff.float().mean().item() <= MEAN_LEVELS, (resize, decode)


@pytest.mark.parametrize("resize,decode", MODES)
def test_device_path_resumes_bit_exactly(photos, resize, decode) -> None:
    cfg = DataConfig(path=photos["datacomp"], batch_size=4, workers=0, image_size=32, resize=resize, decode=decode)
    loader = build_train_loader(cfg)
    batches = [b for _, b in zip(range(4), loader, strict=False)]
    state = build_train_loader(cfg).state_dict() | {"position": 2}
    resumed = build_train_loader(cfg)
    resumed.load_state_dict(state)
    again = list(resumed)[:2]
    for a, b in zip(batches[2:], again, strict=True):
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), key
        assert torch.equal(device_pixels(a, "cpu", 32), device_pixels(b, "cpu", 32))


def test_decode_device_ships_other_formats_decoded_and_skips_truncated_jpegs(tmp_path) -> None:
    """PNG and CMYK JPEGs are decoded in the worker; a truncated JPEG is counted as corrupt, as on the host path."""
    rng = np.random.default_rng(1)

    def encoded(mode: str, fmt: str, size: tuple[int, int]) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).convert(mode).save(buf, format=fmt)
        return buf.getvalue()

    samples = [
        ("jpg", encoded("RGB", "JPEG", (40, 30))),
        ("png", encoded("RGB", "PNG", (20, 50))),
        ("jpg", encoded("CMYK", "JPEG", (30, 30))),
        ("jpg", encoded("L", "JPEG", (33, 41))),
        ("jpg", encoded("RGB", "JPEG", (40, 40))[:-300]),
    ]
    writer = ShardWriter(str(tmp_path), shard_size=8)
    for key, (ext, data) in enumerate(samples):
        writer.write(key, data, ext, f"caption {key}")
    writer.close()
    build_manifest(writer.paths, str(tmp_path), {})
    out = {}
    for resize, decode in [("host", "host"), *MODES]:
        cfg = DataConfig(
            path=str(tmp_path), batch_size=5, workers=0, image_size=16, resize=resize, decode=decode, drop_last=True
        )
        loader = build_train_loader(cfg)
        batch = next(iter(loader))
        out[decode, resize] = batch
        assert loader.skipped_counts()["corrupt_image"] == 1
    device = out["device", "device"]
    not_jpeg = [k in (1, 2) for k in device["index"].tolist()]  # the PNG and the CMYK JPEG (the skipped slot is
    assert len(device["other"]) == sum(not_jpeg) >= 2  # refilled with a repeat)
    assert ((device["jpeg_ends"] == 0) == torch.tensor(not_jpeg)).all()
    host = out["host", "host"]["pixels"]
    for batch in (device, out["host", "device"]):
        diff = (device_pixels(batch, "cpu", 16).int() - host.expand(*host.shape[:3], 3).int()).abs()
        assert diff.max().item() <= MAX_LEVELS, (diff.flatten(1).max(1).values, batch["index"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"resize": "gpu"}, "data.resize must be one of"),
        ({"decode": "cuda"}, "data.decode must be one of"),
        ({"resize": "auto-ish"}, "data.resize must be one of"),
        ({"decode": "device", "resize": "host"}, "data.decode: device needs data.resize: device or auto"),
    ],
)
def test_config_names_the_bad_place(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        DataConfig(path="x", **overrides)


def test_resize_auto_is_device_on_cuda_only() -> None:
    cfg = DataConfig(path="x")
    assert cfg.resize == "auto" and resolve_resize(cfg, torch.device("cpu")).resize == "host"
    assert resolve_resize(cfg, torch.device("cuda", 0)).resize == "device"
    assert resolve_resize(DataConfig(path="x", decode="device"), torch.device("cpu")).resize == "device"
    assert resolve_resize(DataConfig(path="x", resize="host"), torch.device("cuda")).resize == "host"


def test_trainer_inputs_resize_device_batches(tmp_path, photos) -> None:
    from tests.tiny_run import tiny_config
    from train.trainer import Trainer

    class OneBatch:  # the TrainLoader interface the trainer needs at construction and close
        num_samples, steps_per_epoch = 8, 1

        def close(self) -> None:
            """No workers."""

    cfg = tiny_config(str(tmp_path))
    trainer = Trainer(cfg, OneBatch())
    try:
        size = cfg.data.image_size
        data = DataConfig(path=photos["img2dataset"], batch_size=2, workers=0, image_size=size, resize="device")
        batch = next(iter(build_train_loader(data)))
        host = DataConfig(path=photos["img2dataset"], batch_size=2, workers=0, image_size=size)
        reference = next(iter(build_train_loader(host)))
        images, _, index = trainer.inputs(batch)
        expected, _, _ = trainer.inputs(reference)
        assert images.shape == (2, 3, size, size) and torch.equal(index.cpu(), reference["index"])
        assert (images - expected).abs().max().item() <= MAX_LEVELS / 255 / 0.26 + 1e-5  # one level, normalised
    finally:
        trainer.close()
