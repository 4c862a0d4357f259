"""Export to open_clip / Hugging Face CLIPModel and import from them (model/convert_*.py, model/init_from.py).

Equality is measured on real inputs (Fashion-MNIST test images, scikit-image's photos, their captions),
each library running its own preprocessing and tokenizer. Tolerances (fp32): embeddings within 1e-4 and
cosine > 0.99999; weights after a round trip bitwise equal; token ids identical.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file

from data.tokenizer import get_tokenizer
from data.transforms import OPENAI_CLIP_STD, normalize_batch, to_rgb_array
from evaluation.prompts import FASHION_MNIST_CLASSNAMES, FASHION_MNIST_TEMPLATES
from evaluation.zeroshot import build_zeroshot_classifier
from model import CLIP, MODEL_CONFIGS, create_model, get_model_config
from model.convert_hf import from_hf, hf_config, load_hf_state, save_hf, to_hf
from model.convert_open_clip import (
    WEIGHTS_FILE,
    from_open_clip,
    load_open_clip_state,
    model_cfg,
    save_open_clip,
    to_open_clip,
)
from model.init_from import load_pretrained
from tests.export_fixtures import (
    Embedders,
    HFTowers,
    briefly_trained_demo,
    fashion_captions,
    fashion_mnist_test,
    photos,
)
from train.config import ModelSection

ATOL, MIN_COSINE = 1e-4, 0.99999
VARIANTS = {"tiny": {}, "demo": {}, "tiny-quick_gelu": {"quick_gelu": True}}


def _model(variant: str, seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return create_model(variant.split("-")[0], **VARIANTS[variant]).eval()


def _export(model: CLIP, folder: Path) -> tuple[Path, Path]:
    state = model.state_dict()
    return save_open_clip(state, model.config, folder / "open_clip"), save_hf(state, model.config, folder / "hf")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Embedders, Path, Path]]:
    """Per variant (built once): our model, its two exports and the libraries' models loaded from them."""
    cache: dict[str, tuple[Embedders, Path, Path]] = {}

    def get(variant: str) -> tuple[Embedders, Path, Path]:
        if variant not in cache:
            model = _model(variant)
            oc_dir, hf_dir = _export(model, tmp_path_factory.mktemp(variant))
            cache[variant] = (Embedders.load(model, oc_dir, hf_dir), oc_dir, hf_dir)
        return cache[variant]

    return get


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("name", [*MODEL_CONFIGS, "ViT-B-32-quickgelu"])  # open_clip's name for OpenAI's variant
def test_every_named_model_maps_onto_both_libraries(name: str) -> None:
    """Key sets and shapes equal each library's own model built from the exported config (meta tensors)."""
    cfg = get_model_config(name.removesuffix("-quickgelu"), quick_gelu=name.endswith("-quickgelu"))
    with torch.device("meta"):
        ours = CLIP(cfg).state_dict()
        theirs_oc = open_clip.model.CLIP(**model_cfg(cfg)).state_dict()
        hf = transformers.CLIPModel(hf_config(cfg))
    assert _shapes(to_open_clip(ours)) == _shapes(theirs_oc)
    assert _shapes(to_hf(ours)) == _shapes(hf.state_dict())
    assert hf.config.vision_config.hidden_act == hf.config.text_config.hidden_act
    assert (hf.config.text_config.hidden_act == "quick_gelu") == cfg.quick_gelu
    if name in open_clip.list_models():  # the exported config is open_clip's own for its named models
        builtin = open_clip.get_model_config(name)
        exported = model_cfg(cfg)
        assert exported["embed_dim"] == builtin["embed_dim"]
        assert exported.get("quick_gelu", False) == builtin.get("quick_gelu", False)
        for tower in ("vision_cfg", "text_cfg"):
            assert {k: builtin[tower].get(k, v) for k, v in exported[tower].items()} == exported[tower], tower


@pytest.fixture(scope="module")
def vit_b32() -> CLIP:
    torch.manual_seed(0)
    return create_model("ViT-B-32")


