"""Optimizers: parameter groups (weight decay or not) and AdamW / LAMB.

The temperature is not among them: `train.losses.temperature.GlobalTemperature` trains it in fp32.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from model.lock import layer_id, tower_of


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Gains, biases, 1-d embeddings (timm's [1,1,C] class token) and logit_scale are not decayed."""
    effective_ndim = sum(size > 1 for size in param.shape)  # shape only: works on sharded DTensors
    return effective_ndim < 2 or name.endswith(".bias") or "logit_scale" in name


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    tower_lr_scales: dict[str, float] | None = None,
    wd_exclude: Sequence[str] = (),
) -> list[dict[str, object]]:
    """Groups of trainable parameters, each with a `name`, its `kind` (decay / no_decay: which lr of
    its weight decay follows) and an `lr_scale`. Frozen parameters (locked towers, and the model's
    logit_scale while training: GlobalTemperature owns tau) are left out.

    lr_scale = tower scale x layer_decay ** (blocks + 1 - layer id) (the head 1, block i of L decay^(L - i),
    the embeddings decay^(L + 1)), per tower. `wd_exclude`: fnmatch patterns of names not decayed.
    With the defaults there are the two groups `decay` and `no_decay`, as before.
    """
    scales = {"visual": 1.0, "text": 1.0} | (tower_lr_scales or {})
    groups: dict[str, dict[str, object]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        excluded = any(fnmatch.fnmatchcase(name, pattern) for pattern in wd_exclude)
        kind = "no_decay" if excluded or no_weight_decay(name, param) else "decay"
        tower = tower_of(name)
        scale, key = 1.0, kind
        if tower is not None and (layer_decay != 1.0 or scales[tower] != 1.0):
            blocks = len(getattr(model, tower).blocks)
            layer = layer_id(name, blocks)
            scale = scales[tower] * layer_decay ** (blocks + 1 - layer)
            key = f"{kind}/{tower}/{layer}"
        group = groups.setdefault(
            key,
            {
                "name": key,
                "kind": kind,
                "lr_scale": scale,
                "params": [],
                "weight_decay": weight_decay if kind == "decay" else 0.0,
            },
        )
        group["params"].append(param)
    return sorted(groups.values(), key=lambda g: g["kind"] != "decay")  # decay first, as the optimizer state was saved


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019): Adam direction plus L2 weight decay, scaled per tensor by a trust ratio.

    As in NVIDIA's NVLAMB and timm's `Lamb` (tested equal to `timm.optim.Lamb(max_grad_norm=None)`), the
    trust ratio only rescales groups with weight decay: gains and biases (`no_decay`) take plain Adam steps,
    so the lr schedule means what it says. Written with per-tensor ops
    only, so one code path serves plain tensors and FSDP2's sharded DTensors (whose norms are global).
    The trainer clips gradients itself; there is no global-norm clipping here.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch.optim signature
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(p.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = exp_avg / (1 - beta1 ** state["step"])
                v_hat = exp_avg_sq / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                    w_norm, u_norm = p.norm(), update.norm()
                    trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                    update.mul_(trust)
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str, groups: list[dict[str, object]], lr: float, betas: tuple[float, float], eps: float
) -> torch.optim.Optimizer:
    """AdamW (torch's fused implementation: it can skip a step on the device, see `optimizer_step_unless`)
    or LAMB over the given groups."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"optim.name must be adamw or lamb, got {name!r}")
