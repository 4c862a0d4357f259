"""2 gloo ranks vs 1 process on the same global batches (fp32, tolerance 1e-6 relative).

A tiny two-tower linear model produces the features; each rank feeds its half of every
global batch, gradients are averaged over ranks as a backend would, and we compare with one
process seeing the whole batch: loss values, averaged parameter gradients and the per-sample
state after every step. Keys repeat within and across batches. The sharded and replicated
layouts must agree exactly, and resuming with re-partitioned state (K=1 -> 2, 2 -> 1) must
continue the uninterrupted run.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests import checks
from tests.ranks import run_on_ranks
from train.losses import LossConfig, build_loss, repartition_loss_states
from train.losses.sample_state import merge_shards

assert_rel = functools.partial(checks.assert_rel, rtol=1e-6)

pytestmark = pytest.mark.slow

N, G, D_IN, D, STEPS, K = 12, 8, 6, 4, 5, 2
CONFIGS = {
    "openclip": LossConfig(name="openclip"),
    "v0": LossConfig(version="v0"),
    "v1": LossConfig(version="v1"),
    "v2": LossConfig(version="v2", lr_tau=0.02, tau_init=0.05, rho=0.5),
    "v3": LossConfig(version="v3", rho=0.5),
    "v2_reference": LossConfig(version="v2", tau_grad="reference", lr_tau=0.02, tau_init=0.05, rho=0.5),
    "v3_reference": LossConfig(version="v3", tau_grad="reference", rho=0.5),
    "v2_replicated": LossConfig(version="v2", lr_tau=0.02, tau_init=0.05, rho=0.5, state_layout="replicated"),
    "v3_replicated": LossConfig(version="v3", rho=0.5, state_layout="replicated"),
}
COMMON = {"gamma_schedule": "constant", "gamma_min": 0.6}


class Towers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.image = torch.nn.Parameter(torch.randn(D_IN, D, generator=gen))
        self.text = torch.nn.Parameter(torch.randn(D_IN, D, generator=gen))
        self.logit_scale = torch.nn.Parameter(torch.tensor([2.0]))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norm = torch.nn.functional.normalize
        return norm(x1 @ self.image, dim=1), norm(x2 @ self.text, dim=1)


def batches() -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(epoch, image inputs, text inputs, keys) per step; keys drawn with replacement."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for step in range(STEPS + 1):
        x1 = torch.randn(G, D_IN, generator=gen)
        x2 = x1 + 0.5 * torch.randn(G, D_IN, generator=gen)
        out.append((min(step, 1), x1, x2, torch.randint(0, N, (G,), generator=gen)))
    return out


def run_steps(rank: int, world_size: int, names: list[str], steps: range, states: dict | None = None) -> dict:
    """Run `steps` of every named config; per step: value, averaged grads, stats; then the state."""
    results = {}
    for name in names:
        cfg = LossConfig(**{**vars(CONFIGS[name]), **({} if name == "openclip" else COMMON)})
        model, loss = Towers(), build_loss(cfg, N)
        if states is not None:
            loss.load_state_dict(states[name])
        local = slice(rank * G // world_size, (rank + 1) * G // world_size)
        records = []
        for epoch, x1, x2, keys in (batches()[s] for s in steps):
            loss.set_epoch(epoch)
            model.zero_grad()
            out = loss(*model(x1[local], x2[local]), keys[local], model.logit_scale)
            out.loss.backward()
            grads = torch.cat(
                [torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in model.parameters()]
            )
            if world_size > 1:
                torch.distributed.all_reduce(grads)
            records.append({"value": out.value, "grads": grads / world_size, "stats": out.stats})
        results[name] = {"records": records, "state": loss.state_dict()}
    return results


@pytest.fixture(scope="module")
def runs() -> dict:
    names = list(CONFIGS)
    single = run_steps(0, 1, names, range(STEPS + 1))
    head = run_steps(0, 1, ["v2", "v3"], range(3))  # 1-process state after 3 steps, resumed on 2 ranks
    resume_states = [
        {name: repartition_loss_states([head[name]["state"]], K)[rank] for name in head} for rank in range(K)
    ]
    ranks = run_on_ranks(_two_rank_job, K, args=(names, resume_states), init_group=True)
    return {"single": single, "ranks": ranks}


def _two_rank_job(rank: int, world_size: int, names: list[str], resume_states: list[dict]) -> dict:
    return {
        "full": run_steps(rank, world_size, names, range(STEPS)),
        "resumed": run_steps(rank, world_size, ["v2", "v3"], range(3, STEPS), resume_states[rank]),
    }


def test_batches_repeat_keys() -> None:
    keys = batches()[0][3]
    assert keys.unique().numel() < keys.numel()


@pytest.mark.parametrize("name", [n for n in CONFIGS if "replicated" not in n])
def test_two_ranks_equal_one_process(runs: dict, name: str) -> None:
    single = runs["single"][name]["records"]
    for step in range(STEPS):
        rank_values = [r["full"][name]["records"][step]["value"] for r in runs["ranks"]]
        assert torch.equal(rank_values[0], rank_values[1]), "value differs between ranks"
        assert_rel(rank_values[0], single[step]["value"])
        for r in runs["ranks"]:
            assert_rel(r["full"][name]["records"][step]["grads"], single[step]["grads"])
        assert (
            runs["ranks"][0]["full"][name]["records"][step]["stats"]
            == runs["ranks"][1]["full"][name]["records"][step]["stats"]
        )
    if name != "openclip":
        shards = [r["full"][name]["state"]["sample_state"] for r in runs["ranks"]]
        assert shards[0]["table"].shape[0] == N // K  # each rank stores only its half
        assert_rel(merge_shards(shards), _single_table_after(runs, name, STEPS))


def _single_table_after(runs: dict, name: str, steps: int) -> torch.Tensor:
    """The 1-process table after `steps` steps (rerun, since the fixture ran STEPS + 1)."""
    return merge_shards([run_steps(0, 1, [name], range(steps))[name]["state"]["sample_state"]])


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_sharded_equals_replicated_exactly(runs: dict, version: str) -> None:
    for r in runs["ranks"]:
        sharded, replicated = r["full"][version], r["full"][f"{version}_replicated"]
        for a, b in zip(sharded["records"], replicated["records"], strict=True):
            assert torch.equal(a["value"], b["value"]) and torch.equal(a["grads"], b["grads"])
    sharded_shards = [r["full"][version]["state"]["sample_state"] for r in runs["ranks"]]
    replicated_shards = [r["full"][f"{version}_replicated"]["state"]["sample_state"] for r in runs["ranks"]]
    assert torch.equal(merge_shards(sharded_shards), merge_shards(replicated_shards))
    assert torch.equal(replicated_shards[0]["table"], replicated_shards[1]["table"])


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_resume_across_world_sizes(runs: dict, version: str) -> None:
    single = runs["single"][version]["records"]
    # K=1 -> 2: the 2-rank continuation of the 1-process state matches the uninterrupted run.
    for step, rec in zip(range(3, STEPS), runs["ranks"][0]["resumed"][version]["records"], strict=True):
        assert_rel(rec["value"], single[step]["value"])
        assert_rel(rec["grads"], single[step]["grads"])
    # K=2 -> 1: the 2-rank state, re-partitioned, continues in one process.
    states = [r["full"][version]["state"] for r in runs["ranks"]]
    (merged,) = repartition_loss_states(states, 1)
    rec = run_steps(0, 1, [version], range(STEPS, STEPS + 1), {version: merged})[version]["records"][0]
    assert_rel(rec["value"], single[STEPS]["value"])
    assert_rel(rec["grads"], single[STEPS]["grads"])


def test_v2_taus_stay_in_bounds(runs: dict) -> None:
    table = merge_shards([r["full"]["v2"]["state"]["sample_state"] for r in runs["ranks"]])
    columns = runs["ranks"][0]["full"]["v2"]["state"]["sample_state"]["columns"]
    taus = table[:, [columns.index("tau1"), columns.index("tau2")]]
    assert ((taus >= 0.01) & (taus <= 1.0)).all()
    assert not torch.all(taus == 0.05), "taus never moved"
