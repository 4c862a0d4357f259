"""tools/reference_features.py: one row per dense key, the reference's centre-crop embeddings, read back by the loss."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.config import DataConfig
from data.tokenizer import get_tokenizer
from data.transforms import EvalTransform, normalize_batch
from tests.data_fixtures import caption_of, png, write_shards
from tests.test_reference_train import REF_OVERRIDES, save_reference
from tools.reference_features import write_features
from train.losses import LossConfig
from train.reference import PrecomputedReference, load_reference_model
from train.reference_spec import FEATURES_FILE, FEATURES_META


def test_features_are_the_centre_crop_embeddings_by_row(tmp_path: Path) -> None:
    keys = write_shards(str(tmp_path / "data"), [4, 3], keys=[5, 0, 6, 2, 1, 4, 3])  # source keys; dense rows 0..6
    save_reference(tmp_path / "ref")
    loss = LossConfig(
        reference=f"open_clip:{tmp_path / 'ref'}", reference_model="tiny", reference_overrides=REF_OVERRIDES
    )
    data = DataConfig(source="webdataset", path=str(tmp_path / "data"), image_size=32)
    meta = write_features(loss, data, tmp_path / "data", batch_size=3)
    assert meta["written"] == 7 and json.loads((tmp_path / "data" / FEATURES_META).read_text())["sha256"]
    table = np.load(tmp_path / "data" / FEATURES_FILE)
    model = load_reference_model(loss)
    tokenizer = get_tokenizer(model.config.text.context_length)
    pixels = [EvalTransform(32).pixels(Image.open(io.BytesIO(png(k)))) for k in keys]
    with torch.no_grad():
        r1, r2, _ = model(normalize_batch(np.stack(pixels)), tokenizer([caption_of(k) for k in keys]))
    expected = torch.stack([r1, r2], dim=1).to(torch.float16).numpy()
    assert table.shape == (7, 2, 32)
    np.testing.assert_allclose(table.astype(np.float32), expected.astype(np.float32), atol=1e-3)  # row r = r-th sample
    reader = PrecomputedReference(tmp_path / "data", torch.device("cpu"))
    got1, got2 = reader(None, None, torch.tensor([3, 5]))
    np.testing.assert_array_equal(got1.numpy(), table[[3, 5], 0].astype(np.float32))
    np.testing.assert_array_equal(got2.numpy(), table[[3, 5], 1].astype(np.float32))
    assert reader.info["features"] == "precomputed" and reader.info["sha256"] == meta["sha256"]
