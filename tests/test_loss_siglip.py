"""SigLIP on K = 1, 2, 3 ranks vs a brute-force float64 computation of the global batch.

The reference is the written objective -1/G sum_ij log sigmoid(z_ij (t s_ij + b)) on the dense G x G
matrix, differentiated by autograd. The ranks run the chunked ring loss on their slice in float64;
parameter and temperature / bias gradients are averaged over ranks as the backend and
`GlobalTemperature` do. Tolerance: 1e-12 relative to the largest reference entry.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.ranks import run_on_ranks
from train.losses import GlobalTemperature, LossConfig, build_loss, tau_spec

G, D_IN, D = 6, 5, 4
LOGIT_SCALE, LOGIT_BIAS = math.log(10.0) + 0.3, -2.0  # near init, bias chosen so positives and negatives both matter


def towers() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(D_IN, D, generator=gen, dtype=torch.float64),
        torch.randn(D_IN, D, generator=gen, dtype=torch.float64),
    )


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x1 = torch.randn(G, D_IN, generator=gen, dtype=torch.float64)
    return x1, x1 + 0.4 * torch.randn(G, D_IN, generator=gen, dtype=torch.float64)


def brute_force() -> dict[str, torch.Tensor]:
    w1, w2 = (w.requires_grad_() for w in towers())
    ls = torch.tensor([LOGIT_SCALE], dtype=torch.float64, requires_grad=True)
    lb = torch.tensor([LOGIT_BIAS], dtype=torch.float64, requires_grad=True)
    x1, x2 = inputs()
    e1, e2 = F.normalize(x1 @ w1, dim=1), F.normalize(x2 @ w2, dim=1)
    z = 2 * torch.eye(G, dtype=torch.float64) - 1
    loss = -F.logsigmoid(z * (ls.exp() * e1 @ e2.T + lb)).sum() / G
    loss.backward()
    return {"value": loss.detach(), "grads": torch.cat([w1.grad.flatten(), w2.grad.flatten(), ls.grad, lb.grad])}


def chunked(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    w1, w2 = (w.requires_grad_() for w in towers())
    ls = torch.tensor([LOGIT_SCALE], dtype=torch.float64, requires_grad=True)
    lb = torch.tensor([LOGIT_BIAS], dtype=torch.float64, requires_grad=True)
    x1, x2 = inputs()
    local = slice(rank * G // world_size, (rank + 1) * G // world_size)
    e1, e2 = F.normalize(x1[local] @ w1, dim=1), F.normalize(x2[local] @ w2, dim=1)
    out = build_loss(LossConfig(name="siglip"), G)(e1, e2, torch.arange(G)[local], ls, lb)
    out.loss.backward()
    grads = torch.cat([w1.grad.flatten(), w2.grad.flatten(), ls.grad, lb.grad])
    if world_size > 1:
        torch.distributed.all_reduce(grads)
    return {"value": out.value, "grads": grads / world_size}


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-12) -> float:
    err = (actual - expected).abs().max().item()
    assert err <= rtol * expected.abs().max().item(), f"max error {err:.3e}"
    return err


def test_one_process_equals_brute_force() -> None:
    ref, got = brute_force(), chunked(0, 1)
    assert_rel(got["value"], ref["value"])
    assert_rel(got["grads"], ref["grads"])


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_equal_brute_force(world_size: int) -> None:
    ref = brute_force()
    for result in run_on_ranks(chunked, world_size, init_group=True):
        assert_rel(result["value"], ref["value"])
        assert_rel(result["grads"], ref["grads"])


def test_siglip_defaults_and_trained_bias() -> None:
    """t' = log 10 and b = -10 at init; the bias takes Adam steps with the temperature and is checkpointed."""
    spec = tau_spec(LossConfig(name="siglip"))
    assert spec.trainable and spec.init_logit_scale == pytest.approx(math.log(10)) and spec.init_logit_bias == -10.0
    assert tau_spec(LossConfig(name="openclip")).init_logit_bias is None
    temperature = GlobalTemperature(spec, (0.9, 0.98), 1e-6, torch.device("cpu"))
    e1 = F.normalize(torch.randn(4, 3), dim=1)
    out = build_loss(LossConfig(name="siglip"), 4)(
        e1, e1, torch.arange(4), temperature.logit_scale, temperature.logit_bias
    )
    out.loss.backward()
    temperature.step(1e-2, 1e-2)
    assert temperature.logit_bias.item() == pytest.approx(-10.0 + 1e-2, abs=1e-6)  # Adam's first step: lr * sign(-grad)
    state = temperature.state_dict()
    restored = GlobalTemperature(spec, (0.9, 0.98), 1e-6, torch.device("cpu"))
    restored.load_state_dict(state)
    assert torch.equal(restored.logit_bias, temperature.logit_bias)
    assert torch.equal(restored.exp_avg, temperature.exp_avg)
    with pytest.raises(ValueError, match="logit bias"):
        build_loss(LossConfig(name="siglip"), 4)(e1, e1, torch.arange(4), temperature.logit_scale)
