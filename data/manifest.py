"""The shard index: manifest.json + one `X.idx.npz` per shard, in an index directory of its own.

Written by `tools/make_shards.py manifest --shards SRC --out INDEX` (SRC: a directory, a brace
pattern over one or several directories, local or fsspec URLs). The shards are only read, so a
read-only mount or bucket can be indexed. Every sample with an image gets a dense row 0..N-1 in
(shard order, position); its source key (json "key", json "uid" or the tar's __key__) is kept in
the per-shard index. Duplicate source keys and truncated tars are reported by shard at index time.
The loader never scans tars: it checks each shard's byte size against the manifest, and its fingerprint when it
opens the shard (data/integrity.py). One index serves every copy of its shards, matched by name and size.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from data import remote
from data.integrity import IndexMismatch, ShardChanged, file_reader, fingerprint, fs_reader
from data.shards import index_stats, scan_tar

MANIFEST_NAME = "manifest.json"
FORMAT = "fastflip-index/2"
KEEP_KEYS = ("classes", "templates", "class_prompts", "description")  # survive a manifest rebuild
log = logging.getLogger(__name__)


def manifest_hint(shards: str, index: str = "") -> str:
    if index and remote.normalize(index) != remote.normalize(shards):
        return f"Create it with: python tools/make_shards.py manifest --shards {shards} --out {index}"
    return (
        f"Create it with: python tools/make_shards.py manifest --shards {shards} (read-only or remote shards: "
        "add --out INDEX_DIR and set data.webdataset.index: INDEX_DIR)"
    )


@dataclass
class ShardInfo:
    name: str  # as listed in the manifest (relative to the index directory when the shard lives there)
    url: str  # local path or fsspec URL
    count: int  # tar samples (records), valid or not
    rows: int  # samples with an image: dense rows row_start .. row_start + rows - 1
    row_start: int
    index_url: str
    bytes: int
    fingerprint: str | None = None  # data/integrity.py; None in indexes written before fingerprints


@dataclass
class ShardSet:
    """The shards selected by a path, with what the index says about them."""

    directory: str  # the index directory
    shards: list[ShardInfo]
    num_samples: int  # dense rows over the whole index
    classes: list[str] | None = None
    manifest: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)


def _index_name(url: str, common: str) -> str:
    rel = url[len(common) :].lstrip("/") if common else remote.basename(url)
    return (rel[:-4] if rel.endswith(".tar") else rel).replace("/", "__") + ".idx.npz"


def _common_dir(urls: list[str]) -> str:
    dirs = {remote.dirname(u) for u in urls}
    if len(dirs) == 1:
        return ""  # one directory: index files are named after the shards
    parts = [d.split("/") for d in dirs]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return "/".join(common)


def _index_one(job: tuple[str, str]) -> dict:
    url, index_url = job
    problem = ""
    try:
        if remote.is_remote(url):
            fs, path = remote.filesystem(url)
            with fs.open(path, "rb", block_size=remote.BIG_BLOCK, cache_type="readahead") as f:
                size = int(f.size)
                idx, keys, problem = scan_tar(f, size, stream=True)
            read = fs_reader(fs, path)
        else:
            with open(remote.local_path(url), "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(0)
                idx, keys, problem = scan_tar(f, size)
            read = file_reader(remote.local_path(url))
    except (tarfile.ReadError, EOFError) as e:  # not a tar at all: keep going, report it
        from data.shards import INDEX_DTYPE

        idx, keys, problem = np.zeros(0, dtype=INDEX_DTYPE), [], f"unreadable: {e}"
        size = remote.sizes([url]).get(url) or 0
        read = fs_reader(*remote.filesystem(url)) if remote.is_remote(url) else file_reader(remote.local_path(url))
    buf = io.BytesIO()
    np.savez(buf, index=idx, keys=np.array(keys, dtype=str))
    remote.write_bytes(index_url, buf.getvalue())
    valid_keys = [k for k, r in zip(keys, idx["row"].tolist(), strict=True) if r >= 0]
    return {
        "url": url,
        "count": len(idx),
        "rows": len(valid_keys),
        "bytes": size,
        "stats": dict(index_stats(idx)),
        "problem": problem,
        "fingerprint": fingerprint(read, size, idx),
        **_key_facts(valid_keys),
    }


def _key_facts(keys: list[str]) -> dict:
    """What the manifest needs of a shard's source keys, compactly (hundreds of millions at LAION scale):
    64-bit hashes to find duplicates, and the constant key - row offset if the keys are consecutive integers."""
    hashes = np.array(
        [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little", signed=True) for k in keys],
        dtype=np.int64,
    )
    offset = None
    if keys and all(k.isdigit() for k in keys):
        ints = np.array([int(k) for k in keys], dtype=np.int64)
        if np.array_equal(ints - ints[0], np.arange(len(ints))):
            offset = int(ints[0])
    return {"hashes": hashes, "first_key": offset}


def build_manifest(
    shard_urls: Iterable[str],
    out_dir: str,
    extra: dict | None = None,
    workers: int = 1,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict:
    """Index every shard (writing `out_dir/X.idx.npz`) and write `out_dir/manifest.json`; returns it."""
    urls = sorted(remote.normalize(u) for u in shard_urls)
    if not urls:
        raise ValueError(f"no .tar shards to put in a manifest under {out_dir}")
    out_dir = remote.normalize(out_dir)
    common = _common_dir(urls)
    jobs = [(u, remote.join(out_dir, _index_name(u, common))) for u in urls]
    wrap = progress or (lambda it: it)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(wrap(pool.map(_index_one, jobs, chunksize=1)))
    else:
        results = [_index_one(j) for j in wrap(jobs)]
    old = _read_json(remote.join(out_dir, MANIFEST_NAME)) or {}
    shards, stats, problems, row = [], {}, {}, 0
    for (url, index_url), r in zip(jobs, results, strict=True):
        name = _relative(url, out_dir)
        shards.append(
            {
                "path": name,
                "count": r["count"],
                "rows": r["rows"],
                "row_start": row,
                "bytes": r["bytes"],
                "fingerprint": r["fingerprint"],
                "index": remote.basename(index_url),
            }
        )
        row += r["rows"]
        for reason, n in r["stats"].items():
            stats[reason] = stats.get(reason, 0) + n
        if r["problem"]:
            problems.setdefault("truncated_or_unreadable", {})[name] = r["problem"]
    hashes = np.concatenate([r["hashes"] for r in results])
    dup_total, dup_by_shard = _duplicates(hashes, [s["path"] for s in shards], [r["rows"] for r in results])
    if dup_total:
        problems["duplicate_source_keys"] = {"samples": dup_total, "by_shard": dup_by_shard}
    manifest = {
        "format": FORMAT,
        "num_samples": row,
        "total": sum(r["count"] for r in results),
        "keys_are_rows": bool(row)
        and all(r["first_key"] == s["row_start"] for r, s in zip(results, shards, strict=True) if r["rows"]),
        "invalid_at_index_time": dict(sorted(stats.items())),
        "problems": problems,
        "shards": shards,
    }
    manifest.update({k: old[k] for k in KEEP_KEYS if k in old})
    manifest.update(extra or {})
    remote.write_bytes(remote.join(out_dir, MANIFEST_NAME), json.dumps(manifest, indent=1).encode())
    if stats:
        log.warning("shards indexed in %s hold samples the loader will skip: %s", out_dir, stats)
    for kind, detail in problems.items():
        log.warning("index %s: %s: %s", out_dir, kind, json.dumps(detail)[:2000])
    return manifest


def _duplicates(keys: np.ndarray, names: list[str], rows: list[int]) -> tuple[int, dict[str, int]]:
    """Samples whose source key (hash) is also another sample's, in total and by shard."""
    if not len(keys):
        return 0, {}
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    dup = counts[inverse] > 1
    shard_of = np.repeat(np.arange(len(names)), rows)
    by_shard = np.bincount(shard_of[dup], minlength=len(names))
    return int(dup.sum()), {names[i]: int(n) for i, n in enumerate(by_shard) if n}


