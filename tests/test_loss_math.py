"""float64 checks of the FastCLIP surrogates against autograd of the written objectives.

The reference objectives are computed densely (one G x G matrix, no log-sum-exp shift), with
g_i replaced by its current estimate u_i wherever g_i is not differentiated:
g_i -> u_i + g_i - sg(g_i). Tolerance: 1e-9 relative to the largest reference entry.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from tests import checks
from train.losses import LossConfig, build_loss

assert_rel = functools.partial(checks.assert_rel, rtol=1e-9)

N, G, D = 20, 8, 4
EPS = 1e-14
RHO = 0.7
LR_TAU = 0.05


def dense_g(e1: torch.Tensor, e2: torch.Tensor, scale1: torch.Tensor, scale2: torch.Tensor):
    """g1 (image anchors) and g2 (text anchors); scale = 1/tau, scalar or per anchor [n]."""
    s = e1 @ e2.T
    pos = s.diag()
    off = ~torch.eye(len(e1), dtype=torch.bool)
    g1 = (torch.exp(scale1.reshape(-1, 1) * (s - pos[:, None])) * off).sum(1) / (len(e1) - 1)
    g2 = (torch.exp(scale2.reshape(-1, 1) * (s.T - pos[:, None])) * off).sum(1) / (len(e1) - 1)
    return g1, g2


def u_hat(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Value u, derivative of g."""
    return u + g - g.detach()


def make_loss(version: str, tau_grad: str = "exact", **kw):
    cfg = LossConfig(
        name="fastclip",
        version=version,
        tau_grad=tau_grad,
        eps=EPS,
        rho=RHO,
        tau_init=0.1,
        gamma_schedule="constant",
        gamma_min=0.4,
        lr_tau=LR_TAU,
        state_dtype="float64",
        **kw,
    )
    return build_loss(cfg, N)


def features(seed: int):
    gen = torch.Generator().manual_seed(seed)
    e1 = torch.nn.functional.normalize(torch.randn(G, D, generator=gen, dtype=torch.float64), dim=1)
    e2 = torch.nn.functional.normalize(torch.randn(G, D, generator=gen, dtype=torch.float64) + 0.8 * e1, dim=1)
    return e1.requires_grad_(), e2.requires_grad_()


def table(loss, keys: torch.Tensor, name: str) -> torch.Tensor:
    return loss.state.table[keys, loss.state.col(name)].clone()


KEYS = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:G]


def run_step(loss, seed: int, ls_value: float):
    """One loss step; returns features, logit_scale and their gradients."""
    e1, e2 = features(seed)
    ls = torch.tensor([ls_value], dtype=torch.float64, requires_grad=True)
    out = loss(e1, e2, KEYS, ls)
    out.loss.backward()
    return e1, e2, ls, out


@pytest.mark.parametrize("version", ["v0", "v1", "v3"])
@pytest.mark.parametrize("second_step", [False, True], ids=["first_visit", "moving_average"])
def test_exact_global_tau_matches_autograd(version: str, second_step: bool) -> None:
    loss = make_loss(version)
    if second_step:
        run_step(loss, seed=1, ls_value=2.0)
        loss.set_epoch(1)  # gamma 0.4: u is now a mix of two batches
    e1, e2, ls, out = run_step(loss, seed=2, ls_value=2.3)
    u1, u2 = table(loss, KEYS, "log_u1").exp(), table(loss, KEYS, "log_u2").exp()

    r1, r2 = e1.detach().clone().requires_grad_(), e2.detach().clone().requires_grad_()
    rls = ls.detach().clone().requires_grad_()
    scale = torch.tensor(1 / 0.1, dtype=torch.float64) if version == "v1" else rls.exp()
    g1, g2 = dense_g(r1, r2, scale, scale)
    if not second_step:
        assert_rel(u1, g1.detach())
        assert_rel(u2, g2.detach())
    inner = (torch.log(EPS + u_hat(u1, g1)) + torch.log(EPS + u_hat(u2, g2))).mean() / 2
    objective = inner if version != "v3" else torch.exp(-rls) * inner + RHO * torch.exp(-rls)
    objective.backward()

    assert_rel(e1.grad, r1.grad)
    assert_rel(e2.grad, r2.grad)
    if version == "v1":
        assert ls.grad is None
    else:
        assert_rel(ls.grad, rls.grad)
    if not second_step:  # with u = g the logged value is the objective itself
        assert_rel(out.value, objective.detach())


