"""Temperature rules: how logit_scale = ln(1/tau) is trained per loss, and v2's per-sample Adam.

The global temperature is not trained inside the backend-wrapped model: `GlobalTemperature` holds
it as one fp32 tensor replicated on every rank, with its own Adam step on the device. So every
backend and precision trains AND uses it in fp32 (DeepSpeed bf16 would hand the loss a bf16
logit_scale, moving tau in 1.6% jumps), and reading it, clamping it and its lr rule need neither
a collective nor a host synchronisation. The model's own `logit_scale` parameter is frozen during
training; checkpoints store the temperature and consolidation writes it back into the weights.

===========  ==========  ==============================  =====================================
loss         trainable   lr of the temperature           after every step
===========  ==========  ==============================  =====================================
openclip     yes         lr_tau or the model lr,         clamp logit_scale to
siglip                   following the model schedule    [ln(1/tau_max), ln(1/tau_min)]
fastclip v0
                                                         (= [0, ln 100]: tau in [0.01, 1])
fastclip v3  yes         lr_tau, /3 while tau <= 0.03    same clamp; tau_min is RGCL-g's tau0
                         (step_thresh, on the device)
fastclip v1  no          none                            nothing; the loss uses tau_init
fastclip v2  no          none                            nothing; per-sample taus live in the
                                                         loss's state, updated by the loss
===========  ==========  ==============================  =====================================

SigLIP's logit bias is trained the same way, in the same Adam step (no clamp, no weight decay): a
parameter used outside the towers' forward needs care under ZeRO-3 and would be bf16 under DeepSpeed,
exactly as the temperature. The model carries a frozen `logit_bias` copy (open_clip's layout) so that
consolidation writes the trained value back and export keeps it.

The Adam step is AdamW's arithmetic with weight decay 0 and the model optimizer's betas and eps,
on the gradient averaged over ranks (as a backend averages parameter gradients). The temperature
is not part of the model's clipped gradient norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from train.losses.dist_utils import Group, all_reduce_mean

if TYPE_CHECKING:
    from train.losses.config import LossConfig

# fast_clip's step_thresh schedule: (tau threshold, lr ratio) pairs, checked in order.
STEP_THRESH = ((0.03, 1.0 / 3.0),)


def step_thresh_ratio(tau: torch.Tensor, steps: tuple[tuple[float, float], ...] = STEP_THRESH) -> torch.Tensor:
    """lr ratio for the current tau: the ratio of the last threshold that tau is at or below (on tau's device).

    Re-evaluated every step (not sticky): if tau rises above 0.03 again the full lr returns.
    """
    ratio, below = torch.ones_like(tau), torch.ones_like(tau, dtype=torch.bool)
    for thresh, r in steps:
        below = below & (tau <= thresh)
        ratio = torch.where(below, torch.full_like(tau, r), ratio)
    return ratio


@dataclass(frozen=True)
class TauSpec:
    """How the global temperature is treated for a loss (see the module table)."""

    trainable: bool
    init_logit_scale: float
    min_logit_scale: float
    max_logit_scale: float
    lr: float | None  # base lr of the temperature; None = the model's base lr
    schedule: str  # model | const | step_thresh | frozen
    init_logit_bias: float | None = None  # siglip's learnable bias; None = no bias


class GlobalTemperature:
    """One fp32 logit_scale [1] replicated on every rank, trained by its own Adam step on the device.

    Pass `logit_scale` to the loss; after backward call `step` (all ranks: the gradient is averaged
    over ranks with one tiny all-reduce). Nothing here reads a value back to the host.
    """

    def __init__(
        self, spec: TauSpec, betas: tuple[float, float], eps: float, device: torch.device, group: Group = None
    ) -> None:
        self.spec, self.betas, self.eps, self.group = spec, tuple(betas), eps, group
        self.logit_scale = torch.full((1,), spec.init_logit_scale, dtype=torch.float32, device=device)
        self.logit_scale.requires_grad_(spec.trainable)
        self.logit_bias: torch.Tensor | None = None
        if spec.init_logit_bias is not None:
            self.logit_bias = torch.full((1,), spec.init_logit_bias, dtype=torch.float32, device=device)
            self.logit_bias.requires_grad_(spec.trainable)
        size = len(self._params())
        self.exp_avg = torch.zeros(size, device=device)  # [logit_scale(, logit_bias)]
        self.exp_avg_sq = torch.zeros(size, device=device)
        self.steps = torch.zeros(1, device=device)
        self.last_lr = torch.zeros(1, device=device)

    def _params(self) -> list[torch.Tensor]:
        return [self.logit_scale] + ([] if self.logit_bias is None else [self.logit_bias])

    @property
    def tau(self) -> torch.Tensor:
        return torch.exp(-self.logit_scale.detach())

    def lr(self, model_lr: float, model_base_lr: float) -> torch.Tensor:
        """This step's lr as a device tensor (the step_thresh rule reads tau on the device)."""
        base = model_base_lr if self.spec.lr is None else self.spec.lr
        if self.spec.schedule == "model":
            base *= model_lr / model_base_lr if model_base_lr else 0.0
        lr = torch.full_like(self.exp_avg, base)
        return lr * step_thresh_ratio(self.tau) if self.spec.schedule == "step_thresh" else lr

    @torch.no_grad()
    def step(self, model_lr: float, model_base_lr: float, skip: torch.Tensor | None = None) -> None:
        """Average the gradient over ranks, take one Adam step, clamp; a no-op when frozen.

        `skip` (a device flag, e.g. the non-finite guard's) leaves value and moments unchanged on the device.
        """
        if not self.spec.trainable:
            return
        params = self._params()
        if any(p.grad is None for p in params):
            raise RuntimeError(
                "the temperature got no gradient: pass GlobalTemperature.logit_scale (and logit_bias) to the loss"
            )
        grad = all_reduce_mean(torch.cat([p.grad for p in params]), self.group)  # one collective for both
        keep = None if skip is None else skip.reshape(1) > 0
        beta1, beta2 = self.betas
        lr = self.lr(model_lr, model_base_lr)
        steps = self.steps + 1
        exp_avg = self.exp_avg.lerp(grad, 1 - beta1)
        exp_avg_sq = self.exp_avg_sq * beta2 + (1 - beta2) * grad * grad
        m_hat = exp_avg / (1 - torch.pow(beta1, steps))
        v_hat = exp_avg_sq / (1 - torch.pow(beta2, steps))
        values = (torch.cat(params) - lr * m_hat / (v_hat.sqrt() + self.eps)).split(1)
        clamped = values[0].clamp(self.spec.min_logit_scale, self.spec.max_logit_scale)
        updates = [("steps", steps), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("logit_scale", clamped)]
        if self.logit_bias is not None:
            updates.append(("logit_bias", values[1]))
        for name, new in updates:
            current = getattr(self, name)
            current.copy_(new if keep is None else torch.where(keep, current, new))
        for p in params:
            p.grad = None
        self.last_lr = lr

    def _state_names(self) -> tuple[str, ...]:
        return ("logit_scale", "exp_avg", "exp_avg_sq", "steps") + (() if self.logit_bias is None else ("logit_bias",))

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).detach().cpu().clone() for name in self._state_names()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name in self._state_names():
                getattr(self, name).copy_(state[name])


def tau_spec(cfg: LossConfig) -> TauSpec:
    """The logit_scale treatment for a loss config, resolved once, here, unless it already is (train.setup)."""
    cfg = cfg.resolved()
    trainable = cfg.name in ("openclip", "siglip") or cfg.version in ("v0", "v3")
    return TauSpec(
        trainable=trainable,
        init_logit_scale=math.log(1.0 / cfg.tau_init),
        min_logit_scale=math.log(1.0 / cfg.tau_max),
        max_logit_scale=math.log(1.0 / cfg.tau_min),
        lr=cfg.lr_tau if trainable else None,
        schedule=cfg.lr_tau_schedule if trainable else "frozen",
        init_logit_bias=cfg.bias_init if cfg.name == "siglip" else None,
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
