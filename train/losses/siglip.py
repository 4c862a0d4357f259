"""SigLIP: the pairwise sigmoid loss with a learnable temperature and bias, chunked over ranks.

Objective on a global batch of G = K*B pairs (Zhai et al. 2023; docs/losses.md, "SigLIP"):

    L = -1/G sum_ij log sigmoid(z_ij (t s_ij + b)),   s_ij = <e1_i, e2_j>,  t = exp(logit_scale),

z_ij = +1 for the pair (i = j) and -1 for every other image-text combination. (open_clip's
SigLipLoss divides by the local batch instead of G: its value and gradients are K times ours.)

Memory and communication. Each rank's [image | text] features travel around the ring of ranks
(K - 1 neighbour passes, without autograd, overlapped with compute), so a rank never holds more
than two B x d chunks and one B x B block of logits: O(B^2) per step for any K. Every block's
gradient is folded into fixed per-feature gradients right away (closed form, no graph kept),
and the loss returned is the linear surrogate whose autograd gives them, so no feature gradient
is communicated. On rank r the blocks are

    A_r: local images x every rank's texts   (gradient into local image features, t and b)
    B_r: every rank's images x local texts   (gradient into local text features)

and the surrogate is (A_r + B_r) / B. Averaged over ranks (what a backend does to parameter
gradients, and what `GlobalTemperature` does to t and b) each pair's image side, text side and
its t / b term are counted exactly once: the exact gradient of L.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from train.losses.base import ContrastiveLoss, LossOutput
from train.losses.dist_utils import Group, all_reduce_mean, start_ring_pass, world


def sigmoid_block(
    anchors: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, diagonal: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One [n, m] block: (sum of -log sigmoid(z (t s + b)), w = d/d(t s + b) per pair, s).

    `diagonal`: the block pairs chunk k with chunk k, so its diagonal holds the positives.
    """
    sim = anchors @ columns.T
    labels = -torch.ones_like(sim)
    if diagonal:
        labels.diagonal().fill_(1.0)
    logits = labels * (scale * sim + bias)
    weights = -labels * torch.sigmoid(-logits)
    return -F.logsigmoid(logits).sum(), weights, sim


class SigLIPLoss(ContrastiveLoss):
    """Pairwise sigmoid loss over the global batch; t = exp(logit_scale) and the bias are learned."""

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
        if logit_bias is None:
            raise ValueError("siglip needs the logit bias: pass GlobalTemperature.logit_bias")
        with torch.autocast(image_features.device.type, enabled=False):
            dtype = torch.promote_types(image_features.dtype, torch.float32)
            e1, e2 = image_features.to(dtype), text_features.to(dtype)
            ls, lb = logit_scale.to(dtype).reshape(()), logit_bias.to(dtype).reshape(())
            scale, bias = ls.detach().exp(), lb.detach()
            grad1, grad2, value, grad_scale, grad_bias = self._blocks(e1.detach(), e2.detach(), scale, bias)
            batch = e1.shape[0]
            surrogate = (e1 * grad1).sum() + (e2 * grad2).sum() + ls.exp() * grad_scale + lb * grad_bias
            loss = surrogate / batch
        stats = {"schedule/logit_bias": lb.detach().double()}
        return LossOutput(loss=loss, value=all_reduce_mean(value / batch, self.group), stats=stats)

    @torch.no_grad()
    def _blocks(
        self, e1: torch.Tensor, e2: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Walk the ring once: (dL/de1, dL/de2 of the local features summed over the blocks A_r and B_r,
        sum of A_r's pair losses, A_r's d/dt sum w s, A_r's d/db sum w)."""
        _, world_size = world(self.group)
        grad1, grad2 = torch.zeros_like(e1), torch.zeros_like(e2)
        value, grad_scale, grad_bias = e1.new_zeros(()), e1.new_zeros(()), e1.new_zeros(())
        chunk = torch.cat([e1, e2], dim=1)
        for hop in range(world_size):
            incoming, works = start_ring_pass(chunk, self.group) if hop + 1 < world_size else (chunk, [])
            images, texts = chunk.split(e1.shape[1], dim=1)
            loss_a, w_a, sim_a = sigmoid_block(e1, texts, scale, bias, diagonal=hop == 0)
            _, w_b, _ = sigmoid_block(images, e2, scale, bias, diagonal=hop == 0)
            grad1 += scale * (w_a @ texts)
            grad2 += scale * (w_b.T @ images)
            value += loss_a
            grad_scale += (w_a * sim_a).sum()
            grad_bias += w_a.sum()
            for work in works:
                work.wait()
            chunk = incoming
        return grad1, grad2, value, grad_scale, grad_bias

    def state_dict(self) -> dict[str, Any]:
        return {"name": "siglip"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != "siglip":
            raise ValueError(f"loss state is for {state.get('name')}, this run uses siglip")
