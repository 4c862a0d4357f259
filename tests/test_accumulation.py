"""Gradient accumulation (train.accumulate) equals the big batch, in float64, for OpenCLIP, SigLIP and FastCLIP.

A small two-tower model with a random input mask per sample (drawn from a generator, as FLIP's masks are)
produces the features. The reference runs one forward and backward of the whole batch; the accumulated
step splits it into 2 or 4 micro-batches with the cached-feature method. Compared: loss value, parameter
gradients, temperature (and bias) gradients and, for FastCLIP, the per-sample state after two steps.
Tolerance: 1e-12 relative to the largest reference entry.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from train.accumulate import cached_feature_backward
from train.losses import GlobalTemperature, LossConfig, build_loss, tau_spec

B, D_IN, D, N = 8, 6, 4, 16
CONFIGS = {
    "openclip": LossConfig(name="openclip"),
    "siglip": LossConfig(name="siglip", bias_init=-2.0),
    "fastclip_v3": LossConfig(version="v3", rho=0.5, lr_tau=1e-2, gamma_min=0.5, state_dtype="float64"),
    "fastclip_v2": LossConfig(version="v2", rho=0.5, lr_tau=1e-2, tau_init=0.05, gamma_min=0.5, state_dtype="float64"),
}


class Towers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.image = torch.nn.Parameter(torch.randn(D_IN, D, generator=gen, dtype=torch.float64))
        self.text = torch.nn.Parameter(torch.randn(D_IN, D, generator=gen, dtype=torch.float64))
        self.generator = torch.Generator().manual_seed(5)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.rand(x1.shape, generator=self.generator, dtype=torch.float64) > 0.3  # a per-sample mask
        return F.normalize(torch.tanh(x1 * keep) @ self.image, dim=1), F.normalize(torch.tanh(x2) @ self.text, dim=1)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10 + step)
    x1 = torch.randn(B, D_IN, generator=gen, dtype=torch.float64)
    return x1, x1 + 0.5 * torch.randn(B, D_IN, generator=gen, dtype=torch.float64), torch.randperm(N, generator=gen)[:B]


def run(name: str, accum_steps: int) -> list[dict]:
    """Two steps; per step the value and every gradient (parameters, logit_scale, logit_bias); then the state."""
    model, loss = Towers(), build_loss(CONFIGS[name], N)
    temperature = GlobalTemperature(tau_spec(CONFIGS[name]), (0.9, 0.98), 1e-6, torch.device("cpu"))
    records = []
    for step in range(2):
        loss.set_epoch(step)
        x1, x2, keys = batch(step)
        model.zero_grad()
        ls = temperature.logit_scale.detach().double().requires_grad_(temperature.spec.trainable)
        lb = None if temperature.logit_bias is None else temperature.logit_bias.detach().double().requires_grad_()
        loss_fn = functools.partial(_call, loss, index=keys, logit_scale=ls, logit_bias=lb)
        if accum_steps == 1:
            out = loss_fn(*model(x1, x2))
            out.loss.backward()
        else:
            out = cached_feature_backward(
                lambda a, b: model(a, b), x1, x2, accum_steps, loss_fn, lambda s: s.backward(), model.generator
            )
        extra = [t.grad for t in (ls, lb) if t is not None and t.grad is not None]
        grads = torch.cat([model.image.grad.flatten(), model.text.grad.flatten(), *extra])
        records.append({"value": out.value.double(), "grads": grads})
    state = loss.state_dict().get("sample_state", {}).get("table")
    records.append({"state": state, "generator": model.generator.get_state()})
    return records


def _call(loss, e1: torch.Tensor, e2: torch.Tensor, **kwargs: torch.Tensor | None):  # noqa: ANN001, ANN202
    return loss(e1, e2, **kwargs)


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual - expected).abs().max().item() / expected.abs().max().item()


@pytest.mark.parametrize("accum_steps", [2, 4])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_accumulation_equals_the_big_batch(name: str, accum_steps: int) -> None:
    big, accumulated = run(name, 1), run(name, accum_steps)
    for step in range(2):
        assert max_rel_error(accumulated[step]["value"], big[step]["value"]) <= 1e-12
        assert max_rel_error(accumulated[step]["grads"], big[step]["grads"]) <= 1e-12, f"step {step}"
    if big[2]["state"] is not None:  # FastCLIP: u (and v2's taus) updated once per step, on the union
        state, expected = (r[2]["state"].nan_to_num(neginf=0) for r in (accumulated, big))
        assert max_rel_error(state, expected) <= 1e-12
    assert torch.equal(accumulated[2]["generator"], big[2]["generator"])  # masks replayed, not redrawn


def test_micro_batches_must_divide_the_batch() -> None:
    x = torch.zeros(6, 2)
    with pytest.raises(ValueError, match="micro-batches"):
        cached_feature_backward(lambda a, b: (a, b), x, x, 4, None, None)  # type: ignore[arg-type]
