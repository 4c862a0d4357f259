#!/usr/bin/env python
"""Data-loading throughput (decode + augment + tokenize) vs open_clip's own webdataset pipeline.

Both read the same shards (e.g. `python tools/make_shards.py fashion-mnist --out shards/fmnist`,
then `--shards shards/fmnist/train`). open_clip's side is `open_clip_train.data.get_wds_dataset`
(the code open_clip trains with) with open_clip's train `image_transform` and tokenizer; ours
is `data.loader.build_train_loader`. Runs are interleaved (ours, theirs, per worker count,
per repeat) so machine noise hits both; the median of the repeats is reported.

  python benchmarks/bench_data.py --shards shards/fmnist/train --out bench_data.json

With --source local,http,s3 it compares where the same shards are read from instead: local files, an
HTTP server and an S3-compatible server (moto), both started on 127.0.0.1 for the run and read through
fsspec with a cold shard cache per run (so downloads are timed); it also times indexing from each.

  python benchmarks/bench_data.py --shards shards/fmnist/train --source local,http,s3 --workers 1 --image-size 28

With --photos it measures per core on real-photo JPEG shards instead (benchmarks/bench_data_photos.py):

  python benchmarks/bench_data.py --photos --out benchmarks/results/bench_data_photos.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from argparse import Namespace

from benchmarks.bench_common import machine_description
from data.config import DataConfig
from data.loader import build_train_loader
from data.manifest import resolve_shards
from data.transforms import normalize_pixels


def ours(shards: str, batch_size: int, workers: int, image_size: int, **data):
    cfg = DataConfig(path=shards, batch_size=batch_size, workers=workers, image_size=image_size, seed=0, **data)
    loader = build_train_loader(cfg, 0, 1)
    # The loader ships uint8 pixels; normalising them (on the device in training) is counted here, on the
    # CPU, so both sides deliver the same normalised float32 images.
    return (normalize_pixels(b["pixels"]) for b in loader), loader.close


def _patch_open_clip_for_webdataset() -> None:
    """open_clip_train 3.3.0 + webdataset >= 0.2.96 crash at every shard end (KeyError 'fname':
    webdataset's tar_file_expander now yields an `{}` EOF marker that open_clip's group_by_keys_nothrow
    does not expect; webdataset issue #384, open_clip issue #935). The fix the maintainers give is
    eof_value=None, i.e. the old webdataset behaviour; applied here to open_clip's module only."""
    import functools

    import open_clip_train.data as oc_data
    from webdataset.tariterators import tar_file_expander

    oc_data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)


def open_clip_pipeline(shards: str, batch_size: int, workers: int, image_size: int):
    import open_clip
    from open_clip_train.data import get_wds_dataset

    _patch_open_clip_for_webdataset()
    shardset = resolve_shards(shards)
    names = [s.name for s in shardset.shards]
    if len(names) < max(1, workers):
        raise SystemExit(f"open_clip's pipeline needs >= {workers} shards, {shards} has {len(names)}")
    pattern = (
        os.path.join(shardset.directory, names[0])
        if len(names) == 1
        else os.path.join(shardset.directory, "{" + ",".join(names) + "}")
    )
    args = Namespace(
        train_data=pattern,
        val_data=None,
        dataset_resampled=False,
        train_num_samples=shardset.total,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=batch_size,
        workers=workers,
        world_size=1,
    )
    preprocess = open_clip.image_transform(image_size, is_train=True)
    info = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    return (images for images, _ in info.dataloader), lambda: None


def measure(make, shards, batch_size, workers, image_size, warmup: int, batches: int, **data) -> float:
    stream, close = make(shards, batch_size, workers, image_size, **data)
    it = iter(stream)
    for _ in range(warmup):  # worker start-up and shuffle-buffer fill are not counted
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it))
    elapsed = time.perf_counter() - start
    del it, stream
    close()
    return n / elapsed


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if "--photos" in argv:  # per core on real-photo shards: benchmarks/bench_data_photos.py
        from benchmarks.bench_data_photos import main as photos

        return photos(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shard directory with manifest.json (e.g. Fashion-MNIST train)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--warmup", type=int, default=3, help="batches skipped before timing")
    p.add_argument("--batches", type=int, default=15, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument(
        "--source",
        default="",
        help="compare reading the shards from local,http,s3 (servers on 127.0.0.1) instead of comparing with open_clip",
    )
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    if args.source:
        from benchmarks.bench_data_sources import compare_sources

        return compare_sources(args, workers, measure, ours, machine_description())
    pipelines = {"ours": ours, "open_clip": open_clip_pipeline}
    runs: dict[tuple[str, int], list[float]] = {(n, w): [] for n in pipelines for w in workers}
    info = machine_description()
    for rep in range(args.repeats):
        for w in workers:
            for name, make in pipelines.items():
                rate = measure(make, args.shards, args.batch_size, w, args.image_size, args.warmup, args.batches)
                runs[(name, w)].append(rate)
                print(f"  repeat {rep} {name:9s} workers={w}: {rate:8.1f} samples/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    best = {n: max(workers, key=lambda w, n=n: med[(n, w)]) for n in pipelines}
    ratio = med[("ours", best["ours"])] / med[("open_clip", best["open_clip"])]
    by_workers = {w: med[("ours", w)] / med[("open_clip", w)] for w in workers}

    print(
        f"\ndata loading, {args.image_size}px, batch {args.batch_size}, median of {args.repeats} "
        f"({args.batches} batches each), shards {args.shards}"
    )
    print(f"{'workers':>7} | {'ours (samples/s)':>16} | {'open_clip (samples/s)':>21} | {'ratio':>6}")
    print("-" * 60)
    for w in workers:
        print(f"{w:>7} | {med[('ours', w)]:16.1f} | {med[('open_clip', w)]:21.1f} | {by_workers[w]:6.2f}")
    print(
        f"best: ours {med[('ours', best['ours'])]:.1f} (workers={best['ours']}), open_clip "
        f"{med[('open_clip', best['open_clip'])]:.1f} (workers={best['open_clip']}) "
        f"-> ratio_vs_open_clip {ratio:.2f}"
    )
    result = {
        "ratio_vs_open_clip": ratio,
        "ratio_by_workers": {str(w): r for w, r in by_workers.items()},
        "best_workers": best,
        "samples_per_s_median": {f"{n}/workers={w}": med[(n, w)] for n, w in runs},
        "samples_per_s_runs": {f"{n}/workers={w}": v for (n, w), v in runs.items()},
        "config": {k: getattr(args, k) for k in ("shards", "image_size", "batch_size", "warmup", "batches", "repeats")},
        "open_clip_pipeline": "open_clip_train.data.get_wds_dataset + open_clip.image_transform(is_train=True) "
        "(with tar_file_expander(eof_value=None), the maintainers' fix for webdataset>=0.2.96)",
        "machine": info,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
