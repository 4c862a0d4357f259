"""open_clip_train's own webdataset pipeline with its train transform, timed, for benchmarks/bench_data_photos.py.

Runs in the peer's environment only (PYTHONPATH = its --target folder, as bench_e2e runs open_clip_train), so it
imports nothing of this repository. Its users get this loader from `open_clip_train.main`: `get_wds_dataset(args,
preprocess_train, is_train=True, tokenizer=...)` with `preprocess_train = image_transform(size, is_train=True)`.

    python benchmarks/open_clip_data_peer.py --shards 'DIR/{00000..00015}.tar' --samples 4096 --workers 1 --core 1
prints one JSON line: {"samples_per_s": wall rate, "samples_per_cpu_s": samples per CPU-second of the process and
its loader workers (what one core delivers, whatever else the machine runs), "samples": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from argparse import Namespace

from cpu_time import cpu_seconds, per_cpu_s, with_children  # benchmarks/ is this script's folder: sys.path[0]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", required=True, help="brace pattern of the .tar shards")
    p.add_argument("--samples", type=int, required=True, help="samples in the shards (its --train-num-samples)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--core", type=int, default=-1, help="pin this process and its loader workers to one core")
    args = p.parse_args()
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})  # before torch starts threads; loader workers inherit it
    import open_clip
    import torch
    from open_clip_train.data import get_wds_dataset

    torch.set_num_threads(1)
    data_args = Namespace(
        train_data=args.shards,
        val_data=None,
        dataset_resampled=False,
        train_num_samples=args.samples,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=args.batch_size,
        workers=args.workers,
        world_size=1,
    )
    preprocess = open_clip.image_transform(args.image_size, is_train=True)
    info = get_wds_dataset(data_args, preprocess, is_train=True, epoch=0, tokenizer=open_clip.get_tokenizer("ViT-B-16"))
    batches = iter(info.dataloader)
    for _ in range(args.warmup):
        next(batches)
    pids = with_children(os.getpid())
    start, cpu0, n = time.perf_counter(), cpu_seconds(pids), 0
    for _ in range(args.batches):
        images, _texts = next(batches)
        n += len(images)
    wall, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu0
    print(json.dumps({"samples_per_s": n / wall, "samples_per_cpu_s": per_cpu_s(n, cpu), "samples": n}))


if __name__ == "__main__":
    main()
