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

from collections.abc import Sequence
from typing import Any

from train.losses.base import ContrastiveLoss, LossOutput
from train.losses.config import LossConfig
from train.losses.dist_utils import Group
from train.losses.fastclip import FastCLIPLoss
from train.losses.openclip import OpenCLIPLoss
from train.losses.sample_state import repartition_shards
from train.losses.siglip import SigLIPLoss
from train.losses.temperature import GlobalTemperature, TauSpec, tau_spec


def build_loss(cfg: LossConfig, num_samples: int, group: Group = None) -> ContrastiveLoss:
    """The configured loss over the data-parallel `group` (None: the default group, if initialised)."""
    cfg = cfg.resolved()
    if cfg.name == "openclip":
        return OpenCLIPLoss(group)
    if cfg.name == "siglip":
        return SigLIPLoss(group)
    return FastCLIPLoss(cfg, num_samples, group)


def repartition_loss_states(states: Sequence[dict[str, Any]], world_size: int) -> list[dict[str, Any]]:
    """Turn the K per-rank loss states of one checkpoint into `world_size` per-rank states."""
    if not states:
        raise ValueError("no loss states given")
    if "sample_state" not in states[0]:
        return [dict(states[0]) for _ in range(world_size)]
    shards = repartition_shards([s["sample_state"] for s in states], world_size)
    return [{**states[0], "sample_state": shard} for shard in shards]


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
