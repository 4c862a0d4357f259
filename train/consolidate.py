"""Any checkpoint (ddp model.pt, fsdp2 DCP, DeepSpeed ZeRO) -> one full fp32 state dict, in one process."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from model import CLIP, create_model
from train.checkpoint import is_complete, read_meta


def model_from_meta(meta: dict) -> CLIP:
    """An empty (randomly initialised) model with the checkpoint's architecture."""
    section = meta["config"]["model"]
    return create_model(section["name"], **section.get("overrides", {}))


def consolidated_state_dict(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(fp32 CPU state dict, meta) of a complete checkpoint directory, whatever backend wrote it."""
    path = Path(checkpoint)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint directory (no meta.json); use a step_* dir")
    meta = read_meta(path)
    backend = meta["backend"]
    if backend == "ddp":
        state = torch.load(path / "model.pt", map_location="cpu")
    elif backend == "fsdp2":
        state = model_from_meta(meta).state_dict()
        dcp.load({"model": state}, checkpoint_id=str(path / "dcp"))  # no process group: loads full tensors
    elif backend == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(path / "deepspeed"), tag="state")
    else:
        raise ValueError(f"{path}: unknown backend {backend!r} in meta.json")
    return {k: v.detach().float().cpu() for k, v in state.items()}, meta


def load_model(checkpoint: str | Path) -> tuple[CLIP, dict]:
    """The trained model (eval mode) and the checkpoint's meta."""
    state, meta = consolidated_state_dict(checkpoint)
    model = model_from_meta(meta)
    model.load_state_dict(state)
    return model.eval(), meta
