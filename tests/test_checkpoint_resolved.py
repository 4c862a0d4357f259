"""meta.json's `resolved` block (train.checkpoint.resolved): every checkpoint holds what train.setup resolved, and the
one model builder of a checkpoint (model_from_checkpoint, behind load_model, export, evaluation and load_clip)
rebuilds the trained model from it: the same state dict and logits as the trainer's, on ddp and on a sharded
backend. A checkpoint written before the block existed loads and resumes with the block derived from its config."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from evaluation.models import load_evaluable
from fastflip import load_clip
from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config
from tools.export import export
from train.checkpoint.consolidate import load_model, model_from_checkpoint
from train.checkpoint.files import read_meta, resolve_checkpoint
from train.checkpoint.resolved import RESOLVED, checkpoint_model_config
from train.config_io import ConfigError
from train.losses import LossConfig

GLOBAL_BATCH, STEPS = 8, 2
SIGLIP = {"name": "siglip", "version": None, "lr_tau": None}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    batch = next(iter(FixedBatches(GLOBAL_BATCH, 0, 1, 1, seed=5)))
    return batch["images"], batch["tokens"]


def _logits(model: torch.nn.Module, logit_scale: torch.Tensor, logit_bias: torch.Tensor | None) -> torch.Tensor:
    images, tokens = _inputs()
    with torch.no_grad():
        image_features, text_features, _ = model.eval()(images, tokens)
        logits = logit_scale.exp() * image_features @ text_features.T
    return logits if logit_bias is None else logits + logit_bias


def _train(rank: int, world_size: int, out_dir: str, backend: str, loss: dict, resume: bool) -> dict:
    from train.setup import resolve
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, backend, batch_size=GLOBAL_BATCH // world_size, **loss)
    if resume:  # one more epoch
        cfg.epochs, cfg.checkpoint.resume, cfg.checkpoint.allow_changes = 2, "latest", ["epochs"]
    run = resolve(cfg)
    trainer = Trainer(run, FixedBatches(GLOBAL_BATCH, rank, world_size, STEPS))
    trainer.fit()
    t = trainer.temperature
    state = trainer.backend.full_state_dict()  # every rank: a collective on sharded backends
    state["logit_scale"] = t.logit_scale.detach().clone()  # trained outside the model (train.losses.temperature)
    if t.logit_bias is not None:
        state["logit_bias"] = t.logit_bias.detach().clone()
    with trainer.backend.full_model() as model:
        logits = _logits(model, t.logit_scale.detach(), None if t.logit_bias is None else t.logit_bias.detach())
    return {
        "state": state,
        "logits": logits,
        "resolved": run.resolved,
        "config": trainer.backend.raw_model.config,
        "step": trainer.step,
    }


def _without_block(checkpoint: Path, copy: Path) -> Path:
    """`checkpoint` as it was written before meta.json had a `resolved` block."""
    shutil.copytree(checkpoint, copy)
    meta = read_meta(copy)
    del meta[RESOLVED]
    (copy / "meta.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "loss"), [("ddp", {}), ("fsdp2", SIGLIP)], ids=["ddp-fastclip", "fsdp2-siglip"])
def test_meta_json_has_the_resolved_block_and_the_checkpoint_rebuilds_the_trained_model(
    backend: str, loss: dict, tmp_path: Path
) -> None:
    ranks = run_on_ranks(_train, 2, (str(tmp_path / "run"), backend, loss, False), timeout=600)
    trained = ranks[0]
    checkpoint = resolve_checkpoint(tmp_path / "run" / "checkpoints" / "latest")
    meta = read_meta(checkpoint)

    block = meta[RESOLVED]
    assert block == trained["resolved"]
    assert set(block) == {"model", "loss", "backend"} and block["backend"] == {"name": backend, "options": {}}
    resolved_loss = block["loss"]
    assert resolved_loss["tau_init"] == (0.1 if loss else 0.07)  # per-loss defaults filled in
    assert resolved_loss["name"] == ("siglip" if loss else "fastclip") and resolved_loss["lr_tau_schedule"]
    config = checkpoint_model_config(meta)
    assert config == trained["config"]  # the trainer built its model from the same config
    assert config.init_logit_scale == pytest.approx(math.log(1 / resolved_loss["tau_init"]))
    assert config.init_logit_bias == (LossConfig().bias_init if loss else None)

    model, _ = load_model(checkpoint)  # model_from_checkpoint + the consolidated weights
    state = model.state_dict()
    assert state.keys() == trained["state"].keys()
    assert all(torch.equal(state[k], trained["state"][k]) for k in state), backend
    bias = getattr(model, "logit_bias", None)
    torch.testing.assert_close(_logits(model, model.logit_scale, bias), trained["logits"], rtol=1e-6, atol=1e-6)
    assert isinstance(model_from_checkpoint(meta), type(model))

    old = _without_block(checkpoint, tmp_path / "old" / checkpoint.name)
    assert checkpoint_model_config(read_meta(old)) == config  # derived from the saved config as setup resolves it
    old_model, _ = load_model(old)
    assert all(torch.equal(v, state[k]) for k, v in old_model.state_dict().items())


@pytest.mark.slow
def test_a_checkpoint_without_the_block_resumes_and_its_successor_has_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_on_ranks(_train, 1, (str(run), "ddp", {}, False), timeout=300)
    checkpoint = resolve_checkpoint(run / "checkpoints" / "latest")
    meta = read_meta(checkpoint)
    del meta[RESOLVED]
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    [resumed] = run_on_ranks(_train, 1, (str(run), "ddp", {}, True), timeout=300)
    assert resumed["step"] == 2 * STEPS
    assert read_meta(resolve_checkpoint(run / "checkpoints" / "latest"))[RESOLVED] == resumed["resolved"]


@pytest.mark.slow
def test_export_evaluation_and_load_clip_give_the_siglip_bias_of_the_one_default(tmp_path: Path) -> None:
    """The bias default lives in LossConfig.bias_init alone: a SigLIP run that never names it gets it in the
    trainer's model, the checkpoint's block, the open_clip export, the evaluation suite's model and load_clip."""
    [trained] = run_on_ranks(_train, 1, (str(tmp_path / "run"), "ddp", SIGLIP, False), timeout=300)
    checkpoint = resolve_checkpoint(tmp_path / "run" / "checkpoints" / "latest")
    default = LossConfig().bias_init
    folder = export(checkpoint, "open_clip", tmp_path / "open_clip")
    exported = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["init_logit_bias"]
    evaluated = load_evaluable(checkpoint).model.config.init_logit_bias
    loaded = load_clip(checkpoint).model.config.init_logit_bias
    assert trained["config"].init_logit_bias == exported == evaluated == loaded == default
    assert torch.equal(load_clip(checkpoint).model.logit_bias.detach(), trained["state"]["logit_bias"])


def test_an_old_checkpoint_whose_config_no_longer_resolves_is_refused_with_the_reason() -> None:
    meta = {"config": {"model": {"name": "tiny", "overrides": {}}, "loss": {"name": "fastclip", "beta": 0.5}}}
    with pytest.raises(ConfigError, match=r"no `resolved` block .* unknown key 'beta'.* version that wrote it"):
        checkpoint_model_config(meta)
    meta["config"]["loss"] = {"name": "siglip"}  # written before bias_init was saved: the one default applies
    assert checkpoint_model_config(meta).init_logit_bias == LossConfig().bias_init


def test_the_siglip_bias_default_has_one_home() -> None:
    """No model-building module writes its own copy of the SigLIP bias default (LossConfig.bias_init)."""
    root = Path(__file__).resolve().parents[1]
    home = root / "train" / "losses" / "config.py"
    copies = [
        str(p.relative_to(root))
        for package in ("model", "train", "tools", "evaluation", "fastflip", "studies")
        for p in (root / package).rglob("*.py")
        if p != home and "-10.0" in p.read_text()
    ]
    assert copies == ["studies/study.py"], copies  # the study's bias sweep (-10, -4, 0) names values, not a default
    assert "bias_init: float = -10.0" in home.read_text()
