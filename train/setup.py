"""Resolve a run once: YAML + overrides -> a validated config, its model config, loss config, temperature
spec and backend class. The trainer, the dry run, the CLI, the demo and bench_train take the result."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import CLIPConfig, get_model_config
from train.backends import Backend, backend_class
from train.checkpoint.compat import check_allow_changes
from train.config import TrainConfig, read_config
from train.config_io import ConfigError, to_dict
from train.losses import LossConfig, TauSpec, tau_spec
from train.losses.gamma import epochs_rule_gamma
from train.reference_spec import resolve_reference


@dataclass(frozen=True)
class RunSetup:
    """Everything a run derives from its config, computed once."""

    cfg: TrainConfig
    model_config: CLIPConfig
    loss: LossConfig  # resolved: aliases and per-version defaults filled in
    tau: TauSpec
    backend_cls: type[Backend]
    backend_options: dict[str, Any]  # the backend's own options, resolved (e.g. DeepSpeed's JSON)
    launcher_conflicts: tuple[str, ...] = ()  # accelerate config settings the recipe overrides (warned)


def resolve(cfg: TrainConfig) -> RunSetup:
    """Section checks, then the checks across sections; raises ValueError naming the key."""
    cfg.validate()
    try:
        model_config = get_model_config(cfg.model.name, **cfg.model.overrides)
    except (KeyError, TypeError) as err:
        raise ValueError(f"model.overrides: {err}") from err
    vision = model_config.vision
    for tower, layers, blocks in (("image", cfg.model.lock_image_unlocked_layers, vision.layers),
                                  ("text", cfg.model.lock_text_unlocked_layers, model_config.text.layers)):  # fmt: skip
        if layers > blocks:
            raise ValueError(f"model.lock_{tower}_unlocked_layers must lie in [0, {blocks}], got {layers}")
    if cfg.data.image_size != vision.image_size:
        raise ValueError(
            f"data.image_size {cfg.data.image_size} differs from model {cfg.model.name}'s image size "
            f"{vision.image_size}; set data.image_size: {vision.image_size} (or model.overrides.vision_image_size)"
        )
    check_allow_changes(cfg.checkpoint.allow_changes, to_dict(cfg))
    backend_cls = backend_class(cfg.backend.name)
    backend_options = backend_cls.check_config(cfg, vision.width)  # before any process group exists
    loss = resolve_reference(cfg, with_epochs_rule(cfg.loss.resolved(), cfg.epochs))
    conflicts = tuple(backend_cls.launcher_conflicts(cfg, os.environ))
    return RunSetup(cfg, model_config, loss, tau_spec(loss), backend_cls, backend_options, conflicts)


def with_epochs_rule(loss: LossConfig, epochs: int) -> LossConfig:
    """`gamma_schedule: epochs_rule` decays over the run's epochs to min(1, 4.177 E^-0.7265)."""
    if loss.gamma_schedule != "epochs_rule":
        return loss
    return dataclasses.replace(loss, gamma_decay_epochs=epochs, gamma_min=epochs_rule_gamma(epochs))


def load_setup(path: str | Path, overrides: list[str] | None = None) -> RunSetup:
    """YAML file + `key.path=value` overrides -> RunSetup; every error is a ConfigError naming file and key."""
    cfg = read_config(path, overrides)
    try:
        return resolve(cfg)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The validated TrainConfig of `load_setup` (for tools that only read the config)."""
    return load_setup(path, overrides).cfg
