"""Our CLIP <-> Hugging Face `transformers.CLIPModel`: state-dict mapping, config, and the saved folder.

The folder is a `CLIPModel.save_pretrained` one (config.json, model.safetensors) plus the processor files
(`CLIPProcessor`: image processor set to our eval transform, tokenizer built from our BPE), so
`CLIPModel.from_pretrained(PATH)` and `CLIPProcessor.from_pretrained(PATH)` work offline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

from model.configs import CLIPConfig
from model.file_modes import follow_umask
from model.hf_tokenizer import build_hf_tokenizer, save_tokenizer_files
from model.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from model.state_mapping import Rule, to_ours, to_theirs

FORMAT = "Hugging Face CLIPModel"
WEIGHTS_FILE = "model.safetensors"
# Older transformers saved the position-id buffers; they are not weights.
IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def _block_rules(ours: str, theirs: str, norms: tuple[str, str], fc: tuple[str, str]) -> list[Rule]:
    b, t = f"{ours}.{{i}}", f"{theirs}.{{i}}"
    rules = []
    for param in ("weight", "bias"):
        qkv = tuple(f"{t}.self_attn.{name}_proj.{param}" for name in ("q", "k", "v"))
        rules += [
            Rule(f"{b}.{norms[0]}.{param}", (f"{t}.layer_norm1.{param}",)),
            Rule(f"{b}.attn.qkv.{param}", qkv),
            Rule(f"{b}.attn.proj.{param}", (f"{t}.self_attn.out_proj.{param}",)),
            Rule(f"{b}.{norms[1]}.{param}", (f"{t}.layer_norm2.{param}",)),
            Rule(f"{b}.{fc[0]}.{param}", (f"{t}.mlp.fc1.{param}",)),
            Rule(f"{b}.{fc[1]}.{param}", (f"{t}.mlp.fc2.{param}",)),
        ]
    return rules


def _norm(ours: str, theirs: str) -> list[Rule]:
    return [Rule(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in ("weight", "bias")]


RULES: list[Rule] = [
    Rule("logit_scale", ("logit_scale",), "squeeze"),
    Rule("visual.cls_token", ("vision_model.embeddings.class_embedding",), "squeeze"),
    Rule("visual.pos_embed", ("vision_model.embeddings.position_embedding.weight",), "squeeze"),
    Rule("visual.patch_embed.proj.weight", ("vision_model.embeddings.patch_embedding.weight",)),
    *_norm("visual.norm_pre", "vision_model.pre_layrnorm"),
    *_block_rules("visual.blocks", "vision_model.encoder.layers", ("norm1", "norm2"), ("mlp.fc1", "mlp.fc2")),
    *_norm("visual.norm", "vision_model.post_layernorm"),
    Rule("visual.head.weight", ("visual_projection.weight",)),
    Rule("text.token_embedding.weight", ("text_model.embeddings.token_embedding.weight",)),
    Rule("text.positional_embedding", ("text_model.embeddings.position_embedding.weight",)),
    *_block_rules("text.blocks", "text_model.encoder.layers", ("ln_1", "ln_2"), ("mlp.0", "mlp.2")),
    *_norm("text.ln_final", "text_model.final_layer_norm"),
    Rule("text.text_projection.weight", ("text_projection.weight",)),
]


def hf_config(cfg: CLIPConfig, logit_scale: float | None = None) -> transformers.CLIPConfig:
    """`transformers.CLIPConfig` of our architecture. Token ids follow our tokenizer (pad 0, EOT 49407)."""
    v, t = cfg.vision, cfg.text
    act = "quick_gelu" if cfg.quick_gelu else "gelu"  # both towers; "gelu" is the exact erf GELU, like ours
    text = transformers.CLIPTextConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.width,
        intermediate_size=int(t.width * t.mlp_ratio),
        projection_dim=cfg.embed_dim,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        max_position_embeddings=t.context_length,
        hidden_act=act,
        layer_norm_eps=1e-5,
        pad_token_id=0,
        bos_token_id=49406,
        eos_token_id=49407,
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=v.width,
        intermediate_size=int(v.width * v.mlp_ratio),
        projection_dim=cfg.embed_dim,
        num_hidden_layers=v.layers,
        num_attention_heads=v.heads,
        num_channels=v.in_chans,
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_act=act,
        layer_norm_eps=1e-5,
    )
    out = transformers.CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=cfg.embed_dim,
        logit_scale_init_value=cfg.init_logit_scale if logit_scale is None else logit_scale,
    )
    out.architectures = ["CLIPModel"]
    return out


def hf_processor(cfg: CLIPConfig) -> transformers.CLIPProcessor:
    """Image processor = our eval transform (shortest side bicubic, center crop, OpenAI mean/std) + tokenizer.

    Two differences are transformers' own and no setting removes them: its center crop starts at
    floor(margin / 2) where OpenAI / torchvision round it (one pixel apart when the resized long side leaves
    an odd margin), and its default torchvision backend's bicubic resize can round one grey level
    differently; `CLIPProcessor.from_pretrained(PATH, backend="pil")` avoids the latter.
    """
    size = cfg.vision.image_size
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=3,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )
    return transformers.CLIPProcessor(image_processor=image_processor, tokenizer=build_hf_tokenizer(cfg.text))


# Config fields compared before loading: weight shapes cannot show the activation or the number of heads.
CHECKED_FIELDS = {
    "text_config": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "vocab_size",
        "hidden_act",
    ),
    "vision_config": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "num_channels",
        "hidden_act",
    ),
}


def check_config(folder: Path, cfg: CLIPConfig) -> None:
    """Refuse a CLIPModel folder whose config.json differs from our architecture, naming the first field."""
    if not (folder / "config.json").is_file():
        return
    theirs, ours = transformers.CLIPConfig.from_pretrained(folder), hf_config(cfg)
    for tower, fields in CHECKED_FIELDS.items():
        for field in fields:
            got, want = getattr(getattr(theirs, tower), field), getattr(getattr(ours, tower), field)
            if got != want:
                raise ValueError(
                    f"{folder / 'config.json'}: {tower}.{field} is {got!r}, our model needs {want!r}: "
                    "another architecture (check model.name and model.overrides)"
                )


def to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return to_theirs(state, RULES, FORMAT)


def from_hf(state: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `CLIPModel` state dict -> ours; refuses another architecture (see `to_ours`)."""
    return to_ours(state, template, RULES, FORMAT, IGNORED_KEYS)


