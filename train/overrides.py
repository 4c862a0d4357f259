"""What the command line changes in a recipe: a `loss.name=` override that switches the loss starts the loss
section afresh (the YAML's keys for the old loss are dropped, with a line saying which), and an error caused by
an override names the command line rather than the YAML. Torch-free (train.cli reads recipes before torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from data.url_secrets import url_secret
from train.progress import say

KEPT = ("name", "tau_min", "tau_max")  # every loss's temperature is clamped to [tau_min, tau_max]: not a loss's own


def override_keys(overrides: list[str]) -> dict[str, str]:
    """Dotted key -> the `key=value` item that sets it (the last one wins, as in apply_overrides)."""
    return {item.split("=", 1)[0]: item for item in overrides if "=" in item}


def switch_loss(raw: dict[str, Any], overrides: list[str], path: str | Path) -> dict[str, Any]:
    """`raw` (the YAML) without its loss keys when the command line names another loss.

    A loss's own keys (FastCLIP's version, rho and gamma, SigLIP's bias, the temperature's init and lr) mean nothing
    or the wrong thing for another loss, so `loss.name=siglip` on a FastCLIP recipe trains SigLIP with SigLIP's
    defaults; the temperature's bounds (KEPT) stay, and loss keys given on the command line apply."""
    given = override_keys(overrides)
    section = raw.get("loss")
    if "loss.name" not in given or not isinstance(section, dict):
        return raw
    try:  # the value as apply_overrides reads it: `loss.name="fastclip"` names fastclip
        new = yaml.safe_load(given["loss.name"].split("=", 1)[1])
    except yaml.YAMLError:
        return raw  # apply_overrides reports it
    old = section.get("name", "fastclip")
    dropped = sorted(k for k in section if k not in KEPT and f"loss.{k}" not in given)
    if new == old or not dropped:
        return raw
    say(
        f"loss.name={new} on the command line replaces {path}'s loss {old!r}: its loss keys "
        f"{', '.join(dropped)} are dropped ({new}'s defaults apply; set any of them on the command line)",
        once=True,
    )
    return raw | {"loss": {k: v for k, v in section.items() if k not in dropped}}


def blame(path: str | Path, overrides: list[str], message: str) -> str:
    """Where a config error comes from: the command line items it concerns (with the YAML they were applied to),
    or the YAML alone. Every section's errors name their dotted key (`loss.rho must be ...`)."""
    given = override_keys(overrides)
    named = [item for key, item in given.items() if key in message]
    if message.startswith("loss.") and not named:  # a loss key of the YAML against a command-line loss.name
        named = [item for key, item in given.items() if key.startswith("loss.")]
    pairs = [item.split("=", 1) for item in named]
    shown = [f"{key}=..." if url_secret(value) else f"{key}={value}" for key, value in pairs]  # never echo a secret
    return f"command line ({' '.join(shown)}) applied to {path}" if named else str(path)
