"""Start a run from an open_clip or Hugging Face CLIP checkpoint: `model.init_from: open_clip:PATH | hf:PATH`.

Only the towers' weights are taken. The temperature follows the recipe's loss (`loss.tau_init`), and the
optimizer and per-sample state start fresh, as for any new run. The model is loaded before a backend
wraps or shards it, so this works on every backend.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from model.clip import CLIP

logger = logging.getLogger(__name__)

SOURCES = ("open_clip", "hf")


def parse_init_from(spec: str) -> tuple[str, Path]:
    """'open_clip:PATH' or 'hf:PATH' -> (source, path); anything else is a ValueError naming the key."""
    source, sep, path = spec.partition(":")
    if not sep or source not in SOURCES or not path:
        raise ValueError(
            f"model.init_from must be 'open_clip:PATH' (an open_clip folder, .safetensors or .pt) or 'hf:PATH' "
            f"(a Hugging Face CLIPModel folder), got {spec!r}"
        )
    return source, Path(path)


def pretrained_state(spec: str, model: CLIP) -> dict[str, torch.Tensor]:
    """The checkpoint named by `spec` as `model`'s state dict; another architecture is refused (its config, where
    the folder has one, then every weight's name and shape)."""
    source, path = parse_init_from(spec)
    if not path.exists():
        raise FileNotFoundError(f"model.init_from: {path} does not exist")
    # Imported here: config validation imports this module, and only loading needs transformers.
    if source == "open_clip":
        from model.convert_open_clip import check_config
        from model.convert_open_clip import from_open_clip as convert
        from model.convert_open_clip import load_open_clip_state as load
    else:
        from model.convert_hf import check_config
        from model.convert_hf import from_hf as convert
        from model.convert_hf import load_hf_state as load
    try:
        if path.is_dir():
            check_config(path, model.config)
        # The bias is the loss's (SigLIP's), like the temperature: neither side's is required or taken.
        template = {k: v for k, v in model.state_dict().items() if k != "logit_bias"}
        return convert({k: v for k, v in load(path).items() if k != "logit_bias"}, template)
    except ValueError as err:
        raise ValueError(f"model.init_from {spec!r}: {err}") from err


def load_pretrained(model: CLIP, spec: str) -> None:
    """Load the towers from `spec` into `model` in place; the model keeps its own logit_scale."""
    state = pretrained_state(spec, model)
    theirs = float(state["logit_scale"].reshape(-1)[0])
    state["logit_scale"] = model.logit_scale.detach().clone()
    if hasattr(model, "logit_bias"):
        state["logit_bias"] = model.logit_bias.detach().clone()
    model.load_state_dict(state, strict=True)
    logger.info(
        "loaded %d tensors from %s; its temperature (tau %.4f) is not used, the loss starts from loss.tau_init",
        len(state) - 1,
        spec,
        math.exp(-theirs),
    )