@pytest.mark.parametrize("second_step", [False, True], ids=["first_visit", "moving_average"])
def test_exact_v2_matches_autograd(second_step: bool) -> None:
    loss = make_loss("v2")
    if second_step:
        run_step(loss, seed=1, ls_value=2.0)
        loss.set_epoch(1)
    tau_old = [table(loss, KEYS, f"tau{s}") for s in "12"]
    m_old = [table(loss, KEYS, f"m{s}") for s in "12"]
    v_old = [table(loss, KEYS, f"v{s}") for s in "12"]
    count_old = table(loss, KEYS, "count")
    e1, e2, ls, _ = run_step(loss, seed=2, ls_value=2.3)
    assert ls.grad is None  # v2 never touches logit_scale
    u1, u2 = table(loss, KEYS, "log_u1").exp(), table(loss, KEYS, "log_u2").exp()

    r1, r2 = e1.detach().clone().requires_grad_(), e2.detach().clone().requires_grad_()
    t1, t2 = (t.clone().requires_grad_() for t in tau_old)
    g1, g2 = dense_g(r1, r2, 1 / t1, 1 / t2)
    per_sample = [t * torch.log(EPS + u_hat(u, g)) + RHO * t for t, u, g in ((t1, u1, g1), (t2, u2, g2))]
    objective = (per_sample[0] + per_sample[1]).mean() / 2
    model_grads = torch.autograd.grad(objective, [r1, r2], retain_graph=True)
    assert_rel(e1.grad, model_grads[0])
    assert_rel(e2.grad, model_grads[1])

    # Per-sample tau gradient d/dtau_i of [tau_i log(eps + g_i) + rho tau_i], then one Adam step.
    tau_grads = torch.autograd.grad(per_sample[0].sum() + per_sample[1].sum(), [t1, t2])
    count = count_old + 1
    for side, grad, tau, m, v in zip("12", tau_grads, tau_old, m_old, v_old, strict=True):
        grad = grad.clamp(-5, 5)
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        step = LR_TAU * (m / (1 - 0.9**count)) / ((v / (1 - 0.999**count)).sqrt() + 1e-8)
        assert_rel(table(loss, KEYS, f"tau{side}"), (tau - step).clamp(0.01, 1.0))
        assert_rel(table(loss, KEYS, f"m{side}"), m)
    assert torch.equal(table(loss, KEYS, "count"), count)


def _gcl_surrogate(r1, r2, scale, u1, u2):
    g1, g2 = dense_g(r1, r2, scale, scale)
    return ((g1 / (EPS + u1)) + (g2 / (EPS + u2))).mean() / 2


@pytest.mark.parametrize("version", ["v0", "v3"])
def test_reference_global_tau_double_counts_g_path(version: str) -> None:
    exact, ref = make_loss(version), make_loss(version, tau_grad="reference")
    e1x, e2x, lsx, _ = run_step(exact, seed=3, ls_value=2.3)
    e1r, e2r, lsr, _ = run_step(ref, seed=3, ls_value=2.3)
    assert_rel(e1r.grad, e1x.grad)  # model gradients are the same in both modes
    assert_rel(e2r.grad, e2x.grad)
    u1, u2 = table(ref, KEYS, "log_u1").exp(), table(ref, KEYS, "log_u2").exp()
    rls = lsr.detach().clone().requires_grad_()
    g_path = _gcl_surrogate(e1r.detach(), e2r.detach(), rls.exp(), u1, u2)
    if version == "v3":
        g_path = torch.exp(-rls.detach()) * g_path
    (extra,) = torch.autograd.grad(g_path, rls)
    assert_rel(lsr.grad, lsx.grad + extra)
    if version == "v0":
        assert_rel(lsr.grad, 2 * lsx.grad)


