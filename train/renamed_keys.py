"""Keys that moved into their component's own section. A recipe or command line that still spells one is refused at
load, in one line naming the new key; a checkpoint's saved config is read with its keys moved (`upgrade`), so a
run saved before the move resumes. Torch-free (train.config reads recipes before torch loads)."""

from __future__ import annotations

from typing import Any

from train.config_io import ConfigError

# old dotted key -> new dotted key
RENAMED = {
    "backend.ds_config": "backend.options.ds_config",
    "data.csv_image_key": "data.csv.image_key",
    "data.csv_caption_key": "data.csv.caption_key",
    "data.csv_separator": "data.csv.separator",
    "data.csv_image_root": "data.csv.image_root",
    "data.hf_image_key": "data.hf.image_key",
    "data.hf_caption_key": "data.hf.caption_key",
    "data.hf_split": "data.hf.split",
    "data.index": "data.webdataset.index",
    "data.cache_dir": "data.webdataset.cache_dir",
    "data.cache_max_gb": "data.webdataset.cache_max_gb",
    "data.remote_retry_s": "data.webdataset.remote_retry_s",
    "data.allow_missing_shards": "data.webdataset.allow_missing_shards",
}
# old keys whose old default meant "not set": a saved default leaves the new section empty (backend.options: {})
UNSET = {"backend.ds_config": ""}


def refuse_renamed(raw: dict[str, Any], overrides: list[str], path: str) -> None:
    """ConfigError for the first old key in the YAML `raw` or on the command line (`key=value` items)."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in RENAMED:  # the value is not echoed: it may carry a secret
            raise ConfigError(f"command line ({key}=...): {key} was renamed: use {RENAMED[key]}")
    for old, new in RENAMED.items():
        if _get(raw, old) is not _ABSENT:
            raise ConfigError(f"{path}: {old} was renamed: use {new}")


def upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a checkpoint's meta.json) with every old key moved to its new place; a copy.
    A new key already present wins."""
    out = _copy(config)
    for old, new in RENAMED.items():
        value = _pop(out, old)
        if value is _ABSENT or _get(out, new) is not _ABSENT:
            continue
        *parents, leaf = new.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if not (old in UNSET and value == UNSET[old]):
            node[leaf] = value
    return out


_ABSENT = object()


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _pop(tree: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    node = _get(tree, ".".join(parents)) if parents else tree
    return node.pop(leaf, _ABSENT) if isinstance(node, dict) else _ABSENT


def _copy(tree: Any) -> Any:
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree
