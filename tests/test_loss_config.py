"""Loss config validation, gamma schedules, temperature rules, loss state round trip (1 process)."""

from __future__ import annotations

import math

import pytest
import torch

from train.losses import LossConfig, build_loss, repartition_loss_states, tau_spec
from train.losses.gamma import gamma_for_epoch
from train.losses.temperature import GlobalTemperature, per_sample_adam, step_thresh_ratio


def test_gamma_schedules() -> None:
    assert gamma_for_epoch(0, "cosine", 0.2, 18) == 1.0
    assert gamma_for_epoch(9, "cosine", 0.2, 18) == pytest.approx(0.6)  # half way: cos = 0
    assert gamma_for_epoch(1, "cosine", 0.2, 18) == pytest.approx(0.5 * (1 + math.cos(math.pi / 18)) * 0.8 + 0.2)
    assert gamma_for_epoch(18, "cosine", 0.2, 18) == 0.2
    assert gamma_for_epoch(30, "cosine", 0.2, 18) == 0.2
    assert gamma_for_epoch(0, "constant", 0.8, 10) == 1.0
    assert gamma_for_epoch(1, "constant", 0.8, 10) == 0.8
    with pytest.raises(ValueError, match="gamma_schedule"):
        gamma_for_epoch(1, "linear", 0.8, 10)


def step_thresh_lr(base_lr: float, tau: float) -> float:
    return base_lr * float(step_thresh_ratio(torch.tensor([tau], dtype=torch.float64)))


def test_step_thresh_lr_is_re_evaluated_each_step() -> None:
    assert step_thresh_lr(3e-4, 0.07) == 3e-4
    assert step_thresh_lr(3e-4, 0.03) == pytest.approx(1e-4)
    assert step_thresh_lr(3e-4, 0.01) == pytest.approx(1e-4)
    assert step_thresh_lr(3e-4, 0.031) == 3e-4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "clip"}, "name"),
        ({"version": "v4"}, "version"),
        ({"tau_grad": "paper"}, "tau_grad"),
        ({"state_layout": "striped"}, "state_layout"),
        ({"name": "sogclr", "version": "v3"}, "version"),
        ({"name": "sogclr", "gamma_schedule": "cosine"}, "gamma_schedule"),
        ({"name": "isogclr"}, "lr_tau"),
        ({"version": "v2", "lr_tau": 0.01, "lr_tau_schedule": "step_thresh"}, "lr_tau_schedule"),
        ({"name": "openclip", "version": "v1"}, "version"),
        ({"tau_init": 0.001}, "tau_init"),
        ({"gamma_min": 0.0}, "gamma_min"),
        ({"eps": 0.0}, "eps"),
        ({"tau_betas": (0.9,)}, "tau_betas"),
    ],
)
def test_validate_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"loss.{field}"):
        LossConfig(**kwargs).validate()


def test_aliases_and_defaults_resolve() -> None:
    assert (LossConfig().resolved().version, LossConfig().resolved().gamma_schedule) == ("v3", "cosine")
    sog = LossConfig(name="sogclr").resolved()
    assert (sog.name, sog.version, sog.gamma_schedule) == ("fastclip", "v1", "constant")
    iso = LossConfig(name="isogclr", lr_tau=0.0133).resolved()
    assert (iso.name, iso.version, iso.gamma_schedule, iso.lr_tau_schedule) == ("fastclip", "v2", "constant", "const")


def test_tau_spec_per_version() -> None:
    ln100 = math.log(100)
    v3 = tau_spec(LossConfig(version="v3", lr_tau=2e-4))
    assert v3.trainable and v3.schedule == "step_thresh"
    assert (v3.min_logit_scale, v3.max_logit_scale) == pytest.approx((0.0, ln100))
    assert v3.init_logit_scale == pytest.approx(math.log(1 / 0.07))
    v0 = tau_spec(LossConfig(version="v0"))
    assert v0.trainable and v0.schedule == "model" and v0.lr is None
    assert tau_spec(LossConfig(name="openclip")).trainable
    for frozen in (LossConfig(version="v1"), LossConfig(version="v2", lr_tau=0.0133, tau_init=0.03)):
        spec = tau_spec(frozen)
        assert not spec.trainable and spec.schedule == "frozen"
    tight = tau_spec(LossConfig(version="v3", lr_tau=2e-4, tau_min=0.02))
    assert tight.max_logit_scale == pytest.approx(math.log(50))