def test_reference_v3_matches_fast_clip_formula() -> None:
    """fast_clip: loss = L / ls + rho / ls + mean(log u1 + log u2) / 2 / ls with logit scale ls,
    L = (loss1 + loss2) / 2, loss1 = anchors with grad x detached columns, loss2 the converse."""
    ref = make_loss("v3", tau_grad="reference")
    e1, e2, ls, _ = run_step(ref, seed=4, ls_value=2.3)
    u1, u2 = table(ref, KEYS, "log_u1").exp(), table(ref, KEYS, "log_u2").exp()
    r1, r2 = e1.detach().clone().requires_grad_(), e2.detach().clone().requires_grad_()
    rls = ls.detach().clone().requires_grad_()
    scale = rls.exp()
    s_anchor = r1 @ r2.detach().T  # anchor image with grad, text columns detached
    s_text_anchor = r2 @ r1.detach().T
    pos = (r1 * r2).sum(1)
    off = ~torch.eye(G, dtype=torch.bool)
    loss1 = (
        (torch.exp(scale * (s_anchor - pos[:, None])) * off).sum(1) / (G - 1) / (u1 + EPS)
        + (torch.exp(scale * (s_text_anchor - pos[:, None])) * off).sum(1) / (G - 1) / (u2 + EPS)
    ).mean()
    pos_d = pos.detach()
    s_col_text = r1.detach() @ r2.T  # anchors detached, columns with grad
    s_col_img = r2.detach() @ r1.T
    loss2 = (
        (torch.exp(scale * (s_col_text - pos_d[:, None])) * off).sum(1) / (G - 1) / (u1 + EPS)
        + (torch.exp(scale * (s_col_img - pos_d[:, None])) * off).sum(1) / (G - 1) / (u2 + EPS)
    ).mean()
    loss = (loss1 + loss2) / 2 / scale.detach() + RHO / scale + (torch.log(u1) + torch.log(u2)).mean() / 2 / scale
    loss.sum().backward()
    assert_rel(e1.grad, r1.grad)
    assert_rel(e2.grad, r2.grad)
    assert_rel(ls.grad, rls.grad)


def test_reference_v2_omits_tau_weight() -> None:
    ref = make_loss("v2", tau_grad="reference")
    ref.set_epoch(0)
    tau1, tau2 = table(ref, KEYS, "tau1"), table(ref, KEYS, "tau2")
    e1, e2, _, _ = run_step(ref, seed=5, ls_value=2.3)
    u1, u2 = table(ref, KEYS, "log_u1").exp(), table(ref, KEYS, "log_u2").exp()
    r1, r2 = e1.detach().clone().requires_grad_(), e2.detach().clone().requires_grad_()
    g1, g2 = dense_g(r1, r2, 1 / tau1, 1 / tau2)
    (((g1 / (EPS + u1)) + (g2 / (EPS + u2))).mean() / 2).backward()
    assert_rel(e1.grad, r1.grad)
    assert_rel(e2.grad, r2.grad)


def test_repeated_keys_in_one_batch_write_the_last_occurrence() -> None:
    loss = make_loss("v0")
    keys = torch.tensor([3, 5, 3, 7, 5, 3, 9, 11])
    e1, e2 = features(6)
    loss(e1, e2, keys, torch.tensor([2.0], dtype=torch.float64))
    scale = torch.tensor(math.exp(2.0), dtype=torch.float64)
    g1, _ = dense_g(e1.detach(), e2.detach(), scale, scale)
    assert_rel(loss.state.table[keys, 0].exp(), g1[[5, 4, 5, 3, 4, 5, 6, 7]])


EXTREME = ["openclip", "v0", "v1", "v2", "v3"]


@pytest.mark.parametrize("tau_grad", ["exact", "reference"])
@pytest.mark.parametrize("version", EXTREME)
def test_tau_001_with_extreme_similarities_is_finite(version: str, tau_grad: str) -> None:
    """s_ij - s_ii in {-2, 0, 2} at tau = 0.01: exponents of +-200 in fp32, over two steps."""
    cfg = (
        LossConfig(name="openclip")
        if version == "openclip"
        else LossConfig(name="fastclip", version=version, tau_grad=tau_grad, tau_init=0.01, lr_tau=0.01, gamma_min=0.2)
    )
    loss = build_loss(cfg, N)
    sign = torch.tensor([1.0, -1.0] * (G // 2))
    base = torch.zeros(G, 2)
    base[:, 0] = 1.0
    for epoch in (0, 1):
        loss.set_epoch(epoch)
        e1 = base.clone().requires_grad_()
        e2 = (base * (sign if epoch == 0 else -sign)[:, None]).requires_grad_()
        ls = torch.tensor([math.log(100.0)], requires_grad=True)
        out = loss(e1, e2, KEYS, ls)
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(out.value)
        assert all(math.isfinite(v) for v in out.stats.values()), out.stats
        assert torch.isfinite(e1.grad).all() and torch.isfinite(e2.grad).all()
        assert ls.grad is None or torch.isfinite(ls.grad).all()
    if version != "openclip":
        assert torch.isfinite(loss.state.table[KEYS]).all()
