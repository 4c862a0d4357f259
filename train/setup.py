"""Resolve a run once: YAML + overrides -> a validated config, its model config, loss config, temperature
spec and backend class. The trainer, the dry run, the CLI, the demo and bench_train take the result, and every
checkpoint saves it as meta.json's `resolved` block (train.checkpoint.resolved)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import CLIPConfig
from train.backends import Backend, backend_class
from train.checkpoint.compat import check_allow_changes
from train.checkpoint.resolved import model_config_for, resolved_block
from train.config import TrainConfig, read_config
from train.config_io import ConfigError, to_dict
from train.losses import LossConfig, TauSpec, tau_spec
from train.losses.gamma import epochs_rule_gamma
from train.reference_spec import resolve_reference


@dataclass(frozen=True)
class RunSetup:
    """Everything a run derives from its config, computed once."""

    cfg: TrainConfig
    model_config: CLIPConfig  # the architecture with the loss's initial logit_scale (and SigLIP's logit bias)
    loss: LossConfig  # resolved: aliases and per-version defaults filled in
    tau: TauSpec
    backend_cls: type[Backend]
    backend_options: dict[str, Any]  # the backend's own options, resolved (e.g. DeepSpeed's JSON)
    launcher_conflicts: tuple[str, ...] = ()  # accelerate config settings the recipe overrides (warned)

    @property
    def resolved(self) -> dict[str, Any]:
        """meta.json's `resolved` block: the model config, the resolved loss, the backend's options."""
        return resolved_block(
            self.cfg.model.name, self.model_config, self.loss, self.cfg.backend.name, self.backend_options
        )


def resolve(cfg: TrainConfig) -> RunSetup:
    """Section checks, then the checks across sections; raises ValueError naming the key."""
    cfg.validate()
    return resolve_validated(cfg)


def resolve_validated(cfg: TrainConfig) -> RunSetup:
    """The checks across sections of a config whose sections passed their own checks (train.config.read_config);
    raises ValueError naming the key. Each section is validated once per launch."""
    loss = cfg.loss.resolved(validate=False)
    tau = tau_spec(loss)
    try:
        model_config = model_config_for(cfg.model.name, cfg.model.overrides, tau)
    except (KeyError, TypeError) as err:
        raise ValueError(f"model.overrides: {err}") from err
    vision = model_config.vision
    for tower, layers, blocks in (
        ("image", cfg.model.lock_image_unlocked_layers, vision.layers),
        ("text", cfg.model.lock_text_unlocked_layers, model_config.text.layers),
    ):
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
    loss = resolve_reference(cfg, with_epochs_rule(loss, cfg.epochs))
    conflicts = tuple(backend_cls.launcher_conflicts(cfg, os.environ))
    return RunSetup(cfg, model_config, loss, tau, backend_cls, backend_options, conflicts)


def with_epochs_rule(loss: LossConfig, epochs: int) -> LossConfig:
    """`gamma_schedule: epochs_rule` decays over the run's epochs to min(1, 4.177 E^-0.7265)."""
    if loss.gamma_schedule != "epochs_rule":
        return loss
    return dataclasses.replace(loss, gamma_decay_epochs=epochs, gamma_min=epochs_rule_gamma(epochs))


def load_setup(path: str | Path, overrides: list[str] | None = None) -> RunSetup:
    """YAML file + `key.path=value` overrides -> RunSetup; every error is a ConfigError naming file and key."""
    return setup_for(read_config(path, overrides), path)


def setup_for(cfg: TrainConfig, path: str | Path) -> RunSetup:
    """The RunSetup of a config that train.config.read_config read from `path` and checked (train.cli hands it
    over, so nothing is read or validated twice); an error is a ConfigError naming the file and key."""
    try:
        return resolve_validated(cfg)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The validated TrainConfig of `load_setup` (for tools that only read the config)."""
    return load_setup(path, overrides).cfg
