"""ddp, DeepSpeed ZeRO-1/2/3 and fsdp2 on 2 gloo ranks train like one process on the same global batch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config
from train.backends import variants

GLOBAL_BATCH, STEPS = 8, 5
# fp32; the runs differ only in reduction order (all-reduce vs one process, bucketing): 1e-5 relative
# on the per-step loss, 2e-5 absolute on parameters after 5 AdamW steps of lr 1e-3.
LOSS_RTOL, PARAM_ATOL = 1e-5, 2e-5


def _train(rank: int, world_size: int, out_dir: str, backend: str, optim: str) -> dict:
    from train.trainer import Trainer

    cfg = tiny_config(f"{out_dir}/{backend}-{world_size}", backend, batch_size=GLOBAL_BATCH // world_size)
    cfg.optim.name = optim
    trainer = Trainer(cfg, FixedBatches(GLOBAL_BATCH, rank, world_size, STEPS))
    result = trainer.fit()
    return {"losses": result["losses"], "params": trainer.backend.full_state_dict()}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict]:
    """The 1-process run per optimizer, computed once for the module."""
    runs: dict[str, dict] = {}

    def run(optim: str) -> dict:
        if optim not in runs:
            runs[optim] = run_on_ranks(_train, 1, (str(tmp_path_factory.mktemp("ref")), "ddp", optim))[0]
        return runs[optim]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("backend,optim", [*((v, "adamw") for v in variants()), ("fsdp2", "lamb")])
def test_two_ranks_match_one_process(backend: str, optim: str, single_process: Callable, tmp_path) -> None:
    """fsdp2 + LAMB: the trust ratio's norms of sharded parameters must be global, not per shard."""
    reference = single_process(optim)
    ranks = run_on_ranks(_train, 2, (str(tmp_path), backend, optim))
    for result in ranks:
        torch.testing.assert_close(
            torch.tensor(result["losses"]), torch.tensor(reference["losses"]), rtol=LOSS_RTOL, atol=0
        )
        assert result["params"].keys() == reference["params"].keys()
        for name, value in result["params"].items():
            torch.testing.assert_close(value, reference["params"][name], rtol=0, atol=PARAM_ATOL, msg=name)
    assert len(reference["losses"]) == STEPS
    assert reference["losses"][0] != reference["losses"][-1]  # it trained


def _train_variant(
    rank: int, world_size: int, out_dir: str, backend: str, precision: str, optim: str, loss: dict
) -> list:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, backend, batch_size=GLOBAL_BATCH // world_size, **loss)
    cfg.backend.precision, cfg.optim.name, cfg.optim.lr = precision, optim, 3e-3
    cfg.model.grad_checkpointing = True
    return Trainer(cfg, FixedBatches(GLOBAL_BATCH, rank, world_size, 8)).fit()["losses"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend,world_size,precision,optim,loss",
    [
        ("ddp", 1, "bf16", "lamb", {"version": "v2", "lr_tau": 1e-2}),
        ("ddp", 1, "fp16", "adamw", {"version": "v0", "lr_tau": None}),
        ("ddp", 1, "fp32", "adamw", {"name": "openclip", "version": None, "lr_tau": None}),
        ("fsdp2", 2, "bf16", "adamw", {}),
        ("deepspeed:zero3", 2, "bf16", "adamw", {}),
    ],
)
def test_precisions_optimizers_and_losses_train(
    backend: str, world_size: int, precision: str, optim: str, loss: dict, tmp_path
) -> None:
    """Each runs with activation checkpointing; the loss must stay finite and go down on repeated batches."""
    losses = run_on_ranks(_train_variant, world_size, (str(tmp_path), backend, precision, optim, loss))[0]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