def _temperature(loss_cfg: LossConfig, tau: float) -> GlobalTemperature:
    temperature = GlobalTemperature(tau_spec(loss_cfg), (0.9, 0.98), 1e-6, torch.device("cpu"))
    with torch.no_grad():
        temperature.logit_scale.fill_(math.log(1 / tau))
    return temperature


def test_temperature_lr_rules_on_device() -> None:
    v3 = LossConfig(version="v3", lr_tau=2e-4)
    assert _temperature(v3, 0.05).lr(model_lr=1e-4, model_base_lr=1e-3).item() == pytest.approx(2e-4)
    assert _temperature(v3, 0.02).lr(model_lr=1e-4, model_base_lr=1e-3).item() == pytest.approx(2e-4 / 3)
    assert step_thresh_lr(2e-4, 0.03) == pytest.approx(2e-4 / 3) and step_thresh_lr(2e-4, 0.031) == 2e-4
    v0 = _temperature(LossConfig(version="v0"), 0.05)  # follows the model schedule from the model's base lr
    assert v0.lr(model_lr=1e-4, model_base_lr=1e-3).item() == pytest.approx(1e-4)


def test_temperature_step_is_adamw_without_decay_then_clamp() -> None:
    """Several steps equal torch AdamW (weight decay 0) on the same gradients; the clamp bounds tau."""
    cfg = LossConfig(version="v3", lr_tau=0.05, lr_tau_schedule="const")
    temperature = _temperature(cfg, 0.07)
    reference = torch.nn.Parameter(temperature.logit_scale.detach().clone())
    adamw = torch.optim.AdamW([reference], lr=0.05, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    for grad in (0.3, -1.2, 0.7, 2.0, -0.1):
        temperature.logit_scale.grad = torch.tensor([grad])
        reference.grad = torch.tensor([grad])
        temperature.step(model_lr=1.0, model_base_lr=1.0)
        adamw.step()
        assert temperature.logit_scale.item() == pytest.approx(reference.item(), abs=1e-6)
        assert temperature.logit_scale.grad is None
    temperature.logit_scale.grad = torch.tensor([-1e6])
    for _ in range(200):  # pushes logit_scale up: clamped at ln(1/tau_min) = ln 100
        temperature.logit_scale.grad = torch.tensor([-1.0])
        temperature.step(model_lr=1.0, model_base_lr=1.0)
    assert temperature.logit_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    restored = _temperature(cfg, 0.07)
    restored.load_state_dict(temperature.state_dict())
    assert torch.equal(restored.exp_avg, temperature.exp_avg) and torch.equal(restored.steps, temperature.steps)


def test_per_sample_adam_first_step_is_signed_lr_and_clamped() -> None:
    zeros = torch.zeros(3, dtype=torch.float64)
    tau, m, v, count = per_sample_adam(
        torch.tensor([0.5, 0.5, 0.011], dtype=torch.float64),
        zeros,
        zeros,
        zeros,
        torch.tensor([2.0, -30.0, 1.0], dtype=torch.float64),
        lr=0.01,
        betas=(0.9, 0.999),
        eps=1e-12,
        bounds=(0.01, 1.0),
        grad_clamp=5.0,
    )
    assert tau.tolist() == pytest.approx([0.49, 0.51, 0.01])
    assert m.tolist() == pytest.approx([0.2, -0.5, 0.1])  # gradient clamped to +-5
    assert count.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("version", ["v0", "v2", "v3"])
def test_loss_state_dict_resumes_exactly(version: str) -> None:
    cfg = LossConfig(version=version, lr_tau=0.01, gamma_schedule="constant", gamma_min=0.5, state_dtype="float64")
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.nn.functional.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=1),
            torch.nn.functional.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=1),
            torch.randperm(10, generator=gen)[:6],
        )
        for _ in range(3)
    ]
    ls = torch.tensor([2.5], dtype=torch.float64)
    first = build_loss(cfg, 10)
    for epoch, (e1, e2, keys) in enumerate(batches[:2]):
        first.set_epoch(epoch)
        first(e1, e2, keys, ls)
    saved = repartition_loss_states([first.state_dict()], 1)[0]
    resumed = build_loss(cfg, 10)
    resumed.load_state_dict(saved)
    assert resumed.gamma == first.gamma == 0.5
    e1, e2, keys = batches[2]
    a, b = first(e1, e2, keys, ls), resumed(e1, e2, keys, ls)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(first.state.table, resumed.state.table)
    with pytest.raises(ValueError, match="this run uses"):
        build_loss(LossConfig(version="v1"), 10).load_state_dict(saved)
