"""Our CLIP <-> open_clip: the state-dict mapping, the model config, and open_clip's hub folder layout.

The folder (`open_clip_config.json` + `open_clip_model.safetensors`) is what open_clip's `push_to_hf_hub`
writes, so `open_clip.create_model_and_transforms('local-dir:PATH')` loads it and it can be uploaded as is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import load_file, save_file

from model.configs import CLIPConfig
from model.file_modes import follow_umask
from model.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from model.state_mapping import Rule, to_ours, to_theirs

FORMAT = "open_clip"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
# Keys an OpenAI / old open_clip state dict may carry that are not weights.
IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _block_rules(ours: str, theirs: str, norms: tuple[str, str], fc: tuple[str, str]) -> list[Rule]:
    b, t = f"{ours}.{{i}}", f"{theirs}.{{i}}"
    rules = []
    for param in ("weight", "bias"):
        rules += [
            Rule(f"{b}.{norms[0]}.{param}", (f"{t}.ln_1.{param}",)),
            Rule(f"{b}.attn.qkv.{param}", (f"{t}.attn.in_proj_{param}",)),
            Rule(f"{b}.attn.proj.{param}", (f"{t}.attn.out_proj.{param}",)),
            Rule(f"{b}.{norms[1]}.{param}", (f"{t}.ln_2.{param}",)),
            Rule(f"{b}.{fc[0]}.{param}", (f"{t}.mlp.c_fc.{param}",)),
            Rule(f"{b}.{fc[1]}.{param}", (f"{t}.mlp.c_proj.{param}",)),
        ]
    return rules


def _norm(ours: str, theirs: str) -> list[Rule]:
    return [Rule(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in ("weight", "bias")]


RULES: list[Rule] = [
    Rule("logit_scale", ("logit_scale",), "squeeze"),
    Rule("logit_bias", ("logit_bias",), "squeeze"),  # SigLIP models only
    Rule("visual.cls_token", ("visual.class_embedding",), "squeeze"),
    Rule("visual.pos_embed", ("visual.positional_embedding",), "squeeze"),
    Rule("visual.patch_embed.proj.weight", ("visual.conv1.weight",)),
    *_norm("visual.norm_pre", "visual.ln_pre"),
    *_block_rules("visual.blocks", "visual.transformer.resblocks", ("norm1", "norm2"), ("mlp.fc1", "mlp.fc2")),
    *_norm("visual.norm", "visual.ln_post"),
    Rule("visual.head.weight", ("visual.proj",), "transpose"),
    Rule("text.token_embedding.weight", ("token_embedding.weight",)),
    Rule("text.positional_embedding", ("positional_embedding",)),
    *_block_rules("text.blocks", "transformer.resblocks", ("ln_1", "ln_2"), ("mlp.0", "mlp.2")),
    *_norm("text.ln_final", "ln_final"),
    Rule("text.text_projection.weight", ("text_projection",), "transpose"),
]


def model_cfg(cfg: CLIPConfig) -> dict[str, Any]:
    """open_clip's `model_cfg` for our architecture (the same fields as its built-in ViT JSON configs)."""
    v, t = cfg.vision, cfg.text
    if v.in_chans != 3:
        raise ValueError(f"open_clip's ViT takes 3-channel images; this model has vision in_chans={v.in_chans}")
    out: dict[str, Any] = {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "image_size": v.image_size,
            "layers": v.layers,
            "width": v.width,
            "head_width": v.head_width,
            "mlp_ratio": v.mlp_ratio,
            "patch_size": v.patch_size,
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
            "mlp_ratio": t.mlp_ratio,
        },
    }
    if cfg.quick_gelu:
        out["quick_gelu"] = True
    if cfg.init_logit_bias is not None:  # open_clip then builds (and loads) its logit_bias parameter
        out["init_logit_bias"] = cfg.init_logit_bias
    return out


def preprocess_cfg(cfg: CLIPConfig) -> dict[str, Any]:
    """Our eval transform in open_clip's terms: shortest side -> size (bicubic), center crop, OpenAI mean/std."""
    return {
        "size": cfg.vision.image_size,
        "mode": "RGB",
        "mean": list(OPENAI_CLIP_MEAN),
        "std": list(OPENAI_CLIP_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def check_config(folder: Path, cfg: CLIPConfig) -> None:
    """Refuse an open_clip folder whose config differs from our architecture, naming the first field.

    Weight shapes cannot show the activation (quick_gelu) or how the width splits into heads.
    """
    file = folder / CONFIG_FILE
    if not file.is_file():
        return
    theirs = json.loads(file.read_text()).get("model_cfg", {})
    expected = model_cfg(cfg)
    found = {"embed_dim": theirs.get("embed_dim"), "quick_gelu": theirs.get("quick_gelu", False)}
    wanted = {"embed_dim": expected["embed_dim"], "quick_gelu": cfg.quick_gelu}
    for tower, defaults in (("vision_cfg", CLIPVisionCfg()), ("text_cfg", CLIPTextCfg())):
        found |= {f"{tower}.{k}": v for k, v in (asdict(defaults) | theirs.get(tower, {})).items()}
        wanted |= {f"{tower}.{k}": v for k, v in expected[tower].items()}
    for name, want in wanted.items():
        if _scalar(found[name]) != want:
            raise ValueError(
                f"{file}: {name} is {found[name]!r}, our model needs {want!r}: another architecture "
                "(check model.name and model.overrides)"
            )


def _scalar(value: Any) -> Any:
    """open_clip writes some sizes as [n, n]; compare them as n."""
    return value[0] if isinstance(value, list) and value and all(v == value[0] for v in value) else value


def to_open_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return to_theirs(state, RULES, FORMAT)


def from_open_clip(state: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip (or OpenAI-layout) state dict -> ours; refuses another architecture (see `to_ours`)."""
    return to_ours(state, template, RULES, FORMAT, IGNORED_KEYS)


def save_open_clip(state: Mapping[str, torch.Tensor], cfg: CLIPConfig, out: str | Path) -> Path:
    """Write open_clip's hub layout into `out`: config (model + preprocessing) and safetensors weights."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg(cfg), "preprocess_cfg": preprocess_cfg(cfg)}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(to_open_clip(state), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    follow_umask(folder / WEIGHTS_FILE)  # safetensors writes 0600
    return folder


def load_open_clip_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of an open_clip model: a hub folder, a `.safetensors` file, or a `torch.save`d checkpoint.

    Training checkpoints (`epoch_N.pt`: {"state_dict": {"module.visual...": ...}}) are unwrapped the way
    open_clip's own `load_checkpoint` does.
    """
    p = Path(path)
    if p.is_dir():
        p = next((p / f for f in (WEIGHTS_FILE, "open_clip_pytorch_model.bin") if (p / f).is_file()), p / WEIGHTS_FILE)
    if not p.is_file():
        raise FileNotFoundError(f"open_clip weights not found: {p} (give an open_clip folder, .safetensors or .pt)")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{p}: not an open_clip state dict (expected tensors, or a dict with 'state_dict')")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state
