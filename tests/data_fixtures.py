"""Helpers for the data tests: tiny real tar shards whose pixels and captions encode the key."""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from data.manifest import build_manifest
from data.shards import ShardWriter

SIZE = 8  # stored image side


def key_color(key: int) -> tuple[int, int, int]:
    return key % 256, (key // 256) % 256, 77


def png(key: int, size: int = SIZE, mode: str = "RGB") -> bytes:
    """A constant image whose colour encodes the key (constant survives any crop/resize)."""
    color = key_color(key) if mode == "RGB" else key % 256
    buf = io.BytesIO()
    Image.new(mode, (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def caption_of(key: int) -> str:
    return f"sample number {key}"


def write_shards(
    directory: str, sizes: list[int], keys: list[int] | None = None, labels: bool = True, extra: dict | None = None
) -> list[int]:
    """Shards of the given sizes with keys (default 0..n-1) and a manifest; returns the keys in stream order."""
    keys = list(range(sum(sizes))) if keys is None else list(keys)
    os.makedirs(directory, exist_ok=True)
    k, paths = 0, []
    for s, size in enumerate(sizes):
        w = ShardWriter(directory, shard_size=max(size, 1), name_format=f"{s:04d}" + "-{:02d}.tar")
        for _ in range(size):
            meta = {"label": keys[k] % 3} if labels else {}
            w.write(keys[k], png(keys[k]), "png", caption_of(keys[k]), **meta)
            k += 1
        if size == 0:  # an empty shard is still a (valid, empty) tar
            w._next_shard()
        w.close()
        paths += w.paths
    classes = {"classes": ["zero", "one", "two"]} if labels else {}
    build_manifest(paths, directory, {**classes, **(extra or {})})
    return keys


def write_raw_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    """A tar with exactly these members (for img2dataset-style or broken samples)."""
    import tarfile

    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def meta(key) -> bytes:
    return json.dumps({"key": key}).encode()


def decode_colors(images, mean, std) -> np.ndarray:
    """Normalised float images [B,3,H,W] -> the (rounded) constant RGB colour of each."""
    x = images.double() * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    return np.rint(x.mean(dim=(2, 3)).numpy() * 255).astype(int)


def shards_in_s3(monkeypatch, endpoint: str, local: str, bucket: str):  # noqa: ANN001, ANN201 - pytest / s3fs
    """The .tar shards of `local` uploaded to s3://BUCKET/data on a local S3 server, with the AWS environment
    pointing at it (test credentials); returns the s3fs filesystem."""
    import s3fs

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    for name in sorted(os.listdir(local)):
        if name.endswith(".tar"):
            fs.put(os.path.join(local, name), f"{bucket}/data/{name}")
    return fs
