"""Checks of `loss.reference` that need no torch: the source names an architecture that can encode the target's
batch (train.setup), and the files a run needs exist (the dry run reports them, the trainer refuses without)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from model.configs import get_model_config
from train.losses.config import LossConfig

if TYPE_CHECKING:
    from train.config import TrainConfig

FEATURES_FILE = "reference_features.npy"  # [rows, 2, d] float16, written by tools/reference_features.py
FEATURES_META = "reference_features.json"  # its source, hash and architecture


def features_dir(cfg: TrainConfig) -> Path:
    """Where precomputed reference features live: the index directory (data.webdataset.index, else data.path)."""
    return Path(cfg.data.webdataset.index or cfg.data.path)


def reference_architecture(loss: LossConfig) -> tuple[str, dict]:
    """(model name, overrides) of the reference: from the recipe, or from a fastflip checkpoint's meta.json."""
    source, _, path = loss.reference.partition(":")
    if source != "fastflip":
        return loss.reference_model, dict(loss.reference_overrides)
    meta = json.loads((Path(path) / "meta.json").read_text())
    model = meta["config"]["model"]
    return model["name"], dict(model.get("overrides", {}))


def resolve_reference(cfg: TrainConfig, loss: LossConfig) -> LossConfig:
    """`loss` unchanged if its reference is usable; else a ValueError naming the key and the fix."""
    if loss.reference is None:
        return loss
    source, _, path = loss.reference.partition(":")
    if source == "fastflip" and not (Path(path) / "meta.json").is_file():
        raise ValueError(
            f"loss.reference: {path} is not a complete FastFLIP checkpoint (no meta.json); name a step_* directory"
        )
    name, overrides = reference_architecture(loss)
    try:
        ref = get_model_config(name, **overrides)
    except (KeyError, TypeError) as err:
        raise ValueError(f"loss.reference_model / reference_overrides: {err}") from err
    target = get_model_config(cfg.model.name, **cfg.model.overrides)
    for field, mine, theirs in (
        ("vision_image_size", target.vision.image_size, ref.vision.image_size),
        ("text_context_length", target.text.context_length, ref.text.context_length),
        ("text_vocab_size", target.text.vocab_size, ref.text.vocab_size),
    ):
        if mine != theirs:
            raise ValueError(
                f"loss.reference: the reference {name} has {field} {theirs}, the target {mine}; it "
                f"encodes the target's batch: set loss.reference_overrides.{field}: {mine}"
            )
    return loss


def missing_reference_files(cfg: TrainConfig, loss: LossConfig) -> list[str]:
    """What a run with this reference needs on disk and lacks (the dry run reports it, training refuses)."""
    if loss.reference is None:
        return []
    if loss.reference_features == "precomputed":
        features = features_dir(cfg) / FEATURES_FILE
        return (
            []
            if features.is_file()
            else [
                f"loss.reference_features: precomputed, but {features} does not exist; write it with "
                "python tools/reference_features.py --config RECIPE (or use reference_features: model)"
            ]
        )
    source, _, path = loss.reference.partition(":")
    return [] if Path(path).exists() else [f"loss.reference: {path} does not exist (give the {source} model's path)"]
