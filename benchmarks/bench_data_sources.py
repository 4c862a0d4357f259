"""`bench_data.py --source local,http,s3`: loader samples/s from local files, HTTP and S3 side by side.

The servers are the ones the tests use (benchmarks/local_servers.py), started on 127.0.0.1 for the run.
Each remote run starts with an empty shard cache, so it times the whole-shard downloads too.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

from benchmarks.local_servers import http_server, s3_server
from data.manifest import build_manifest, resolve_shards

SOURCES = ("local", "http", "s3")


@contextlib.contextmanager
def _served(source: str, shard_dir: str, names: list[str]):
    """Yields the shards' pattern as `source` reads it."""
    braces = "{" + ",".join(names) + "}" if len(names) > 1 else names[0]
    if source == "local":
        yield os.path.join(shard_dir, braces)
    elif source == "http":
        with http_server(shard_dir) as (url, _):
            yield f"{url}/{braces}"
    else:
        import s3fs

        with s3_server() as endpoint:
            saved = {
                k: os.environ.get(k)
                for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3")
            }
            os.environ.update(
                {
                    "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL_S3": endpoint,
                }
            )
            s3fs.S3FileSystem.clear_instance_cache()
            try:
                fs = s3fs.S3FileSystem()
                fs.mkdir("bench")
                for name in names:
                    fs.put(os.path.join(shard_dir, name), f"bench/shards/{name}")
                yield f"s3://bench/shards/{braces}"
            finally:
                s3fs.S3FileSystem.clear_instance_cache()
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def compare_sources(args, workers: list[int], measure, ours, machine: dict) -> dict:
    sources = [s for s in args.source.split(",") if s]
    if "local" not in sources or any(s not in SOURCES for s in sources):
        raise SystemExit(f"--source takes a comma list of {SOURCES} including local (the reference)")
    shardset = resolve_shards(args.shards)
    names = [os.path.basename(s.url) for s in shardset.shards]
    runs = {(src, w): [] for src in sources for w in workers}
    index_rate: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        patterns = {src: stack.enter_context(_served(src, shardset.directory, names)) for src in sources}
        for src in sources:  # an index per source, apart from the shards; timed
            start = time.perf_counter()
            m = build_manifest(_urls(patterns[src]), os.path.join(tmp, f"index-{src}"), workers=4)
            index_rate[src] = m["total"] / (time.perf_counter() - start)
        for rep in range(args.repeats):
            for w in workers:
                for src in sources:
                    cache = tempfile.mkdtemp(dir=tmp)  # cold cache: downloads are timed
                    options = {"index": os.path.join(tmp, f"index-{src}"), "cache_dir": cache}
                    rate = measure(
                        ours,
                        patterns[src],
                        args.batch_size,
                        w,
                        args.image_size,
                        args.warmup,
                        args.batches,
                        webdataset=options,
                    )
                    runs[(src, w)].append(rate)
                    print(f"  repeat {rep} {src:5s} workers={w}: {rate:8.1f} samples/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(
        f"\nloader samples/s by source, {args.image_size}px, batch {args.batch_size}, median of {args.repeats} "
        f"({args.batches} batches after {args.warmup} warm-up, cold cache), shards {args.shards}"
    )
    print(
        f"{'workers':>7} | "
        + " | ".join(f"{s:>9}" for s in sources)
        + " | "
        + " | ".join(f"{s}/local" for s in sources if s != "local")
    )
    for w in workers:
        ratios = [f"{med[(s, w)] / med[('local', w)]:>{len(s) + 6}.2f}" for s in sources if s != "local"]
        print(f"{w:>7} | " + " | ".join(f"{med[(s, w)]:9.1f}" for s in sources) + " | " + " | ".join(ratios))
    print("indexing (samples/s, 4 processes): " + ", ".join(f"{s} {r:.0f}" for s, r in index_rate.items()))
    result = {
        "samples_per_s_median": {f"{s}/workers={w}": med[(s, w)] for s, w in runs},
        "samples_per_s_runs": {f"{s}/workers={w}": v for (s, w), v in runs.items()},
        "ratio_vs_local": {f"{s}/workers={w}": med[(s, w)] / med[("local", w)] for s, w in runs if s != "local"},
        "index_samples_per_s": index_rate,
        "config": {
            k: getattr(args, k)
            for k in ("shards", "source", "image_size", "batch_size", "warmup", "batches", "repeats")
        },
        "machine": machine,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


def _urls(pattern: str) -> list[str]:
    from data.remote import expand

    return expand(pattern)
