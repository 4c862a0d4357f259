"""OpenCLIP baseline: symmetric InfoNCE, local rows against all columns gathered WITH autograd.

This is open_clip's `--local-loss --gather-with-grad` setting: each rank's loss is the mean
cross entropy of its B anchors over all G = K*B candidates; the gather's backward
reduce-scatters the [G, 2d] feature gradients, so after the backend averages parameter
gradients over ranks they equal the gradient of the single-process loss on the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from train.losses.base import ContrastiveLoss, LossOutput
from train.losses.dist_utils import Group, all_gather_with_grad, all_reduce_mean, world


class OpenCLIPLoss(ContrastiveLoss):
    """Mini-batch contrastive loss; tau = exp(-logit_scale), learned through the loss."""

    def __init__(self, group: Group = None) -> None:
        self.group = group  # the data-parallel group (None: every rank)

    def __call__(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        index: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> LossOutput:
        with torch.autocast(image_features.device.type, enabled=False):
            dtype = torch.promote_types(image_features.dtype, torch.float32)
            e1, e2 = image_features.to(dtype), text_features.to(dtype)
            both = all_gather_with_grad(torch.cat([e1, e2], dim=1), self.group)  # one collective for both towers
            all1, all2 = both.split(e1.shape[1], dim=1)
            ls = logit_scale.to(dtype).reshape(())
            scale = ls.exp()
            labels = torch.arange(e1.shape[0], device=e1.device) + world(self.group)[0] * e1.shape[0]
            loss = (F.cross_entropy(scale * e1 @ all2.T, labels) + F.cross_entropy(scale * e2 @ all1.T, labels)) / 2
        return LossOutput(loss=loss, value=all_reduce_mean(loss, self.group))

    def state_dict(self) -> dict[str, Any]:
        return {"name": "openclip"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != "openclip":
            raise ValueError(f"loss state is for {state.get('name')}, this run uses openclip")
