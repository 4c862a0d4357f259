"""Contrastive losses: OpenCLIP and SigLIP baselines, and FastCLIP v0-v3 with sharded per-sample state.

The trainer calls::

    loss = build_loss(cfg, num_samples, group)   # num_samples = rows of the per-sample table; group = data-parallel
    loss.set_epoch(epoch)                        # every epoch (gamma), also after resuming
    temperature = GlobalTemperature(tau_spec(cfg), betas, eps, device, group)   # fp32 logit_scale, every rank
    out = loss(img_f, txt_f, index, temperature.logit_scale, temperature.logit_bias)  # bias: siglip
    out.loss.backward()                      # backend then AVERAGES parameter gradients
    temperature.step(lr, base_lr)            # averages its gradient over ranks, Adam step, clamp

and saves `loss.state_dict()` per rank; to resume on another world size it loads all saved
rank states and calls `repartition_loss_states(states, new_world_size)[rank]`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from train.losses.config import LossConfig  # torch-free: a recipe's loss section is checked before torch loads

if TYPE_CHECKING:
    from train.losses.base import ContrastiveLoss, LossOutput
    from train.losses.build import build_loss, repartition_loss_states
    from train.losses.fastclip import FastCLIPLoss
    from train.losses.openclip import OpenCLIPLoss
    from train.losses.siglip import SigLIPLoss
    from train.losses.temperature import GlobalTemperature, TauSpec, tau_spec

# The rest (torch) loads on first use.
_ON_FIRST_USE = {
    "ContrastiveLoss": "base",
    "LossOutput": "base",
    "build_loss": "build",
    "repartition_loss_states": "build",
    "FastCLIPLoss": "fastclip",
    "OpenCLIPLoss": "openclip",
    "SigLIPLoss": "siglip",
    "GlobalTemperature": "temperature",
    "TauSpec": "temperature",
    "tau_spec": "temperature",
}


def __getattr__(name: str) -> Any:
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(f"train.losses.{_ON_FIRST_USE[name]}"), name)
    raise AttributeError(f"module 'train.losses' has no attribute {name!r}")


__all__ = [
    "ContrastiveLoss",
    "FastCLIPLoss",
    "GlobalTemperature",
    "LossConfig",
    "LossOutput",
    "OpenCLIPLoss",
    "SigLIPLoss",
    "TauSpec",
    "build_loss",
    "repartition_loss_states",
    "tau_spec",
]
