"""Zero-shot evaluation data as users keep it: a class-per-folder image tree (ImageNet val layout)."""

from __future__ import annotations

import io
import os

import pytest
import torch
from PIL import Image

import tools.make_shards as make_shards
from data.loader import build_eval_loader
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from model import create_model
from tests.data_fixtures import decode_colors
from train.config import EvalConfig
from train.evaluator import Evaluator, eval_source

MEAN, STD = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float64), torch.tensor(OPENAI_CLIP_STD, dtype=torch.float64)
WNIDS = ["n01440764", "n01443537", "n01484850"]


def jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def valprep_tree(root) -> list[tuple[int, int]]:
    """root/<wnid>/ILSVRC2012_val_N.JPEG (upper-case extension, as valprep leaves it); returns (label, red)."""
    expected = []
    for label, wnid in enumerate(WNIDS):
        os.makedirs(root / wnid)
        for j in range(label + 2):
            red = 40 * label + 10 * j
            (root / wnid / f"ILSVRC2012_val_{label:04d}{j:04d}.JPEG").write_bytes(jpeg((red, 0, 200)))
            expected.append((label, red))
    return expected


def test_class_folders_are_a_labelled_eval_set(tmp_path):
    expected = valprep_tree(tmp_path / "val")
    assert eval_source(str(tmp_path / "val")) == "imagefolder"
    ev = build_eval_loader(str(tmp_path / "val"), 8, 4, workers=2, source="imagefolder", need_caption=False)
    assert ev.class_names == WNIDS and ev.total == 9
    batches = list(ev)
    assert torch.cat([b["label"] for b in batches]).tolist() == [lab for lab, _ in expected]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(9))
    reds = decode_colors(torch.cat([b["images"] for b in batches]), MEAN, STD)[:, 0]
    assert all(abs(int(r) - red) <= 3 for r, (_, red) in zip(reds, expected, strict=True))  # JPEG rounding


def test_zero_shot_on_a_folder_tree_with_folder_or_registry_names(tmp_path):
    valprep_tree(tmp_path / "val")
    model = create_model("tiny")
    from data.tokenizer import get_tokenizer

    ev = Evaluator(EvalConfig(zeroshot=str(tmp_path / "val"), batch_size=4), 32, torch.device("cpu"), get_tokenizer())
    assert ev.classnames == WNIDS
    assert ev.prompts_line() == (
        f"zero-shot: 3 class names from the data ({tmp_path / 'val'}) ({', '.join(WNIDS)}); "
        f"{len(ev.templates)} templates from registry 'generic' ('a photo of a {{c}}.', ...)"
    )
    assert 0.0 <= ev(model)["zeroshot_top1"] <= 1.0
    with pytest.raises(ValueError, match="has 3 classes, eval.classnames 'imagenet' names 1000"):
        Evaluator(
            EvalConfig(zeroshot=str(tmp_path / "val"), classnames="imagenet"), 32, torch.device("cpu"), get_tokenizer()
        )


def test_make_shards_folder_keeps_caption_less_labelled_images(tmp_path):
    expected = valprep_tree(tmp_path / "val")
    (tmp_path / "val" / WNIDS[0] / "ILSVRC2012_val_00000000.txt").write_text("a caption for one image")
    make_shards.main(
        [
            "folder",
            "--src",
            str(tmp_path / "val"),
            "--out",
            str(tmp_path / "shards"),
            "--labels-from-dirs",
            "--shard-size",
            "4",
        ]
    )
    ev = build_eval_loader(str(tmp_path / "shards"), 8, 16, need_caption=False)
    (batch,) = list(ev)
    assert ev.class_names == WNIDS and batch["label"].tolist() == [lab for lab, _ in expected]
    with pytest.raises(SystemExit, match="names 1000 classes"):
        make_shards.main(
            [
                "folder",
                "--src",
                str(tmp_path / "val"),
                "--out",
                str(tmp_path / "s2"),
                "--labels-from-dirs",
                "--classnames",
                "imagenet",
            ]
        )
