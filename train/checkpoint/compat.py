"""Compare a checkpoint's config with the current one before resuming from it.

Some changes make the saved state meaningless or silently re-plan the run (another model, loss,
batch size, dataset, run length or FLIP plan): they are refused in one message listing every such
key, unless `checkpoint.allow_changes` names it. Everything else (lr, logging, eval, ...) is a
legitimate edit between a crash and its resume and is logged as a diff.
"""

from __future__ import annotations

from typing import Any

from train.config_io import ConfigError

# Dotted keys (a key refuses all keys below it). `dataset` holds facts measured from the data
# (the index-space size), so editing shards in place under the same path is caught too.
REFUSED = (
    "model.name",
    "model.overrides",
    "loss.name",
    "loss.version",
    "data.source",
    "data.path",
    "data.sources",
    "data.num_samples",
    "data.batch_size",
    "dataset",
    "epochs",
    "max_steps",
    "flip",
)
# Keys that name how this run is started, not what it trains (init_from weights are replaced by the checkpoint's).
IGNORED = ("checkpoint.resume", "checkpoint.allow_changes", "model.init_from")
MISSING = "<absent>"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; an empty mapping is kept as a value so it can differ from a full one."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def _covered(key: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs: key -> (saved value, current value)."""
    old, new = flatten(saved), flatten(current)
    changes = {}
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, MISSING), new.get(key, MISSING)
        if before != after and not _covered(key, IGNORED):
            changes[key] = (before, after)
    return changes


def check_allow_changes(allowed: list[str], current: dict[str, Any]) -> None:
    """Every `checkpoint.allow_changes` entry must name a key (or section) of the config: a typo would
    otherwise allow nothing, silently."""
    names = [*flatten(current), *REFUSED]
    for key in allowed:
        if not any(k == key or k.startswith(f"{key}.") for k in names):
            raise ConfigError(f"checkpoint.allow_changes: {key!r} is not a config key (write e.g. 'data.batch_size')")


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], allowed: list[str], source: str) -> list[str]:
    """Raise ConfigError listing refused changes; return the allowed ones as 'key: old -> new' lines to log.

    `saved` / `current` are config dicts (plus a `dataset` section of measured facts), `source` names the
    checkpoint in the message.
    """
    changes = changed_keys(saved, current)
    lines = [f"{key}: {before!r} -> {after!r}" for key, (before, after) in changes.items()]
    refused = [line for line, key in zip(lines, changes, strict=True) if _covered(key, REFUSED)]
    refused = [line for line in refused if not _covered(line.split(":", 1)[0], allowed)]
    if refused:
        keys = sorted({line.split(":", 1)[0] for line in refused})
        raise ConfigError(
            f"cannot resume from {source}: these settings differ from the checkpoint's and would change what is "
            f"trained or how the run is planned:\n  " + "\n  ".join(refused) + "\nRestore them, start a new "
            f"run.output_dir, or accept the change with checkpoint.allow_changes=[{', '.join(keys)}]"
        )
    return lines
