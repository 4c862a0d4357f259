"""Synthetic image-text shards for benchmarks on a machine without data (the GPU check): JPEGs at img2dataset's
usual size (256 px, so the 224 px random crop and the decode cost what they cost on LAION-like shards) with
captions, in our shard layout with a manifest; both trainers read them.

    python benchmarks/make_bench_shards.py --out artifacts/bench_shards --samples 32768 --shards 32 --size 256
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from data.manifest import build_manifest
from data.shards import ShardWriter

WORDS = ("a photo of", "a picture of", "a close-up of", "a drawing of", "a red", "a small", "a bright", "an old")
THINGS = ("dog", "cat", "car", "house", "tree", "boat", "bird", "chair", "flower", "mountain", "street", "cup")


def sample(key: int, size: int) -> tuple[bytes, str]:
    """A smooth random colour field (JPEG-compressible like a photo, unlike noise) and a caption."""
    rng = np.random.default_rng(key)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), f"{WORDS[key % len(WORDS)]} {THINGS[(key // len(WORDS)) % len(THINGS)]} number {key}"


def write_shard(out: str, index: int, keys: range, size: int) -> str:
    writer = ShardWriter(out, shard_size=len(keys) or 1, name_format=f"{index:06d}.tar")
    for key in keys:
        image, caption = sample(key, size)
        writer.write(key, image, "jpg", caption)
    writer.close()
    return writer.paths[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=32768)
    parser.add_argument("--shards", type=int, default=32, help="at least ranks x workers (the peer's loader needs it)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args(argv)
    per = -(-args.samples // args.shards)
    chunks = [range(i * per, min((i + 1) * per, args.samples)) for i in range(args.shards)]
    with ProcessPoolExecutor(max_workers=min(args.shards, os.cpu_count() or 1)) as pool:
        paths = list(pool.map(write_shard, [args.out] * args.shards, range(args.shards), chunks,
                              [args.size] * args.shards))  # fmt: skip
    manifest = build_manifest(paths, args.out, {}, workers=min(args.shards, os.cpu_count() or 1))
    print(f"{args.out}: {manifest['total']} samples in {len(paths)} shards", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
