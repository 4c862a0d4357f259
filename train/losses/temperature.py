"""Temperature rules: how the model's logit_scale is trained per loss, and v2's per-sample Adam.

The model's `logit_scale` parameter (shape [1]) is ln(1/tau) for every loss. What the trainer
does with it depends on the loss (`tau_spec(cfg)` says it in one object):

===========  ==========  ==============================  =====================================
loss         trainable   optimizer group                 after every optimizer step
===========  ==========  ==============================  =====================================
openclip     yes         own group, weight decay 0,      clamp logit_scale to
fastclip v0              lr = lr_tau or the model lr,    [ln(1/tau_max), ln(1/tau_min)]
                         following the model schedule    (= [0, ln 100]: tau in [0.01, 1])
fastclip v3  yes         own group, weight decay 0,      same clamp; tau_min is RGCL-g's tau0
                         lr from `lr_at`: lr_tau, /3
                         while tau <= 0.03 (step_thresh)
fastclip v1  NO: freeze  none (requires_grad=False)      nothing; the loss uses tau_init
fastclip v2  NO: freeze  none (requires_grad=False)      nothing; per-sample taus live in the
                                                         loss's state, updated by the loss
===========  ==========  ==============================  =====================================

Freezing matters: v1 / v2 never use logit_scale, and DDP without find_unused_parameters
errors on a trainable parameter that gets no gradient. Initialise logit_scale to
`init_logit_scale` = ln(1/tau_init) for every loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from train.losses.config import LossConfig

# fast_clip's step_thresh schedule: (tau threshold, lr ratio) pairs, checked in order.
STEP_THRESH = ((0.03, 1.0 / 3.0),)


def step_thresh_lr(base_lr: float, tau: float, steps: tuple[tuple[float, float], ...] = STEP_THRESH) -> float:
    """lr_tau for the current tau: base_lr * ratio of the last threshold that tau is at or below.

    Re-evaluated every step (not sticky): if tau rises above 0.03 again the full lr returns.
    """
    lr = base_lr
    for thresh, ratio in steps:
        if tau > thresh:
            break
        lr = base_lr * ratio
    return lr


@dataclass(frozen=True)
class TauSpec:
    """How the trainer must treat the model's logit_scale (see the module table)."""

    trainable: bool
    init_logit_scale: float
    min_logit_scale: float
    max_logit_scale: float
    lr: float | None  # base lr of the logit_scale group; None = the model's base lr
    schedule: str  # model | const | step_thresh | frozen

    def lr_at(self, tau: float, model_lr: float, model_base_lr: float) -> float:
        """lr of the logit_scale group for this step, given the current tau and model lr."""
        if not self.trainable:
            raise ValueError("logit_scale is frozen for this loss; it has no optimizer group")
        base = model_base_lr if self.lr is None else self.lr
        if self.schedule == "model":
            return base * (model_lr / model_base_lr if model_base_lr else 0.0)
        if self.schedule == "step_thresh":
            return step_thresh_lr(base, tau)
        return base

    @torch.no_grad()
    def clamp_(self, logit_scale: torch.Tensor) -> None:
        """Clamp logit_scale in place after the optimizer step (tau in [tau_min, tau_max])."""
        logit_scale.clamp_(self.min_logit_scale, self.max_logit_scale)


def tau_spec(cfg: LossConfig) -> TauSpec:
    """The logit_scale treatment for a loss config (aliases and defaults resolved)."""
    cfg = cfg.resolved()
    trainable = cfg.name == "openclip" or cfg.version in ("v0", "v3")
    return TauSpec(
        trainable=trainable,
        init_logit_scale=math.log(1.0 / cfg.tau_init),
        min_logit_scale=math.log(1.0 / cfg.tau_max),
        max_logit_scale=math.log(1.0 / cfg.tau_min),
        lr=cfg.lr_tau if trainable else None,
        schedule=cfg.lr_tau_schedule if trainable else "frozen",
    )


def per_sample_adam(
    tau: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    count: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    bounds: tuple[float, float],
    grad_clamp: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step per visited sample on v2's per-sample taus (all tensors [n]).

    Bias correction uses each sample's own visit count, so a sample's first step is a full
    Adam step whatever the epoch. (fast_clip instead uses betas 0 in epoch 0 and corrects
    with the epoch number; both are Adam on the per-sample tau gradient clamped to
    +-grad_clamp.) Returns new (tau clamped to `bounds`, m, v, count).
    """
    beta1, beta2 = betas
    g = grad.clamp(-grad_clamp, grad_clamp)
    count = count + 1
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    m_hat = m / (1.0 - torch.pow(beta1, count))
    v_hat = v / (1.0 - torch.pow(beta2, count))
    tau = (tau - lr * m_hat / (v_hat.sqrt() + eps)).clamp(bounds[0], bounds[1])
    return tau, m, v, count
