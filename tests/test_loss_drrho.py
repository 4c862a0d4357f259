"""DRRho-CLIP (FastCLIP with a reference model) on K = 1, 2, 3 ranks vs a brute-force float64 computation.

The brute force builds the written objective on the dense G x G matrices: margins (s_ij - s_ii) - (r_ij - r_ii)
at the target's scale, g_i -> u_i + g_i - sg(g_i) wherever g_i is not differentiated, the u update
(gamma 1 on the first visit, then a revisit of the same keys with gamma 0.4), and the distillation term
w/2 * KD (times sg(tau) in v3), differentiated by autograd. In v2 each anchor's margins are at its own tau_i, the
model objective weighs each log by tau_i, and each tau_i takes one Adam step on its autograd derivative of
tau_i log(eps + u_i + g_i(tau_i) - sg(g_i)) + rho tau_i (per-sample bias correction, gradient clamp, tau
bounds). The ranks run the loss on their slice of each global batch; parameter and temperature gradients are
averaged over ranks as the backend and `GlobalTemperature` do. Tolerance: 1e-12 relative to the largest reference entry.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.ranks import run_on_ranks
from train.losses import LossConfig, build_loss
from train.losses.sample_state import merge_shards

N, G, D_IN, D, D_REF = 10, 6, 5, 4, 3
EPS, RHO, GAMMA, TAU_INIT, T_DISTILL = 1e-4, 0.7, 0.4, 0.1, 20.0
LR_TAU, BETAS, ADAM_EPS, TAU_BOUNDS, TAU_CLAMP = 0.02, (0.9, 0.999), 1e-8, (0.01, 1.0), 5.0
LOGIT_SCALE = 2.3
KEYS = torch.tensor([7, 2, 9, 0, 4, 5])


def towers() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(D_IN, D), (D_IN, D), (D_IN, D_REF), (D_IN, D_REF)]  # target image/text, reference image/text
    return [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]


def inputs(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10 + step)
    x1 = torch.randn(G, D_IN, generator=gen, dtype=torch.float64)
    return x1, x1 + 0.5 * torch.randn(G, D_IN, generator=gen, dtype=torch.float64)


def config(version: str, distill: float) -> LossConfig:
    return LossConfig(
        version=version,
        eps=EPS,
        rho=RHO,
        tau_init=TAU_INIT,
        gamma_schedule="constant",
        gamma_min=GAMMA,
        state_dtype="float64",
        reference="open_clip:unused",
        reference_model="tiny",
        distill_weight=distill,
        distill_logit_scale=T_DISTILL,
        lr_tau=LR_TAU if version == "v2" else None,
    )


def _margins(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    s = a @ b.T
    return s - s.diag()[:, None]


def _kd(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -(t.softmax(dim=1) * z.log_softmax(dim=1)).sum(dim=1).mean()


def _adam(tau: torch.Tensor, m: torch.Tensor, v: torch.Tensor, visit: int, grad: torch.Tensor) -> tuple:
    """Adam on each tau_i, written out: clamped gradient, bias correction by the visit number, bounded tau."""
    g = grad.clamp(-TAU_CLAMP, TAU_CLAMP)
    m, v = BETAS[0] * m + (1 - BETAS[0]) * g, BETAS[1] * v + (1 - BETAS[1]) * g * g
    step = (m / (1 - BETAS[0] ** visit)) / ((v / (1 - BETAS[1] ** visit)).sqrt() + ADAM_EPS)
    return (tau - LR_TAU * step).clamp(*TAU_BOUNDS), m, v


def brute_force(version: str, distill: float) -> list[dict[str, torch.Tensor]]:
    """Per step: objective value, gradients (target towers, logit scale) and the u (and v2's tau) of the keys."""
    u = {1: torch.zeros(N, dtype=torch.float64), 2: torch.zeros(N, dtype=torch.float64)}
    taus = {side: torch.full((N,), TAU_INIT, dtype=torch.float64) for side in (1, 2)}
    moments = {side: (torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)) for side in (1, 2)}
    off = ~torch.eye(G, dtype=torch.bool)
    out = []
    for step, gamma in ((0, 1.0), (1, GAMMA)):
        w1, w2, q1, q2 = towers()
        w1.requires_grad_(), w2.requires_grad_()
        ls = torch.tensor(
            [LOGIT_SCALE if version != "v1" else -math.log(TAU_INIT)], dtype=torch.float64, requires_grad=True
        )
        x1, x2 = inputs(step)
        e1, e2 = F.normalize(x1 @ w1, dim=1), F.normalize(x2 @ w2, dim=1)
        r1, r2 = F.normalize(x1 @ q1, dim=1), F.normalize(x2 @ q2, dim=1)
        scale = ls.exp() if version in ("v0", "v3") else torch.tensor(1 / TAU_INIT, dtype=torch.float64)
        objective, value = 0.0, 0.0
        for side, (a, b, ra, rb) in enumerate(((e1, e2, r1, r2), (e2, e1, r2, r1)), start=1):
            tau = taus[side][KEYS].clone().requires_grad_() if version == "v2" else None
            anchor_scale = 1 / tau[:, None] if version == "v2" else scale
            g = (torch.exp(anchor_scale * (_margins(a, b) - _margins(ra, rb))) * off).sum(dim=1) / (G - 1)
            old = u[side][KEYS]
            new = g.detach() if gamma == 1 else (1 - gamma) * old + gamma * g.detach()
            u[side] = u[side].index_put((KEYS,), new)
            log_u = torch.log(EPS + new + g - g.detach())
            if version == "v2":
                weight = tau.detach()
                tau_objective = (tau * torch.log(EPS + new + g - g.detach().detach()) + RHO * tau).sum()
                (tau_grad,) = torch.autograd.grad(tau_objective, tau, retain_graph=True)
                m, v = moments[side]
                new_tau, m[KEYS], v[KEYS] = _adam(tau.detach(), m[KEYS], v[KEYS], step + 1, tau_grad)
                taus[side] = taus[side].index_put((KEYS,), new_tau)
                objective = objective + (weight * log_u).mean() / 2
                value = value + (weight * torch.log(EPS + g.detach())).mean() / 2 + RHO * weight.mean() / 2
            else:
                objective = objective + log_u.mean() / 2
                value = value + torch.log(EPS + g.detach()).mean() / 2
        kd = (_kd(scale * e1 @ e2.T, T_DISTILL * r1 @ r2.T) + _kd(scale * e2 @ e1.T, T_DISTILL * r2 @ r1.T)) / 2
        if version == "v3":
            tau = torch.exp(-ls)
            objective = tau * objective + RHO * tau + tau.detach() * distill / 2 * kd
            value = tau.detach() * (value + distill / 2 * kd.detach()) + RHO * tau.detach()
        else:
            objective = objective + distill / 2 * kd
            value = value + distill / 2 * kd.detach()
        objective.sum().backward()
        grads = [w1.grad.flatten(), w2.grad.flatten()] + ([ls.grad] if version in ("v0", "v3") else [])
        out.append(
            {
                "value": value.reshape(()),
                "grads": torch.cat(grads),
                "u": torch.stack([u[1][KEYS], u[2][KEYS]]),
                "tau": torch.stack([taus[1][KEYS], taus[2][KEYS]]),
            }
        )
    return out