def save_hf(state: Mapping[str, torch.Tensor], cfg: CLIPConfig, out: str | Path) -> Path:
    """Write a `CLIPModel.save_pretrained` folder with processor and tokenizer files into `out`."""
    if "logit_bias" in state:
        raise ValueError(
            "a Hugging Face CLIPModel has no logit bias, so this SigLIP-trained model cannot be exported "
            "to hf without changing its logits; export it --to open_clip (which keeps the bias)"
        )
    folder = Path(out)
    config = hf_config(cfg, float(state["logit_scale"].reshape(-1)[0]))
    with torch.device("meta"):  # only the key/shape check; the weights are assigned below
        model = transformers.CLIPModel(config)
    model.load_state_dict(to_hf(state), strict=True, assign=True)
    model.save_pretrained(folder)
    processor = hf_processor(cfg)
    processor.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)  # preprocessor_config.json, for transformers < 5
    save_tokenizer_files(folder)
    follow_umask(folder)  # the weights come from safetensors, which writes 0600
    return folder


def load_hf_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of a `CLIPModel.save_pretrained` folder (sharded or not) or of one `.safetensors` / `.bin` file."""
    p = Path(path)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(p / shard)).items()}
    if p.is_dir():
        p = next((p / f for f in (WEIGHTS_FILE, "pytorch_model.bin") if (p / f).is_file()), p / WEIGHTS_FILE)
    if not p.is_file():
        raise FileNotFoundError(f"Hugging Face CLIP weights not found: {p} (give a CLIPModel folder or its weights)")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
