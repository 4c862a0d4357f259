"""Parameter groups and LAMB: ours equals timm's, and the trust ratio leaves groups without weight decay alone."""

from __future__ import annotations

import pytest
import timm.optim
import torch

from model import create_model
from train.optim import Lamb, param_groups

BETAS, EPS, STEPS = (0.9, 0.98), 1e-6, 6


def test_param_groups_exclude_gains_biases_and_frozen_logit_scale() -> None:
    model = create_model("tiny")
    names = {id(p): n for n, p in model.named_parameters()}
    plain = {names[id(p)] for p in {g["name"]: g for g in param_groups(model, 0.1)}["no_decay"]["params"]}
    assert "logit_scale" in plain  # never decayed
    model.logit_scale.requires_grad_(False)  # as while training: GlobalTemperature owns tau
    groups = {g["name"]: g for g in param_groups(model, 0.1)}
    assert set(groups) == {"decay", "no_decay"}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    plain = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert "logit_scale" not in plain | decay
    assert "visual.cls_token" in plain and "text.ln_final.weight" in plain and "visual.blocks.0.attn.qkv.bias" in plain
    assert "visual.blocks.0.attn.qkv.weight" in decay and "text.token_embedding.weight" in decay
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.1


def _three_groups() -> list[dict]:
    """decay / no_decay groups as param_groups builds them plus a group with its own lr, float64, large weights
    (so a trust ratio, where applied, is far from 1 and a wrong one shows)."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(3 * torch.randn(5, 4, generator=gen, dtype=torch.float64))
    bias = torch.nn.Parameter(3 * torch.randn(4, generator=gen, dtype=torch.float64))
    logit_scale = torch.nn.Parameter(torch.tensor([2.659], dtype=torch.float64))
    return [
        {"name": "decay", "params": [weight], "weight_decay": 0.1},
        {"name": "no_decay", "params": [bias], "weight_decay": 0.0},
        {"name": "own_lr", "params": [logit_scale], "weight_decay": 0.0, "lr": 3e-2},
    ]


def _train(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """STEPS steps on fixed random gradients; the final parameters, group by group."""
    gen = torch.Generator().manual_seed(1)
    params = [g["params"][0] for g in optimizer.param_groups]
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_lamb_equals_timm_lamb() -> None:
    """timm's Lamb without its global-norm clipping (the trainer clips) is the reference; float64, 1e-12."""
    ours = _train(Lamb(_three_groups(), lr=1e-2, betas=BETAS, eps=EPS))
    timm_groups = _three_groups()
    reference = _train(timm.optim.Lamb(timm_groups, lr=1e-2, betas=BETAS, eps=EPS, max_grad_norm=None, foreach=False))
    start = [g["params"][0].detach() for g in _three_groups()]
    for got, expected, before in zip(ours, reference, start, strict=True):
        assert not torch.equal(got, before)  # every group moved
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_lamb_trust_ratio_only_where_weight_decays() -> None:
    """Groups without weight decay take Adam's steps exactly; the decay group's first step has norm lr * ||w||."""
    groups = _three_groups()
    weight_before = groups[0]["params"][0].detach().clone()
    lamb = Lamb(groups, lr=1e-2, betas=BETAS, eps=EPS)
    adam = torch.optim.Adam(_three_groups()[1:], lr=1e-2, betas=BETAS, eps=EPS)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        for group in lamb.param_groups:
            p = group["params"][0]
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        for mine, theirs in zip(lamb.param_groups[1:], adam.param_groups, strict=True):
            theirs["params"][0].grad = mine["params"][0].grad.clone()
        lamb.step()
        adam.step()
        if step == 0:
            moved = (groups[0]["params"][0].detach() - weight_before).norm()
            assert float(moved) == pytest.approx(1e-2 * float(weight_before.norm()), rel=1e-12)
    for mine, theirs in zip(lamb.param_groups[1:], adam.param_groups, strict=True):
        torch.testing.assert_close(mine["params"][0].detach(), theirs["params"][0].detach(), rtol=0, atol=1e-12)
