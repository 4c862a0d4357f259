"""manifest.json next to the shards: per-shard sample counts, total, index-space size N.

Written by `tools/make_shards.py` (also for img2dataset output: `make_shards.py manifest
--shards DIR`). The loader never scans tars to learn the dataset size; it trusts the manifest
and checks that each shard still has the byte size recorded there.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import braceexpand
import numpy as np

from data.shards import INDEX_DTYPE, index_path, index_stats, index_tar

MANIFEST_NAME = "manifest.json"
FORMAT = "fastflip-shards/1"
KEEP_KEYS = ("classes", "templates", "class_prompts", "description")  # survive a manifest rebuild
log = logging.getLogger(__name__)


def manifest_hint(shard_dir: str) -> str:
    return f"Create it with: python tools/make_shards.py manifest --shards {shard_dir}"


@dataclass
class ShardInfo:
    name: str
    path: str
    count: int
    index_path: str


@dataclass
class ShardSet:
    """The shards selected by a path, with what the manifest says about them."""

    directory: str
    shards: list[ShardInfo]
    num_samples: int  # index-space size N = max key + 1 over the whole manifest
    classes: list[str] | None = None
    manifest: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)


def _index_one(path: str) -> tuple[str, int, int, int, dict]:
    try:
        idx = index_tar(path)
        unreadable = 0
    except Exception:  # not a tar at all: keep going, report it
        idx, unreadable = np.zeros(0, dtype=INDEX_DTYPE), 1
    np.save(index_path(path), idx)
    keys = idx["key"][idx["key"] >= 0]
    stats = dict(index_stats(idx))
    if unreadable:
        stats["unreadable_shard"] = 1
    return path, len(idx), int(keys.max()) + 1 if len(keys) else 0, os.path.getsize(path), stats


def build_manifest(
    shard_paths: Iterable[str],
    out_dir: str,
    extra: dict | None = None,
    workers: int = 1,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict:
    """Index every shard (writing `X.idx.npy`) and write `out_dir/manifest.json`; returns it."""
    paths = sorted(os.path.abspath(p) for p in shard_paths)
    if not paths:
        raise ValueError(f"no .tar shards to put in a manifest under {out_dir}")
    wrap = progress or (lambda it: it)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(wrap(pool.map(_index_one, paths, chunksize=4)))
    else:
        results = [_index_one(p) for p in wrap(paths)]
    old = _read_json(os.path.join(out_dir, MANIFEST_NAME)) or {}
    invalid: Counter = Counter()
    shards = []
    for path, count, _, size, stats in results:
        invalid.update(stats)
        if os.path.dirname(path) != os.path.abspath(out_dir):
            raise ValueError(f"shard {path} is not in the manifest's directory {out_dir}")
        shards.append({"name": os.path.basename(path), "count": count, "bytes": size})
    manifest = {
        "format": FORMAT,
        "num_samples": max(r[2] for r in results),
        "total": sum(r[1] for r in results),
        "invalid_at_index_time": dict(sorted(invalid.items())),
        "shards": shards,
    }
    manifest.update({k: old[k] for k in KEEP_KEYS if k in old})
    manifest.update(extra or {})
    tmp = os.path.join(out_dir, MANIFEST_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST_NAME))
    if invalid:
        log.warning("shards under %s hold samples the loader will skip: %s", out_dir, dict(invalid))
    return manifest


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def expand_pattern(pattern: str) -> list[str]:
    """Brace pattern and/or glob -> sorted unique existing paths."""
    found: set[str] = set()
    for part in braceexpand.braceexpand(pattern):
        found.update(glob.glob(part) if glob.has_magic(part) else ([part] if os.path.exists(part) else []))
    return sorted(found)


def resolve_shards(path: str) -> ShardSet:
    """A shard directory, manifest.json, tar brace pattern or glob -> ShardSet (clear errors otherwise)."""
    if "://" in path or path.startswith("pipe:"):
        raise ValueError(f"only local shard files are supported, got {path!r}")
    if os.path.isdir(path):
        directory, names = path, None
    elif path.endswith(".json") and os.path.isfile(path):
        directory, names = os.path.dirname(path) or ".", None
    else:
        files = [p for p in expand_pattern(path) if p.endswith(".tar")]
        if not files:
            raise FileNotFoundError(f"no .tar shards match {path!r}")
        dirs = {os.path.dirname(os.path.abspath(p)) for p in files}
        if len(dirs) > 1:
            raise ValueError(f"shards matched by {path!r} span several directories {sorted(dirs)}; use one")
        directory, names = dirs.pop(), [os.path.basename(p) for p in files]
    manifest_path = path if path.endswith(".json") else os.path.join(directory, MANIFEST_NAME)
    manifest = _read_json(manifest_path)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {directory}. {manifest_hint(directory)}")
    listed = {s["name"]: s for s in manifest.get("shards", [])}
    names = names if names is not None else [s["name"] for s in manifest.get("shards", [])]
    if not names:
        raise ValueError(f"{manifest_path} lists no shards. {manifest_hint(directory)}")
    shards = []
    for name in names:
        entry = listed.get(name)
        if entry is None:
            raise ValueError(f"shard {name} is not in {manifest_path}. {manifest_hint(directory)}")
        tar = os.path.join(directory, name)
        if not os.path.isfile(tar):
            raise FileNotFoundError(f"shard {tar} listed in {manifest_path} does not exist")
        if os.path.getsize(tar) != entry["bytes"] or not os.path.isfile(index_path(tar)):
            raise ValueError(f"{manifest_path} is stale for {name} (size changed or index missing). "
                             f"{manifest_hint(directory)}")
        shards.append(ShardInfo(name, tar, int(entry["count"]), index_path(tar)))
    return ShardSet(directory, shards, int(manifest["num_samples"]), manifest.get("classes"), manifest)
