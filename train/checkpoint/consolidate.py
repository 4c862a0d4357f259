"""Any checkpoint (ddp model.pt, fsdp2 DCP, DeepSpeed ZeRO) -> one full fp32 state dict, in one process.

Each backend class knows its own format (`Backend.consolidate`); the trained temperature comes from
the checkpoint's `temperature.pt`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model import CLIP
from train.backends import backend_class
from train.checkpoint.files import read_meta, resolve_checkpoint
from train.checkpoint.resolved import checkpoint_model_config
from train.checkpoint.trusted import load_file


def model_from_checkpoint(meta: dict) -> CLIP:
    """An initialised model with the architecture, logit init and SigLIP bias that the checkpoint whose meta.json
    is `meta` was trained with (its `resolved` block; train.checkpoint.resolved)."""
    return CLIP(checkpoint_model_config(meta))


def consolidated_state_dict(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(fp32 CPU state dict, meta) of a checkpoint, whatever backend wrote it: a step_* directory, or `latest` (the
    pointer, a run's checkpoints/ directory or the run directory; train.checkpoint.files.resolve_checkpoint)."""
    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path)
    state = backend_class(meta["backend"]).consolidate(path, model_from_checkpoint(meta).state_dict())
    state = {k: v.detach().float().cpu() for k, v in state.items()}
    trained = load_file(path / "temperature.pt")  # the trained fp32 temperature (the model's own copy is frozen)
    state["logit_scale"] = trained["logit_scale"].float()
    if "logit_bias" in trained:  # SigLIP
        state["logit_bias"] = trained["logit_bias"].float()
    return state, meta


def load_model(checkpoint: str | Path) -> tuple[CLIP, dict]:
    """The trained model (eval mode) and the checkpoint's meta; `checkpoint` as for `consolidated_state_dict`."""
    state, meta = consolidated_state_dict(checkpoint)
    model = model_from_checkpoint(meta)
    model.load_state_dict(state)
    return model.eval(), meta
