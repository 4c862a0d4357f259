"""Training pixels travel as uint8 and are normalised on the device, equal to the host path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize_batch, normalize_pixels

TOL = 1e-6


def reference(pixels: np.ndarray) -> torch.Tensor:
    """(x / 255 - mean) / std in float64, grey broadcast to three channels."""
    x = torch.as_tensor(pixels, dtype=torch.float64)
    x = x[:, None].expand(-1, 3, -1, -1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", [(4, 9, 7, 3), (4, 9, 7)], ids=["rgb", "grey"])
def test_device_normalisation_equals_host_path(device: str, shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    on_device = normalize_pixels(torch.as_tensor(pixels).to(device)).cpu()
    host = normalize_batch(pixels)
    assert on_device.shape == host.shape == (4, 3, 9, 7) and on_device.dtype == torch.float32
    assert (on_device.double() - reference(pixels)).abs().max().item() < TOL
    assert (on_device - host).abs().max().item() < TOL


def test_trainer_inputs_normalise_uint8_pixels_and_pass_float_images(tmp_path) -> None:
    from tests.tiny_run import tiny_config
    from train.trainer import Trainer

    class OneBatch:  # the TrainLoader interface the trainer needs at construction and close
        num_samples, steps_per_epoch = 8, 1

        def close(self) -> None:
            """No workers."""

    trainer = Trainer(tiny_config(str(tmp_path)), OneBatch())
    try:
        grey = torch.randint(0, 256, (2, 32, 32), dtype=torch.uint8)
        batch = {"pixels": grey, "tokens": torch.zeros(2, 77, dtype=torch.long), "index": torch.arange(2)}
        images, _, index = trainer.inputs(batch)
        assert torch.allclose(images.cpu(), normalize_batch(grey.numpy()), atol=TOL, rtol=0)
        passed, _, _ = trainer.inputs({"images": images, "tokens": batch["tokens"], "index": index})
        assert torch.equal(passed, images)
    finally:
        trainer.close()


def test_train_loader_ships_uint8_grey_pixels(tmp_path) -> None:
    from data.config import DataConfig
    from data.loader import build_train_loader
    from data.manifest import build_manifest
    from data.shards import ShardWriter
    from tests.data_fixtures import caption_of, png

    writer = ShardWriter(str(tmp_path), shard_size=8)
    for key in range(8):
        writer.write(key, png(key, mode="L"), "png", caption_of(key))
    writer.close()
    build_manifest(writer.paths, str(tmp_path), {})
    loader = build_train_loader(DataConfig(path=str(tmp_path), batch_size=4, workers=0, image_size=8))
    batch = next(iter(loader))
    assert batch["pixels"].dtype == torch.uint8 and batch["pixels"].shape == (4, 8, 8)  # grey: one channel
    assert "images" not in batch