def on_ranks(rank: int, world_size: int, version: str, distill: float) -> dict:
    loss = build_loss(config(version, distill), N)
    local = slice(rank * G // world_size, (rank + 1) * G // world_size)
    steps = []
    for step in (0, 1):
        loss.set_epoch(step)
        w1, w2, q1, q2 = towers()
        w1.requires_grad_(), w2.requires_grad_()
        ls = torch.tensor(
            [LOGIT_SCALE if version != "v1" else -math.log(TAU_INIT)],
            dtype=torch.float64,
            requires_grad=version in ("v0", "v3"),
        )
        x1, x2 = (x[local] for x in inputs(step))
        e1, e2 = F.normalize(x1 @ w1, dim=1), F.normalize(x2 @ w2, dim=1)
        ref = (F.normalize(x1 @ q1, dim=1), F.normalize(x2 @ q2, dim=1))
        result = loss(e1, e2, KEYS[local], ls, reference=ref)
        result.loss.backward()
        grads = [w1.grad.flatten(), w2.grad.flatten()] + ([ls.grad] if version in ("v0", "v3") else [])
        grads = torch.cat(grads)
        if world_size > 1:
            torch.distributed.all_reduce(grads)
        steps.append({"value": result.value, "grads": grads / world_size, "state": loss.state_dict()["sample_state"]})
    return steps


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-12) -> None:
    err = (actual - expected).abs().max().item()
    assert err <= rtol * expected.abs().max().item(), f"max error {err:.3e} (largest entry {expected.abs().max():.3e})"