def _relative(url: str, out_dir: str) -> str:
    if remote.is_remote(url) != remote.is_remote(out_dir):
        return url
    sep = "/" if remote.is_remote(url) else os.sep
    prefix = out_dir.rstrip(sep) + sep
    return url[len(prefix) :] if url.startswith(prefix) else url


def _read_json(url: str) -> dict | None:
    try:
        return json.loads(remote.read_bytes(url))
    except FileNotFoundError:
        return None


def _listed(name: str, index_dir: str) -> str:
    if "://" in name or name.startswith("/"):
        return remote.normalize(name)
    return remote.normalize(remote.join(index_dir, name))


def load_manifest(index_dir: str, shards_hint: str) -> dict:
    manifest_url = remote.join(index_dir, MANIFEST_NAME)
    manifest = _read_json(manifest_url)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {index_dir}. {manifest_hint(shards_hint, index_dir)}")
    if manifest.get("format") != FORMAT:
        raise IndexMismatch(
            f"{manifest_url} has format {manifest.get('format')!r}, this version reads {FORMAT!r} "
            f"(dense rows, source keys). {manifest_hint(shards_hint, index_dir)}"
        )
    return manifest


def resolve_shards(path: str, index: str = "", allow_missing: bool = False) -> ShardSet:
    """Shards named by `path` (directory, manifest.json, brace pattern/glob, local or URL; "" = all in the
    index) with their index from `index` (default: the shards' own directory). Shards that do not exist
    stop here with a list of them, unless `allow_missing`.

    One index serves every copy of its shards (a read-only mount, an HTTP mirror, a local NVMe copy): a shard
    not at an indexed location is matched by its name (the shortest unambiguous tail of its path) and must have
    the indexed size; its content is verified against the indexed fingerprint when it is opened
    (data/integrity.py)."""
    wanted: list[str] | None
    if path.endswith(".json"):
        index, wanted = index or remote.dirname(path), None
    elif not path or remote.isdir(path):
        index, wanted = index or path, None
        if path and remote.normalize(index) != remote.normalize(path):
            wanted = ["dir:" + remote.normalize(path)]
    else:
        wanted = [remote.normalize(u) for u in remote.expand(path)]
        wanted = [u for u in wanted if u.endswith(".tar")] or wanted
        if not index:
            dirs = sorted({remote.dirname(u) for u in wanted})
            if len(dirs) > 1:
                raise IndexMismatch(
                    f"shards matched by {path!r} span several directories {dirs[:5]}: index them "
                    f"into one place and set data.webdataset.index. "
                    f"{manifest_hint(path, 'INDEX_DIR')}"
                )
            index = dirs[0]
    index = remote.normalize(index)
    found = remote.sizes(wanted) if wanted and not wanted[0].startswith("dir:") else {}
    missing = [u for u in found if found[u] is None]
    if missing and not allow_missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(found)} shard(s) named by {path!r} do not exist: "
            f"{_listing(missing)}. Fix data.path (a typo in the pattern?) or set "
            "data.webdataset.allow_missing_shards: true to train without them"
        )
    manifest = load_manifest(index, path or index)
    entries = {_listed(s["path"], index): s for s in manifest.get("shards", [])}
    if not entries:
        raise IndexMismatch(
            f"{remote.join(index, MANIFEST_NAME)} lists no shards. {manifest_hint(path or index, index)}"
        )
    if wanted is None:
        located = entries
    elif wanted[0].startswith("dir:"):
        directory = wanted[0][4:]
        located = {u: e for u, e in entries.items() if remote.dirname(u) == directory} or {
            remote.join(directory, rel): entries[u] for u, rel in _relative_names(list(entries)).items()
        }  # a copy
    else:  # shards that do not exist (allow_missing) keep their place, unmatched
        matched = _match_by_name([u for u in wanted if found[u] is not None], entries, path, index)
        located = {u: matched.get(u, {}) for u in wanted}
    urls = list(located)
    found = found if set(urls) <= set(found) else remote.sizes(urls)
    missing = [u for u in urls if found[u] is None]
    if missing and len(missing) == len(urls) and any(u not in entries for u in urls):
        raise IndexMismatch(
            f"none of the {len(urls)} shard(s) that the index {index} lists exist under {path!r} "
            f"(looked for {_listing(missing[:3])}): data.path and data.webdataset.index name different "
            f"datasets. {manifest_hint(path, index)}"
        )
    if missing and not allow_missing:  # listed in the index, gone since
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} indexed shard(s) under {path or index!r} do not "
            f"exist: {_listing(missing)}. Restore them, re-index, or set "
            "data.webdataset.allow_missing_shards: true to train without them"
        )
    if missing:
        log.warning(
            "data.webdataset.allow_missing_shards: %d of %d shards named by %r do not exist; training without them",
            len(missing),
            len(urls),
            path,
        )
    shards = []
    for url in urls:
        if url in missing:
            continue
        e = located[url]
        if found[url] != e["bytes"]:
            raise ShardChanged(
                f"shard {url} changed since it was indexed (the index {index} is stale for it: "
                f"{found[url]} bytes, {e['bytes']} when indexed as {e['path']}: truncated or replaced); "
                f"restore it, or re-index. {manifest_hint(path or index, index)}"
            )
        shards.append(
            ShardInfo(
                e["path"],
                url,
                int(e["count"]),
                int(e["rows"]),
                int(e["row_start"]),
                remote.join(index, e["index"]),
                int(e["bytes"]),
                e.get("fingerprint"),
            )
        )
    if not shards:
        raise FileNotFoundError(f"none of the shards named by {path!r} exist")
    moved = sum(s.url not in entries for s in shards)
    if moved:
        log.info(
            "index %s serves %d shard(s) of %r at another location (matched by name and size; each shard's "
            "content is verified when it is opened)",
            index,
            moved,
            path,
        )
    return ShardSet(index, shards, int(manifest["num_samples"]), manifest.get("classes"), manifest, missing)