@pytest.mark.slow  # a full ViT-B/32 through both libraries: seconds, make test only
def test_vit_b32_key_mapping_round_trips_through_both_libraries(vit_b32: CLIP) -> None:
    """ours -> library model (strict load) -> its state dict -> ours is bitwise the original."""
    ours, cfg = vit_b32.state_dict(), vit_b32.config
    with torch.device("meta"):
        oc = open_clip.model.CLIP(**model_cfg(cfg))
        hf = transformers.CLIPModel(hf_config(cfg))
    oc.load_state_dict(to_open_clip(ours), strict=True, assign=True)
    hf.load_state_dict(to_hf(ours), strict=True, assign=True)
    for back in (from_open_clip(oc.state_dict(), ours), from_hf(hf.state_dict(), ours)):
        assert back.keys() == ours.keys()
        assert all(torch.equal(back[k], ours[k]) for k in ours)
    assert torch.equal(oc.visual.proj, ours["visual.head.weight"].T)  # a transposed one, spot-checked
    q, k, v = (hf.state_dict()[f"text_model.encoder.layers.3.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(torch.cat([q, k, v]), ours["text.blocks.3.attn.qkv.weight"])


@pytest.mark.slow  # exports and loads three libraries' models: seconds, make test only
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_embeddings_agree_on_real_inputs(variant: str, exported: Callable) -> None:
    """HF is compared on the images its processor crops like OpenAI (all but odd-margin photos, see below)."""
    embedders, _, _ = exported(variant)
    images = photos()[0] + fashion_mnist_test(64)[0]
    pixels = embedders.pixels(images)
    same_pixels = (pixels["hf"] - pixels["ours"]).abs().flatten(1).amax(dim=1) < 1e-6
    assert same_pixels.sum() >= len(images) - 2, same_pixels
    image_emb = embedders.images(images)
    text_emb = embedders.texts(photos()[1] + fashion_captions())
    for name in ("open_clip", "hf"):
        rows = same_pixels if name == "hf" else torch.ones(len(images), dtype=torch.bool)
        for kind, emb, keep in (("image", image_emb, rows), ("text", text_emb, slice(None))):
            ours, theirs = emb["ours"][keep], emb[name][keep]
            diff = (theirs - ours).abs().max().item()
            cosine = (theirs * ours).sum(dim=1).min().item()
            print(f"{variant} {kind} ours vs {name} ({len(ours)}): max |diff| {diff:.2e}, min cosine {cosine:.8f}")
            assert diff < ATOL and cosine > MIN_COSINE, (variant, kind, name, diff, cosine)


def _floor_crop(image: Image.Image, size: int) -> torch.Tensor:
    """Our eval transform, but centre-cropped at floor((W - S) / 2) as transformers' CLIPImageProcessor does
    (OpenAI / torchvision round it: one pixel further when the resized image leaves an odd margin)."""
    w, h = image.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return normalize_batch(to_rgb_array(image.crop((left, top, left + size, top + size)))[None])[0]


@pytest.mark.parametrize("variant", ["tiny", "demo"])  # 32 px (rocket has an odd margin) and 28 px (coins)
def test_hf_processor_is_our_eval_transform_up_to_its_crop_offset(variant: str, exported: Callable) -> None:
    """PIL backend: our pixels (float rounding) except the crop offset on odd margins. Default torchvision
    backend: the same within one grey level (its bicubic resize rounds differently)."""
    embedders, _, hf_dir = exported(variant)
    size = embedders.ours.config.vision.image_size
    images = photos()[0] + fashion_mnist_test(16)[0]
    pixels = embedders.pixels(images)
    floor_crop = torch.stack([_floor_crop(i, size) for i in images])
    default = transformers.CLIPProcessor.from_pretrained(hf_dir)(images=images, return_tensors="pt")["pixel_values"]
    odd = (pixels["ours"] - floor_crop).abs().flatten(1).amax(dim=1) > 0
    one_level = 1 / (255 * min(OPENAI_CLIP_STD))
    print(
        f"{variant}: {int(odd.sum())} of {len(images)} images with an odd crop margin; pixels vs ours: PIL backend "
        f"{(pixels['hf'] - pixels['ours'])[~odd].abs().max():.2e}, torchvision backend "
        f"{(default - pixels['ours'])[~odd].abs().max():.2e} (one grey level = {one_level:.4f})"
    )
    assert odd.any()  # the difference is exercised
    torch.testing.assert_close(pixels["hf"], floor_crop, rtol=0, atol=1e-6)
    torch.testing.assert_close(pixels["open_clip"], pixels["ours"], rtol=0, atol=1e-6)
    assert (default - floor_crop).abs().max() <= one_level + 1e-6


def test_exports_load_without_missing_or_unexpected_keys(exported: Callable) -> None:
    embedders, oc_dir, hf_dir = exported("tiny")
    result = embedders.open_clip_model.load_state_dict(load_file(str(oc_dir / WEIGHTS_FILE)), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    _, info = transformers.CLIPModel.from_pretrained(hf_dir, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


@pytest.mark.parametrize("variant", ["tiny", "demo"])
def test_round_trips_are_exact(variant: str, exported: Callable) -> None:
    """ours -> files -> library model -> ours, and ours -> files -> ours: every tensor bitwise equal."""
    embedders, oc_dir, hf_dir = exported(variant)
    ours = embedders.ours.state_dict()
    trips = {
        "open_clip model": from_open_clip(embedders.open_clip_model.state_dict(), ours),
        "hf model": from_hf(embedders.hf.state_dict(), ours),
        "open_clip file": from_open_clip(load_open_clip_state(oc_dir), ours),
        "hf file": from_hf(load_hf_state(hf_dir), ours),
    }
    for name, back in trips.items():
        assert back.keys() == ours.keys(), name
        unequal = [k for k in ours if not torch.equal(back[k], ours[k])]
        assert not unequal, (name, unequal[:3])


TEXTS = [
    "a photo of a t-shirt/top.",
    "wow!! it's 3 o'clock, isn't it?",
    "Ünïcödé café, naïve façade",
    "emoji 😀 test",
    "numbers 1234567 and 3.14",
    "  many   spaces\tand\nnewlines  ",
    "a " * 100,
    "<|endoftext|> in a caption",
]


@pytest.mark.parametrize("variant", ["tiny", "demo"])  # context lengths 77 and 16 (truncation keeps EOT last)
def test_hf_tokenizer_gives_our_token_ids(variant: str, exported: Callable) -> None:
    embedders, _, hf_dir = exported(variant)
    context = embedders.ours.config.text.context_length
    texts = photos()[1] + fashion_captions() + TEXTS
    texts += [t.format(c) for c in FASHION_MNIST_CLASSNAMES for t in FASHION_MNIST_TEMPLATES]
    ours = get_tokenizer(context)(texts)
    assert torch.equal(embedders.open_clip_tokenizer(texts), ours)
    for tokenizer_class in (transformers.CLIPTokenizer, transformers.AutoTokenizer, transformers.CLIPTokenizerFast):
        tokenizer = tokenizer_class.from_pretrained(hf_dir)
        ids = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
        assert torch.equal(ids, ours), tokenizer_class.__name__
        assert tokenizer.model_max_length == context


@pytest.mark.slow
def test_zero_shot_predictions_identical_on_fashion_mnist(tmp_path: Path) -> None:
    """The demo CLIP (briefly trained) and its exports predict the same class for all 10k test images."""
    model = briefly_trained_demo()
    embedders = Embedders.load(model, *_export(model, tmp_path))
    images, labels = fashion_mnist_test()
    features = embedders.images(images)
    hf_tokenize = embedders.processor.tokenizer
    tokenizers = {
        "ours": (model, get_tokenizer(model.config.text.context_length)),
        "open_clip": (embedders.open_clip_model, embedders.open_clip_tokenizer),
        "hf": (
            HFTowers(embedders.hf),
            lambda t: hf_tokenize(t, padding="max_length", truncation=True, return_tensors="pt")["input_ids"],
        ),
    }
    predictions = {}
    for name, (towers, tokenize) in tokenizers.items():
        classifier = build_zeroshot_classifier(
            towers, tokenize, FASHION_MNIST_CLASSNAMES, FASHION_MNIST_TEMPLATES, "cpu", distributed=False
        )
        predictions[name] = (features[name] @ classifier).argmax(dim=1)
        print(f"zero-shot top-1 {name}: {(predictions[name] == labels).double().mean().item():.4f}")
    assert len(predictions["ours"].unique()) == len(FASHION_MNIST_CLASSNAMES)  # not a degenerate classifier
    assert torch.equal(predictions["open_clip"], predictions["ours"])
    assert torch.equal(predictions["hf"], predictions["ours"])


def test_init_from_loads_both_formats_and_keeps_the_temperature(exported: Callable, tmp_path: Path) -> None:
    embedders, oc_dir, hf_dir = exported("tiny")
    source = embedders.ours.state_dict()
    # open_clip training checkpoints wrap the weights: {"epoch", "state_dict": {"module.<key>": ...}}
    epoch_file = tmp_path / "epoch_3.pt"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in load_file(str(oc_dir / WEIGHTS_FILE)).items()}},
        epoch_file,
    )
    specs = (f"open_clip:{oc_dir}", f"open_clip:{epoch_file}", f"open_clip:{oc_dir / WEIGHTS_FILE}", f"hf:{hf_dir}")
    for spec in specs:
        fresh = _model("tiny", seed=1)
        with torch.no_grad():
            fresh.logit_scale.fill_(3.0)  # the recipe's temperature
        load_pretrained(fresh, spec)
        loaded = fresh.state_dict()
        assert all(torch.equal(loaded[k], source[k]) for k in source if k != "logit_scale"), spec
        assert loaded["logit_scale"].item() == 3.0, spec


def test_init_from_refuses_another_architecture(exported: Callable) -> None:
    """A folder's config is compared first (naming the field); a bare weights file by names and shapes."""
    _, oc_dir, hf_dir = exported("tiny")
    with pytest.raises(ValueError, match=r"model.init_from 'open_clip:.*json: embed_dim is 64, our model needs 128"):
        load_pretrained(create_model("demo"), f"open_clip:{oc_dir}")
    first_mismatch = r"'visual.class_embedding' has shape \(64,\), our 'visual.cls_token' needs \(1, 1, 128\)"
    with pytest.raises(ValueError, match=rf"model.init_from 'open_clip:.*{first_mismatch}"):
        load_pretrained(create_model("demo"), f"open_clip:{oc_dir / WEIGHTS_FILE}")
    with pytest.raises(ValueError, match=r"config.json: text_config.num_hidden_layers is 2, our model needs 3"):
        load_pretrained(create_model("tiny", text_layers=3), f"hf:{hf_dir}")
    with pytest.raises(ValueError, match=r"no 'text_model.encoder.layers.2.layer_norm1.weight'"):
        load_pretrained(create_model("tiny", text_layers=3), f"hf:{hf_dir / 'model.safetensors'}")
    # what weight shapes cannot show: activation, heads
    with pytest.raises(ValueError, match=r"open_clip_config.json: quick_gelu is False, our model needs True"):
        load_pretrained(create_model("tiny", quick_gelu=True), f"open_clip:{oc_dir}")
    with pytest.raises(ValueError, match=r"config.json: vision_config.num_attention_heads is 2, our model needs 4"):
        load_pretrained(create_model("tiny", vision_head_width=16), f"hf:{hf_dir}")
    with pytest.raises(FileNotFoundError, match="model.init_from"):
        load_pretrained(create_model("tiny"), f"hf:{hf_dir}/missing")


@pytest.mark.parametrize("spec", ["openclip:/x", "hf:", "/path/without/format", "timm:/x"])
def test_init_from_syntax_is_checked_by_the_config(spec: str) -> None:
    with pytest.raises(ValueError, match="model.init_from must be 'open_clip:PATH'"):
        ModelSection(name="tiny", init_from=spec).validate()
    ModelSection(name="tiny", init_from="hf:/any/path").validate()