def check(results: list[list[dict]], version: str, distill: float) -> None:
    expected = brute_force(version, distill)
    for step, ref in enumerate(expected):
        shards = [rank_steps[step]["state"] for rank_steps in results]
        table, cols = merge_shards(shards), list(shards[0]["columns"])
        logs = torch.stack([table[KEYS, cols.index(name)] for name in ("log_u1", "log_u2")])
        assert_rel(logs.exp(), ref["u"])
        if version == "v2":
            assert_rel(torch.stack([table[KEYS, cols.index(name)] for name in ("tau1", "tau2")]), ref["tau"])
        for rank_steps in results:
            assert_rel(rank_steps[step]["value"], ref["value"])
            assert_rel(rank_steps[step]["grads"], ref["grads"])


@pytest.mark.parametrize("distill", [0.0, 0.5], ids=["steering", "steering+distill"])
@pytest.mark.parametrize("version", ["v0", "v1", "v3"])
def test_one_process_equals_brute_force(version: str, distill: float) -> None:
    check([on_ranks(0, 1, version, distill)], version, distill)


def test_v2_one_process_equals_brute_force() -> None:
    """v2 (per-sample taus; no distillation: LossConfig refuses it) with a reference."""
    check([on_ranks(0, 1, "v2", 0.0)], "v2", 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize(("version", "distill"), [("v3", 0.5), ("v1", 0.0), ("v2", 0.0)])
def test_ranks_equal_brute_force(world_size: int, version: str, distill: float) -> None:
    check(run_on_ranks(on_ranks, world_size, (version, distill), init_group=True), version, distill)


def test_reference_changes_the_objective() -> None:
    """The same batch with the reference's margins zeroed (reference = target features) is plain FastCLIP."""
    plain = build_loss(LossConfig(version="v3", eps=EPS, rho=RHO, state_dtype="float64"), N)
    steered = build_loss(config("v3", 0.0), N)
    w1, w2, q1, q2 = towers()
    x1, x2 = inputs(0)
    e1, e2 = F.normalize(x1 @ w1, dim=1), F.normalize(x2 @ w2, dim=1)
    ls = torch.tensor([LOGIT_SCALE], dtype=torch.float64)
    value = plain(e1, e2, KEYS, ls).value
    zero_margins = (torch.zeros(G, D_REF, dtype=torch.float64),) * 2
    assert_rel(steered(e1, e2, KEYS, ls, reference=zero_margins).value, value)
    other = (F.normalize(x1 @ q1, dim=1), F.normalize(x2 @ q2, dim=1))
    assert (steered(e1, e2, KEYS, ls, reference=other).value - value).abs() > 1e-3


def test_reference_features_required_exactly_when_configured() -> None:
    e = torch.zeros(G, D, dtype=torch.float64)
    ls = torch.tensor([LOGIT_SCALE], dtype=torch.float64)
    with pytest.raises(ValueError, match="loss.reference"):
        build_loss(config("v3", 0.0), N)(e, e, KEYS, ls)
    with pytest.raises(ValueError, match="loss.reference"):
        build_loss(LossConfig(version="v3"), N)(e, e, KEYS, ls, reference=(e, e))
