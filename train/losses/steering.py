"""DRRho-CLIP model steering inside FastCLIP: the reference's margins and the optional distillation term.

Reference: Optimization-AI/DRRho-CLIP (`src/fast_clip/loss.py`, arXiv 2505.06699). A frozen reference model
encodes the same batch (features r1, r2). Every pairwise margin of the target, scale * (s_ij - s_ii), becomes

    scale * [(s_ij - s_ii) - (r_ij - r_ii)]          (r_ij = <r1_i, r2_j>, scale = the target's 1/tau)

in the u update, the loss and the logged value: pairs where the target lags the reference weigh most.

Distillation (their `--ref_features_usage ref,distill`): the cross entropy between the reference's softmax at
logit scale T (`distill_logit_scale`, their default 100) and the target's at its own logit scale S, over the
global batch, both directions averaged: KD = 1/2 [1/G sum_i CE(p1_i, q1_i) + 1/G sum_i CE(p2_i, q2_i)]. Their
loss is tau * (2 F + w KD) in our notation (F is our two-sided mean), so we add w / 2 * KD (times sg(tau) in v3,
as their `multiply_tau` does): the same direction and balance, a factor 2 tau apart.

The KD gradient is computed like the contrastive one, without feature gradients crossing ranks: each rank's
surrogate holds (local anchors x all columns) + (all anchors x local columns) with the weights q - p detached;
the anchors' log-sum-exps of every rank ride along with the state rows (`SampleState.update`). Only the first
half carries the logit scale, so after averaging over ranks every gradient is KD's exact one.
"""

from __future__ import annotations

import torch


def reference_similarities(
    r1: torch.Tensor, r2: torch.Tensor, all_r1: torch.Tensor, all_r2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference's local x all similarities (image anchors [B, G], text anchors [B, G]) and its positive pairs'
    similarities r_ii of the local [B] and all [G] anchors."""
    return r1 @ all_r2.T, r2 @ all_r1.T, (r1 * r2).sum(dim=1), (all_r1 * all_r2).sum(dim=1)


def distill_rows(
    student12: torch.Tensor, student21: torch.Tensor, teacher12: torch.Tensor, teacher21: torch.Tensor
) -> torch.Tensor:
    """[B, 6] per local anchor: log-sum-exps of student and teacher logits (image anchors, then text anchors) and
    the two cross entropies CE(p_i, q_i) = lse(z_i) - sum_j p_ij z_ij. Inputs are logits [B, G], detached."""
    cols = []
    for z, t in ((student12, teacher12), (student21, teacher21)):
        lq, lp = torch.logsumexp(z, dim=1), torch.logsumexp(t, dim=1)
        cols += [lq, lp, lq - (torch.exp(t - lp[:, None]) * z).sum(dim=1)]
    return torch.stack([cols[0], cols[1], cols[3], cols[4], cols[2], cols[5]], dim=1)


def distill_surrogate(
    scale: torch.Tensor,
    teacher_scale: float,
    sims: tuple[torch.Tensor, torch.Tensor],
    ref_sims: tuple[torch.Tensor, torch.Tensor],
    lse_local: torch.Tensor,
    lse_all: torch.Tensor,
) -> torch.Tensor:
    """Per-rank KD surrogate whose rank-averaged gradient is grad KD.

    scale: the target's logit scale S (with autograd where it is trained); sims: (sim12, sim21) local x all target
    similarities with autograd into the local features; ref_sims: the same for the reference; lse_local [B, 4] and
    lse_all [G, 4]: (lq1, lp1, lq2, lp2) of the local / all anchors.
    """
    batch = sims[0].shape[0]
    s_det = scale.detach()
    total = sims[0].new_zeros(())
    for side, (sim, rsim, other, rother) in enumerate(
        ((sims[0], ref_sims[0], sims[1], ref_sims[1]), (sims[1], ref_sims[1], sims[0], ref_sims[0]))
    ):
        lq, lp = lse_local[:, 2 * side], lse_local[:, 2 * side + 1]
        lq_all, lp_all = lse_all[:, 2 * side], lse_all[:, 2 * side + 1]
        z = scale * sim  # local anchors x all columns: autograd into the anchors and S
        weight = torch.exp(z.detach() - lq[:, None]) - torch.exp(teacher_scale * rsim - lp[:, None])
        total = total + (weight * z).sum()
        z_col = s_det * other.T  # all anchors x local columns: autograd into the columns only
        weight_col = torch.exp(z_col.detach() - lq_all[:, None]) - torch.exp(teacher_scale * rother.T - lp_all[:, None])
        total = total + (weight_col * z_col).sum()
    return total / (2 * batch)
