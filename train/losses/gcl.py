"""Pure math of the global contrastive losses on blocks of the similarity matrix (no comms).

Notation: for anchor i and column j, diff_ij = (s_ij - s_ii) / tau_i, where s_ii is the
anchor's positive pair. g_i = 1/(G-1) sum_{j != i} exp(diff_ij). Everything is kept in log
space and every exponent is shifted, so tau = 0.01 with s in [-1, 1] (|diff| <= 200) neither
overflows nor underflows to 0 in fp32:

- log g_i comes from a log-sum-exp;
- u is stored as log u, and the moving average is a logaddexp;
- surrogate terms exp(diff_ij) / (eps + u_i) are computed as exp(diff_ij - log(eps + u_i)),
  which is at most (G-1)/gamma because u_i already contains gamma * g_i of this step.
"""

from __future__ import annotations

import math

import torch


def anchor_positives(batch: int, global_batch: int, offset: int, device: torch.device) -> torch.Tensor:
    """[B, G] bool mask of the positive pairs of local anchors (a, offset + a)."""
    rows = torch.arange(batch, device=device)
    columns = torch.arange(global_batch, device=device)
    return columns[None, :] == rows[:, None] + offset  # elementwise: an indexed write of True would sync on CUDA


def log_g(diff: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """log g_i = log mean_{j not positive} exp(diff_ij) for [n, G] rows holding all G columns."""
    return torch.logsumexp(diff.masked_fill(positive, -math.inf), dim=1) - math.log(diff.shape[1] - 1)


def log_eps_plus(log_u: torch.Tensor, eps: float) -> torch.Tensor:
    """log(eps + u) from log u."""
    return torch.logaddexp(log_u, torch.full_like(log_u, math.log(eps)))


def moving_average_log(log_u: torch.Tensor, log_g_new: torch.Tensor, gamma: float) -> torch.Tensor:
    """log of u <- (1 - gamma) u + gamma g; u <- g on a sample's first visit (log u = -inf)."""
    log_keep = math.log1p(-gamma) if gamma < 1 else -math.inf
    mixed = torch.logaddexp(log_u + log_keep, log_g_new + math.log(gamma))
    return torch.where(torch.isneginf(log_u), log_g_new, mixed)


def weighted_exp_sum(
    diff: torch.Tensor, positive: torch.Tensor, log_den: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """sum over non-positive pairs of weight_i * exp(diff_ij) / (eps + u_i); log_den_i = log(eps + u_i)."""
    terms = torch.exp((diff - log_den[:, None]).masked_fill(positive, -math.inf))
    if weight is not None:
        terms = terms * weight[:, None]
    return terms.sum()


def individual_tau_grad(diff: torch.Tensor, positive: torch.Tensor, log_den: torch.Tensor, rho: float) -> torch.Tensor:
    """Per-sample d/dtau_i of [tau_i log(eps + g_i(tau_i)) + rho tau_i] with g_i -> u_i outside
    its derivative:  log(eps + u_i) + rho - 1/(G-1) sum_j exp(diff_ij) diff_ij / (eps + u_i).

    (tau_i dg_i/dtau_i = -1/(G-1) sum_j exp(diff_ij) diff_ij.) Not divided by n: per-sample
    Adam is invariant to that scale, as in fast_clip.
    """
    weights = torch.exp((diff - log_den[:, None]).masked_fill(positive, -math.inf))
    return log_den + rho - (weights * diff.masked_fill(positive, 0.0)).sum(dim=1) / (diff.shape[1] - 1)
