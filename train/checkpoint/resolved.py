"""The `resolved` block of a checkpoint's meta.json: what train.setup resolved from the recipe, saved as it was used.

    "resolved": {
      "model": {"name": "ViT-B-32", "config": {... CLIPConfig, with init_logit_scale and init_logit_bias ...}},
      "loss": {... LossConfig.resolved(): aliases and per-version defaults filled in ...},
      "backend": {"name": "deepspeed", "options": {"ds_config": {... the JSON with "auto" filled in ...}}}
    }

The model config is derived here once (`model_config_for`): the architecture with the temperature's initial
logit_scale and, for SigLIP, the initial logit bias (LossConfig.bias_init is the one home of its default). The
trainer builds its model from it, and `checkpoint_model_config` reads it back for everything that rebuilds a
model from a checkpoint (train.checkpoint.consolidate.model_from_checkpoint: evaluation, export, fastflip.load_clip,
a fastflip: reference, the study). A checkpoint written before the block existed has it derived from its saved
config by the same functions.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from model.configs import CLIPConfig, get_model_config
from train.config_io import ConfigError, from_dict, to_dict
from train.losses.config import LossConfig

if TYPE_CHECKING:
    from train.losses.temperature import TauSpec

RESOLVED = "resolved"


def model_config_for(name: str, overrides: dict[str, Any], tau: TauSpec) -> CLIPConfig:
    """The named architecture with `overrides`, starting from the loss's temperature (and SigLIP's bias)."""
    init = {"init_logit_scale": tau.init_logit_scale}
    if tau.init_logit_bias is not None:
        init["init_logit_bias"] = tau.init_logit_bias
    return get_model_config(name, **(overrides | init))


def resolved_block(
    model_name: str, model_config: CLIPConfig, loss: LossConfig, backend: str, backend_options: dict[str, Any]
) -> dict[str, Any]:
    """The block as plain JSON (a copy: nothing that later mutates the backend's options changes it)."""
    block = {
        "model": {"name": model_name, "config": to_dict(model_config)},
        "loss": to_dict(loss),
        "backend": {"name": backend, "options": backend_options},
    }
    return json.loads(json.dumps(block))


def checkpoint_model_config(meta: dict[str, Any]) -> CLIPConfig:
    """The model config a checkpoint was trained with, from its meta.json (`resolved`, else its saved config)."""
    block = meta.get(RESOLVED)
    if block is None:
        return _derived_model_config(meta["config"])
    return from_dict(CLIPConfig, block["model"]["config"], f"meta.json {RESOLVED}.model.config")


def _derived_model_config(config: dict[str, Any]) -> CLIPConfig:
    """A checkpoint from before the `resolved` block: its model and loss sections resolved as train.setup does."""
    from train.losses.temperature import tau_spec  # noqa: PLC0415 (torch: only old checkpoints need it)

    try:
        loss = from_dict(LossConfig, config["loss"], "meta.json config.loss").resolved()
    except ValueError as err:  # ConfigError too
        raise ConfigError(
            f"this checkpoint has no `{RESOLVED}` block (written before it was saved) and its saved loss "
            f"config no longer resolves ({err}); load it with the version that wrote it"
        ) from err
    model = config["model"]
    return model_config_for(model["name"], dict(model.get("overrides", {})), tau_spec(loss))
