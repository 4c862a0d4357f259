"""Training with a reference model (DRRho): loading, freezing, meta.json, what the reference sees, bad values,
and the 2025 gamma rule."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

from model import create_model, get_model_config
from model.convert_open_clip import save_open_clip
from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config
from train.config_io import from_dict
from train.losses import LossConfig
from train.losses.gamma import epochs_rule_gamma, gamma_for_epoch
from train.setup import resolve

REF_OVERRIDES = {"embed_dim": 32, "vision_width": 32, "text_width": 32, "vision_layers": 1}  # not the target's


def save_reference(folder: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    model = create_model("tiny", **REF_OVERRIDES)
    save_open_clip(model.state_dict(), get_model_config("tiny", **REF_OVERRIDES), folder)
    return {k: v.clone() for k, v in model.state_dict().items()}


def steered_config(out: str, ref: Path, **loss: object):
    steering = {"reference": f"open_clip:{ref}", "reference_model": "tiny", "reference_overrides": REF_OVERRIDES}
    return tiny_config(out, **(steering | loss))


def _train(rank: int, world_size: int, out: str, ref: str) -> dict:
    from train.reference import weights_hash
    from train.trainer import Trainer

    cfg = steered_config(out, Path(ref), distill_weight=0.5)
    cfg.flip.mask_ratio = 0.5
    cfg.checkpoint.every_steps = 3
    seen = []
    with Trainer(cfg, FixedBatches(8, rank, world_size, 3, image_size=32)) as trainer:
        encoder = trainer.reference

        class Spy:  # checks every call against the reference alone, unmasked, eval mode
            info = encoder.info

            def __call__(self, images, tokens, index, chunks=1):
                r1, r2 = encoder(images, tokens, index, chunks)
                with torch.no_grad():
                    expected = encoder.model(images, tokens)
                seen.append(torch.equal(r1, expected[0]) and torch.equal(r2, expected[1]))
                return r1, r2

        trainer.reference = Spy()
        trainer.fit()
        after = {k: v.clone() for k, v in encoder.model.state_dict().items()}
        frozen = not any(p.requires_grad for p in encoder.model.parameters()) and not encoder.model.training
        digest = weights_hash(after)
        target_mask = trainer.backend.raw_model.mask_ratio
    return {"after": after, "frozen": frozen, "seen": seen, "hash": digest, "target_mask": target_mask}


@pytest.mark.slow
def test_reference_is_frozen_unmasked_and_recorded_not_saved(tmp_path: Path) -> None:
    before = save_reference(tmp_path / "ref")
    (result,) = run_on_ranks(_train, 1, (str(tmp_path / "run"), str(tmp_path / "ref")))
    assert result["frozen"] and result["seen"] == [True] * 3 and result["target_mask"] == 0.5
    for name, value in before.items():
        assert torch.equal(result["after"][name], value), name
    step = tmp_path / "run" / "checkpoints" / "step_00000003"
    meta = json.loads((step / "meta.json").read_text())
    assert meta["reference"]["source"] == f"open_clip:{tmp_path / 'ref'}"
    assert meta["reference"]["sha256"] == result["hash"]
    saved = torch.load(step / "model.pt", map_location="cpu", weights_only=True)
    saved = saved.get("model", saved)
    target_keys = set(create_model("tiny").state_dict())
    assert set(saved) == target_keys  # the target's weights only: no reference tensor in our checkpoint


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        ({"name": "openclip", "version": None, "lr_tau": None, "rho": 8.0}, "needs a FastCLIP loss"),
        ({"reference": "clip:/x"}, "must be 'open_clip:PATH'"),
        ({"reference_model": None}, "name the architecture"),
        ({"reference_overrides": {"vision_image_size": 64}}, "vision_image_size"),
        ({"version": "v2", "lr_tau": 0.01, "distill_weight": 1.0}, "not v2"),
    ],
)
def test_bad_reference_values_name_the_key(tmp_path: Path, loss: dict, message: str) -> None:
    save_reference(tmp_path / "ref")
    raw = {
        "reference": f"open_clip:{tmp_path / 'ref'}",
        "reference_model": "tiny",
        "reference_overrides": REF_OVERRIDES,
    } | loss
    cfg = tiny_config(str(tmp_path / "run"))
    cfg.loss = from_dict(LossConfig, {k: v for k, v in (vars(cfg.loss) | raw).items()}, "test")
    cfg.data.webdataset.index = str(tmp_path)
    with pytest.raises(ValueError, match=message):
        resolve(cfg)


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        ({"reference": "open_clip:/no/such/ref"}, "/no/such/ref does not exist"),
        ({"reference_features": "precomputed"}, "reference_features.npy does not exist"),
    ],
)
def test_missing_reference_files_are_reported_by_the_dry_run_and_refused_by_training(
    tmp_path: Path, loss: dict, message: str
) -> None:
    from train.dry_run import dry_run
    from train.reference import build_reference

    save_reference(tmp_path / "ref")
    cfg = steered_config(str(tmp_path / "run"), tmp_path / "ref", **loss)
    cfg.data.webdataset.index = str(tmp_path)
    setup = resolve(cfg)
    assert message in dry_run(setup) and "before training" in dry_run(setup)
    with pytest.raises(ValueError, match=message):
        build_reference(cfg, setup.loss, torch.device("cpu"), None, contextlib.nullcontext)


def test_distillation_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="needs a reference"):
        LossConfig(distill_weight=1.0).validate()


@pytest.mark.parametrize("epochs", [1, 2, 7, 8, 20, 30, 100])
def test_epochs_rule_follows_the_formula(epochs: int, tmp_path: Path) -> None:
    cfg = tiny_config(str(tmp_path), gamma_schedule="epochs_rule")
    cfg.epochs = epochs
    loss = resolve(cfg).loss
    gamma_min = min(1.0, 4.177 * epochs**-0.7265)
    assert loss.gamma_decay_epochs == epochs and loss.gamma_min == pytest.approx(gamma_min, rel=1e-15)
    assert epochs_rule_gamma(epochs) == pytest.approx(gamma_min, rel=1e-15)
    gammas = [gamma_for_epoch(e, loss.gamma_schedule, loss.gamma_min, loss.gamma_decay_epochs) for e in range(epochs)]
    expected = [1.0] + [
        0.5 * (1 + math.cos(math.pi * e / epochs)) * (1 - gamma_min) + gamma_min for e in range(1, epochs)
    ]
    assert gammas == pytest.approx(expected, rel=1e-15)
    assert gamma_for_epoch(epochs, "epochs_rule", 0.5, epochs) == pytest.approx(gamma_min, rel=1e-15)


def test_epochs_rule_values() -> None:
    """The rule crosses 1 just above 7 epochs (the DRRho README's DFN-192M run: 7 epochs, gamma 1)."""
    assert epochs_rule_gamma(7) == 1.0 and epochs_rule_gamma(8) == pytest.approx(4.177 * 8**-0.7265)
    assert epochs_rule_gamma(20) == pytest.approx(0.4739, abs=1e-4)  # 4.177 / 20^0.7265


def test_resume_needs_the_same_reference(tmp_path: Path) -> None:
    from train.reference import check_same_reference

    saved = {"source": "open_clip:a", "sha256": "aa", "features": "model"}
    check_same_reference(tmp_path, saved, dict(saved))
    check_same_reference(tmp_path, None, saved)  # a checkpoint written before steering was added
    with pytest.raises(ValueError, match="resume with the same reference"):
        check_same_reference(tmp_path, saved, saved | {"sha256": "bb"})
    with pytest.raises(ValueError, match="features model"):
        check_same_reference(tmp_path, saved, saved | {"features": "precomputed"})
