"""The configured loss object, and per-rank loss states re-cut for another world size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from train.losses.base import ContrastiveLoss
from train.losses.config import LossConfig
from train.losses.dist_utils import Group
from train.losses.fastclip import FastCLIPLoss
from train.losses.openclip import OpenCLIPLoss
from train.losses.sample_state import repartition_shards
from train.losses.siglip import SigLIPLoss


def build_loss(cfg: LossConfig, num_samples: int, group: Group = None) -> ContrastiveLoss:
    """The configured loss over the data-parallel `group` (None: the default group, if initialised). `cfg` is
    resolved once, here, unless it already is (train.setup's RunSetup.loss); the loss takes it resolved."""
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
