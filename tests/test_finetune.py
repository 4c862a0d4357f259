"""Fine-tuning controls: locked towers stay bitwise unchanged on every backend, and every optimizer group's lr is
lr x tower scale x layer_decay ** (blocks from the top); wd_exclude patterns are not decayed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import create_model
from model.lock import lock_tower
from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config
from train.backends.base import group_lr
from train.optim import param_groups

LR = 1e-3


def _expected_scale(name: str) -> float:
    """tiny: 2 blocks per tower; layer_decay 0.5, text x 0.1."""
    tower = 0.1 if name.startswith("text.") else 1.0
    if ".blocks.0." in name:
        return tower * 0.25
    if ".blocks.1." in name:
        return tower * 0.5
    if any(
        k in name
        for k in ("patch_embed", "cls_token", "pos_embed", "norm_pre", "token_embedding", "positional_embedding")
    ):
        return tower * 0.125
    return tower


def test_group_lrs_follow_layer_decay_tower_scales_and_wd_exclude() -> None:
    model = create_model("tiny")
    model.logit_scale.requires_grad_(False)
    groups = param_groups(model, 0.1, 0.5, {"text": 0.1}, wd_exclude=["visual.pos_embed"])
    names = {id(p): n for n, p in model.named_parameters()}
    seen = 0
    for group in groups:
        lr = group_lr(group, LR)
        for p in group["params"]:
            name = names[id(p)]
            assert lr == pytest.approx(LR * _expected_scale(name)), name
            seen += 1
        if any(names[id(p)] == "visual.pos_embed" for p in group["params"]):
            assert group["weight_decay"] == 0.0
    assert seen == sum(p.requires_grad for p in model.parameters())
    plain = param_groups(model, 0.1)
    assert [g["name"] for g in plain] == ["decay", "no_decay"]  # the defaults: two groups as before


def test_lock_keeps_last_blocks_and_head_trainable() -> None:
    model = create_model("tiny")
    lock_tower(model, "visual", unlocked_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual.")}
    assert all(n.startswith(("visual.blocks.1.", "visual.norm.", "visual.head.")) for n in trainable)
    assert "visual.head.weight" in trainable and "visual.blocks.1.attn.qkv.weight" in trainable
    lock_tower(model, "text", lock_norms=False)
    text = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("text.")}
    assert text and all(".ln_" in n or n.startswith("text.ln_final") for n in text)


def _train(rank: int, world_size: int, out_dir: str, backend: str) -> dict:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, backend, batch_size=4)
    cfg.model.lock_image, cfg.model.lock_image_unlocked_layers = True, 1
    cfg.model.lock_text = True
    cfg.optim.layer_decay, cfg.optim.lr_scale_text = 0.5, 0.1
    with Trainer(cfg, FixedBatches(8, rank, world_size, 3)) as trainer:
        initial = {k: v.clone() for k, v in trainer.backend.full_state_dict().items()}
        trainer.fit()
        trained = {k: v.clone() for k, v in trainer.backend.full_state_dict().items()}
        engine = getattr(trainer.backend, "engine", None)
        optimizer = engine.optimizer if engine is not None else trainer.backend.optimizer
        lrs = {g["name"]: (g["lr"], g.get("lr_scale", 1.0)) for g in optimizer.param_groups}
        last_lr = trainer.plan.lr_at(trainer.step - 1)
    return {"initial": initial, "trained": trained, "lrs": lrs, "last_lr": last_lr}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "deepspeed:zero1", "deepspeed:zero2", "deepspeed:zero3", "fsdp2"])
def test_locked_parameters_unchanged_on_every_backend(backend: str, tmp_path: Path) -> None:
    result = run_on_ranks(_train, 2, (str(tmp_path / "run"), backend), timeout=900)[0]
    initial, trained = result["initial"], result["trained"]
    locked = [
        k
        for k in initial
        if k.startswith("text.")
        or (k.startswith("visual.") and not k.startswith(("visual.blocks.1.", "visual.norm.", "visual.head.")))
    ]
    assert locked and all(torch.equal(initial[k], trained[k]) for k in locked), backend
    assert not torch.equal(initial["visual.head.weight"], trained["visual.head.weight"])  # the rest trained
    assert not torch.equal(initial["visual.blocks.1.attn.qkv.weight"], trained["visual.blocks.1.attn.qkv.weight"])
    for name, (lr, scale) in result["lrs"].items():
        assert lr == pytest.approx(result["last_lr"] * scale), name
        assert scale in (pytest.approx(1.0), pytest.approx(0.5)), name  # visual head, visual block 1


def test_dry_run_reports_trainable_parameters_and_the_micro_batch() -> None:
    from train.dry_run import dry_run
    from train.setup import load_setup

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "siglip_cc3m_vitb32_1node.yaml"
    plain = dry_run(load_setup(recipe))
    locked = dry_run(load_setup(recipe, ["model.lock_image=true", "optim.accum_steps=4"]))
    assert "trainable: all" in plain
    assert "trainable: 63." in locked and "locked towers save" in locked  # the text tower of ViT-B-32
    assert "4 micro-batches of 32 per rank" in locked
    mem = [float(t.split("=")[0].split()[-1]) for t in (plain, locked) for t in [t.split("(estimate, GiB): ")[1]]]
    assert mem[1] < mem[0]