def _relative_names(urls: list[str]) -> dict[str, str]:
    """url -> its path below the deepest directory all `urls` share."""
    split = [u.split("/") for u in urls]
    depth = 0
    while all(len(p) > depth + 1 for p in split) and len({p[depth] for p in split}) == 1:
        depth += 1
    return {u: "/".join(p[depth:]) for u, p in zip(urls, split, strict=True)}


def _match_by_name(wanted: list[str], entries: dict[str, dict], path: str, index: str) -> dict[str, dict]:
    """Each wanted shard's index entry: at its own location, else the one entry whose path ends like it (the
    basename, or more of the path where basenames repeat)."""
    tails: dict[str, list[str]] = {}
    for url in entries:
        tails.setdefault(remote.basename(url), []).append(url)
    located, unindexed = {}, []
    for url in wanted:
        if url in entries:
            located[url] = entries[url]
            continue
        candidates, parts = tails.get(remote.basename(url), []), url.split("/")
        depth = 1
        while len(candidates) > 1 and depth < len(parts):
            depth += 1
            candidates = [c for c in candidates if c.split("/")[-depth:] == parts[-depth:]]
        if len(candidates) == 1:
            located[url] = entries[candidates[0]]
        else:
            unindexed.append(url)
    if unindexed and not located:
        raise IndexMismatch(
            f"the index {index} belongs to other shards: it lists {len(entries)} shard(s) "
            f"({_listing(list(entries)[:3])}), none named like the {len(wanted)} of {path!r} "
            f"({_listing(wanted[:3])}). Set data.webdataset.index to this data's index, or build one. "
            f"{manifest_hint(path, index)}"
        )
    if unindexed:
        raise IndexMismatch(
            f"{len(unindexed)} shard(s) of {path!r} are not in the index {index}: "
            f"{_listing(unindexed)}. {manifest_hint(path, index)}"
        )
    return located


def _listing(urls: list[str]) -> str:
    return ", ".join(urls) if len(urls) <= 10 else ", ".join(urls[:10]) + f" and {len(urls) - 10} more"


def load_index(info: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
    """(INDEX_DTYPE records, source keys) of one shard."""
    try:
        with np.load(io.BytesIO(remote.read_bytes(info.index_url)), allow_pickle=False) as z:
            index, keys = z["index"], z["keys"]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"index file {info.index_url} of {info.url} is missing; re-run tools/make_shards.py manifest"
        ) from None
    if len(index) != info.count:
        raise IndexMismatch(f"index of {info.url} disagrees with the manifest; re-run tools/make_shards.py manifest")
    return index, keys
