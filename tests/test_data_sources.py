"""csv and Hugging Face datasets sources, the eval reader, make_shards subcommands, DataConfig validation."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

import tools.make_shards as make_shards
from data.config import CsvOptions, DataConfig, HfOptions
from data.loader import build_eval_loader, build_train_loader
from data.shards import ShardWriter
from data.tokenizer import get_tokenizer
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize_pixels
from tests.checks import keys_of
from tests.data_fixtures import caption_of, decode_colors, key_color, png, write_shards
from train.config_io import ConfigError, from_dict

MEAN, STD = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float64), torch.tensor(OPENAI_CLIP_STD, dtype=torch.float64)


def write_csv(tmp_path, n: int = 10) -> str:
    os.makedirs(tmp_path / "img", exist_ok=True)
    rows = []
    for k in range(n):
        (tmp_path / "img" / f"{k}.png").write_bytes(png(k))
        rows.append({"filepath": f"img/{k}.png", "title": caption_of(k)})
    rows[3]["filepath"] = "img/does-not-exist.png"
    rows[5]["title"] = ""
    (tmp_path / "img" / "7.png").write_bytes(b"garbage")
    path = str(tmp_path / "pairs.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["filepath", "title"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_source_row_number_is_the_index(tmp_path):
    path = write_csv(tmp_path)
    loader = build_train_loader(DataConfig(source="csv", path=path, batch_size=5, workers=0, image_size=8), 0, 1)
    assert loader.num_samples == 10 and loader.steps_per_epoch == 2
    batches = list(loader)
    got = [k for b in batches for k in b["index"].tolist()]
    assert set(got) == {0, 1, 2, 4, 6, 8, 9}  # rows 3, 5, 7 are skipped and their slots refilled
    for b in batches:
        colors = decode_colors(normalize_pixels(b["pixels"]), MEAN, STD)
        assert [tuple(c) for c in colors] == [key_color(k) for k in b["index"].tolist()]
    counts = loader.skipped_counts()
    assert counts["missing_image"] >= 1 and counts["missing_caption"] >= 1 and counts["corrupt_image"] >= 1

    ev = build_eval_loader(path, 8, 4, source="csv")
    assert keys_of(ev) == [0, 1, 2, 4, 6, 8, 9]
    assert {k: v for k, v in ev.skipped_counts().items() if v} == {
        "missing_image": 1,
        "missing_caption": 1,
        "corrupt_image": 1,
    }


def test_csv_source_errors(tmp_path):
    path = write_csv(tmp_path)
    with pytest.raises(ValueError, match="column 'caption' not in"):
        build_train_loader(DataConfig(source="csv", path=path, csv=CsvOptions(caption_key="caption")), 0, 1)
    with pytest.raises(FileNotFoundError):
        build_train_loader(DataConfig(source="csv", path=str(tmp_path / "nope.csv")), 0, 1)


def test_hf_datasets_source(tmp_path):
    import datasets
    from PIL import Image

    n = 12
    images = [Image.new("RGB", (8, 8), key_color(k)) for k in range(n)]
    texts = [caption_of(k) for k in range(n)]
    texts[4] = None
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["a", "b", "c"]),
        }
    )
    ds = datasets.Dataset.from_dict({"image": images, "text": texts, "label": [k % 3 for k in range(n)]}, features)
    ds.save_to_disk(str(tmp_path / "ds"))

    cfg = DataConfig(source="hf", path=str(tmp_path / "ds"), batch_size=4, workers=2, image_size=8)
    loader = build_train_loader(cfg, 0, 1)
    batches = list(loader)
    got = [k for b in batches for k in b["index"].tolist()]
    assert len(got) == 12 and set(got) == set(range(n)) - {4}
    assert loader.skipped_counts()["missing_caption"] >= 1
    tok = get_tokenizer()
    for b in batches:
        colors = decode_colors(normalize_pixels(b["pixels"]), MEAN, STD)
        for j, k in enumerate(b["index"].tolist()):
            assert tuple(colors[j]) == key_color(k)
            assert torch.equal(b["tokens"][j], tok([caption_of(k)])[0])

    ev = build_eval_loader(str(tmp_path / "ds"), 8, 5, source="hf")
    assert ev.class_names == ["a", "b", "c"]
    labels = torch.cat([b["label"] for b in ev])
    assert keys_of(ev) == [k for k in range(n) if k != 4]
    assert labels.tolist() == [k % 3 for k in range(n) if k != 4]


def test_hf_source_from_local_parquet(tmp_path, monkeypatch):
    import datasets
    from PIL import Image

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    features = datasets.Features({"jpg": datasets.Image(), "caption": datasets.Value("string")})
    images = [Image.new("RGB", (8, 8), key_color(k)) for k in range(6)]
    ds = datasets.Dataset.from_dict({"jpg": images, "caption": [caption_of(k) for k in range(6)]}, features)
    ds.to_parquet(str(tmp_path / "pairs.parquet"))
    ev = build_eval_loader(
        str(tmp_path / "pairs.parquet"), 8, 4, source="hf", hf=HfOptions(image_key="jpg", caption_key="caption")
    )
    batches = list(ev)
    assert keys_of(batches) == list(range(6)) and "label" not in batches[0]
    colors = decode_colors(torch.cat([b["images"] for b in batches]), MEAN, STD)
    assert [tuple(c) for c in colors] == [key_color(k) for k in range(6)]


def test_eval_loader_fixed_order_with_labels(tmp_path):
    keys = write_shards(tmp_path, [5, 4, 6], keys=[10 + 2 * i for i in range(15)])
    ev = build_eval_loader(str(tmp_path), image_size=8, batch_size=4, workers=2)
    assert ev.class_names == ["zero", "one", "two"] and len(ev) == 4
    for _ in range(2):  # every pass is the same single pass
        batches = list(ev)
        assert [len(b["index"]) for b in batches] == [4, 4, 4, 3]
        assert keys_of(batches) == list(range(15))  # dense rows: shard order, then tar order
        assert torch.cat([b["label"] for b in batches]).tolist() == [k % 3 for k in keys]
        colors = decode_colors(torch.cat([b["images"] for b in batches]), MEAN, STD)
        assert [tuple(c) for c in colors] == [key_color(k) for k in keys]


def test_eval_loader_counts_bad_samples_exactly(tmp_path):
    w = ShardWriter(str(tmp_path), shard_size=4)
    for k in range(6):
        w.write(k, png(k), "png", caption_of(k), label=1)
    w.write(6, b"broken", "jpg", "bad", label=1)
    w.write(None, png(7), "png", "no key", label=1)
    w.close()
    from data.manifest import build_manifest

    build_manifest(w.paths, str(tmp_path), {"classes": ["x", "y"]})
    ev = build_eval_loader(str(tmp_path), 8, 3, workers=2)
    assert keys_of(ev) == [0, 1, 2, 3, 4, 5, 7]  # row 6 is broken; row 7 has no json key: its tar key stands in
    assert {k: v for k, v in ev.skipped_counts().items() if v} == {"corrupt_image": 1}


def test_make_shards_fashion_mnist(tmp_path):
    src = make_shards.FASHION_MNIST_DIR
    if not os.path.exists(os.path.join(src, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    out = tmp_path / "fm"
    make_shards.main(["fashion-mnist", "--out", str(out), "--limit", "30", "--shard-size", "12"])
    for split in ("train", "test"):
        manifest = json.loads((out / split / "manifest.json").read_text())
        assert manifest["total"] == 30 and manifest["num_samples"] == 30 and len(manifest["shards"]) == 3
        assert manifest["classes"][9] == "ankle boot"
        assert "a photo of an ankle boot." in manifest["class_prompts"]["ankle boot"]
    labels = make_shards._read_idx(os.path.join(src, "t10k-labels-idx1-ubyte.gz"))[:30]
    images = make_shards._read_idx(os.path.join(src, "t10k-images-idx3-ubyte.gz"))[:30]
    ev = build_eval_loader(str(out / "test"), image_size=28, batch_size=16)
    batches = list(ev)
    assert keys_of(batches) == list(range(30))
    assert torch.cat([b["label"] for b in batches]).tolist() == labels.tolist()
    grey = decode_colors(torch.cat([b["images"] for b in batches]), MEAN, STD)  # mean colour per image
    assert np.abs(grey[:, 0] - images.reshape(30, -1).mean(1)).max() <= 1  # pixels are the idx pixels
    tok = get_tokenizer()
    names = [make_shards.FASHION_CLASSES[lab] for lab in labels]
    caps = [make_shards.caption(t, n) for n in names for t in make_shards.CAPTION_TEMPLATES]
    cap_tokens = {tuple(t.tolist()) for t in tok(caps)}
    assert all(tuple(t.tolist()) in cap_tokens for b in batches for t in b["tokens"])
    train = build_train_loader(DataConfig(path=str(out / "train"), batch_size=8, workers=0, image_size=32), 0, 1)
    pixels = next(iter(train))["pixels"]
    assert pixels.dtype == torch.uint8 and normalize_pixels(pixels).shape == (8, 3, 32, 32)


def test_make_shards_folder_and_csv(tmp_path):
    src = tmp_path / "folder"
    for cls in ("cat", "dog"):
        os.makedirs(src / cls)
        for k in range(3):
            (src / cls / f"{k}.png").write_bytes(png(k))
            if not (cls == "dog" and k == 2):
                (src / cls / f"{k}.txt").write_text(f"a {cls} number {k}")
    make_shards.main(
        ["folder", "--src", str(src), "--out", str(tmp_path / "s1"), "--labels-from-dirs", "--shard-size", "2"]
    )
    ev = build_eval_loader(str(tmp_path / "s1"), 8, 10, need_caption=False)
    (batch,) = list(ev)
    assert ev.class_names == ["cat", "dog"]
    # labelled: dog/2 has no caption and is kept (a zero-shot set needs no captions)
    assert batch["index"].tolist() == [0, 1, 2, 3, 4, 5] and batch["label"].tolist() == [0, 0, 0, 1, 1, 1]

    path = write_csv(tmp_path)
    make_shards.main(["csv", "--src", path, "--out", str(tmp_path / "s2"), "--shard-size", "4"])
    ev = build_eval_loader(str(tmp_path / "s2"), 8, 10, need_caption=False)
    # csv rows 3 (no file) and 5 (no caption) left out by the tool; csv row 7 (dense row 5) kept, not decodable
    assert keys_of(ev) == [0, 1, 2, 3, 4, 6, 7]
    assert {k: v for k, v in ev.skipped_counts().items() if v} == {"corrupt_image": 1}


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"source": "parquet"}, "data.source"),
        ({"path": ""}, "data.path"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"workers": -1}, "data.workers"),
        ({"image_size": 2.5}, "data.image_size"),
        ({"seed": -3}, "data.seed"),
        ({"num_samples": 0}, "data.num_samples"),
        ({"drop_last": "yes"}, "data.drop_last"),
        ({"train_crop_scale": (0.5, 1.2)}, "data.train_crop_scale"),
        ({"csv": {"separator": "::"}}, "data.csv.separator"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**{"path": "x", **kw})


def test_config_from_yaml_mapping():
    """The data section goes through the one config parser: lists become tuples, typos name key and file."""
    cfg = from_dict(DataConfig, {"path": "shards/", "batch_size": 8, "train_crop_scale": [0.9, 1.0]}, "r.yaml", "data.")
    assert cfg.batch_size == 8 and cfg.train_crop_scale == (0.9, 1.0)
    with pytest.raises(ConfigError, match=r"recipe.yaml: unknown key 'data.batchsize'"):
        from_dict(DataConfig, {"path": "x", "batchsize": 8}, "recipe.yaml", "data.")
