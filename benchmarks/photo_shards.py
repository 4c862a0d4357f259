"""Benchmark shards made of real photographs, built offline, stored as labs store them.

The photographs are the ones scikit-image (`skimage.data`) and scikit-learn (`load_sample_images`) ship, read as
files from the installed packages. Each
sample is a distinct random view of one of them: a crop (area 20-100%, aspect 1/2-2), scaled to a web-like original
size (longest side 320-1400 px), maybe mirrored, with colour jitter (brightness, contrast, saturation). Then, as
img2dataset stores it (JPEG quality 95, its default):

- `img2dataset`: its default 256 px with `resize_mode=border` (longest side -> 256, centred on black, 256x256);
- `datacomp`: DataComp's layout (`resize_mode=keep_ratio_largest`, 512, only shrunk: longest side <= 512).

Members per sample as img2dataset writes them (`KEY.jpg`, `KEY.txt`, `KEY.json` with the key, width, height,
original size, ...; string keys shard+position; a `_stats.json` per shard), captions of web-caption length, and our
index (manifest.json) beside the shards. Deterministic given --seed (same bytes on the same PIL/libjpeg).

    python benchmarks/photo_shards.py --out artifacts/photos256 --layout img2dataset --samples 4096 --shards 16
    python benchmarks/photo_shards.py --out artifacts/photos512 --layout datacomp --samples 4096 --shards 16
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import io
import json
import os
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from data.manifest import build_manifest

LAYOUTS = {"img2dataset": ("border", 256), "datacomp": ("keep_ratio_largest", 512)}
QUALITY = 95  # img2dataset's default encode_quality
# (package, file in its data folder, subject): real photographs only (no renders, masks or synthetic patterns). Read
# as files with Pillow, without importing the packages (the GPU image carries their wheels, not scipy).
PHOTOS = (
    ("skimage", "data/astronaut.png", "astronaut in a spacesuit"),
    ("skimage", "data/chelsea.png", "tabby cat"),
    ("skimage", "data/coffee.png", "cup of coffee"),
    ("skimage", "data/hubble_deep_field.jpg", "deep field of galaxies"),
    ("skimage", "data/ihc.png", "stained tissue under a microscope"),
    ("skimage", "data/retina.jpg", "retina scan"),
    ("skimage", "data/rocket.jpg", "rocket on the launch pad"),
    ("skimage", "data/motorcycle_left.png", "motorcycle in a garage"),
    ("skimage", "data/motorcycle_right.png", "motorcycle in a garage"),
    ("skimage", "data/camera.png", "man with a camera"),
    ("skimage", "data/moon.png", "surface of the moon"),
    ("skimage", "data/coins.png", "old coins"),
    ("skimage", "data/clock_motion.png", "wall clock"),
    ("skimage", "data/brick.png", "brick wall"),
    ("skimage", "data/grass.png", "grass"),
    ("skimage", "data/gravel.png", "gravel path"),
    ("sklearn", "datasets/images/china.jpg", "chinese temple"),
    ("sklearn", "datasets/images/flower.jpg", "flower"),
)
OPENERS = ("", "", "", "photo of", "a photo of", "close-up of", "stock image:", "image of", "picture of", "view of")
ADJECTIVES = (
    "beautiful",
    "old",
    "bright",
    "dark",
    "vintage",
    "colorful",
    "detailed",
    "small",
    "large",
    "natural",
    "high resolution",
    "blurry",
    "sharp",
    "famous",
    "rare",
    "classic",
    "modern",
    "quiet",
)
PHRASES = (
    "in the afternoon light",
    "on a white background",
    "seen from above",
    "at the museum",
    "for sale",
    "with a shallow depth of field",
    "in high definition",
    "royalty free",
    "from our collection",
    "on display",
    "taken with a DSLR camera",
    "at night",
    "in the summer of 2014",
    "wallpaper",
    "by a local photographer",
    "free download",
    "product shot",
    "best price online",
    "art print",
    "for your desktop",
    "next to the window",
    "in the studio",
)


@functools.cache
def photos() -> list[tuple[np.ndarray, str]]:
    """The source photographs as uint8 RGB arrays with a subject (grey ones replicated to three channels)."""
    out = []
    for package, name, subject in PHOTOS:
        spec = importlib.util.find_spec(package)  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(
                f"photo_shards needs the {package} package installed (its photographs): pip install "
                f"{'scikit-image' if package == 'skimage' else 'scikit-learn'} (see requirements-dev.txt)"
            )
        with Image.open(os.path.join(spec.submodule_search_locations[0], name)) as img:
            out.append((np.asarray(img.convert("RGB")), subject))
    return out


def view(rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One distinct random view of a source photograph, at a web-like original size."""
    pixels, subject = photos()[rng.integers(len(photos()))]
    h, w = pixels.shape[:2]
    area, aspect = w * h * rng.uniform(0.2, 1.0), np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    cw, ch = min(w, round(np.sqrt(area * aspect))), min(h, round(np.sqrt(area / aspect)))
    left, top = int(rng.integers(w - cw + 1)), int(rng.integers(h - ch + 1))
    longest = int(rng.integers(320, 1401))
    size = (max(1, round(cw * longest / max(cw, ch))), max(1, round(ch * longest / max(cw, ch))))
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(0.6, 1.4)))
    return image, subject


def img2dataset_resize(image: Image.Image, mode: str, size: int) -> Image.Image:
    """img2dataset's resize: `border` (longest side -> size, centred on black) or `keep_ratio_largest` with
    resize_only_if_bigger (longest side shrunk to size). Area filter when shrinking, Lanczos when enlarging."""
    w, h = image.size
    scale = size / max(w, h)
    if mode == "keep_ratio_largest" and scale >= 1:
        return image
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = image.resize(new, Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS)
    if mode == "border":
        canvas = Image.new("RGB", (size, size))
        canvas.paste(image, ((size - new[0]) // 2, (size - new[1]) // 2))
        image = canvas
    return image


def caption(rng: np.random.Generator, subject: str) -> str:
    """A web-alt-text-like caption: median about 11 words, from 2 to about 30."""
    words = [rng.choice(OPENERS), *rng.choice(ADJECTIVES, rng.integers(0, 3), replace=False), subject]
    words += list(rng.choice(PHRASES, rng.integers(0, 4), replace=False))
    if rng.random() < 0.3:
        words.append(f"- {int(rng.integers(1000, 9999))}x{int(rng.integers(600, 6000))} px")
    return " ".join(w for w in words if w)


def sample(seed: int, index: int, layout: str) -> tuple[bytes, str, dict]:
    """(JPEG bytes, caption, img2dataset-style metadata) of sample `index`; a pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    image, subject = view(rng)
    mode, size = LAYOUTS[layout]
    stored = img2dataset_resize(image, mode, size)
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=QUALITY)
    data, text = buffer.getvalue(), caption(rng, subject)
    meta = {
        "caption": text,
        "url": f"https://photos.invalid/{seed}/{index}.jpg",
        "status": "success",
        "error_message": None,
        "width": stored.width,
        "height": stored.height,
        "original_width": image.width,
        "original_height": image.height,
        "exif": "{}",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return data, text, meta


def write_shard(out: str, shard: int, indices: range, layout: str, seed: int) -> str:
    """One tar of img2dataset's layout (`SSSSSPPPP.jpg/.txt/.json`) and its `_stats.json`."""
    path = os.path.join(out, f"{shard:05d}.tar")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for position, index in enumerate(indices):
            data, text, meta = sample(seed, index, layout)
            key = f"{shard:05d}{position:04d}"
            meta = {"caption": meta.pop("caption"), "url": meta.pop("url"), "key": key, **meta}
            for ext, payload in (("jpg", data), ("txt", text.encode()), ("json", json.dumps(meta, indent=4).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))
    stats = {"count": len(indices), "successes": len(indices), "failed_to_download": 0, "failed_to_resize": 0}
    with open(os.path.join(out, f"{shard:05d}_stats.json"), "w") as f:
        json.dump(stats, f, indent=4)
    return path


def build(out: str, layout: str, samples: int, shards: int, seed: int = 0, workers: int = 0) -> dict:
    """Write the shards and their manifest; returns the manifest."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    if not 1 <= shards <= samples or samples > shards * 10_000:
        raise ValueError(f"need 1 <= shards ({shards}) <= samples ({samples}) <= shards x 10000")
    os.makedirs(out, exist_ok=True)
    per = -(-samples // shards)
    chunks = [range(i * per, min((i + 1) * per, samples)) for i in range(shards)]
    workers = workers or min(shards, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        paths = list(pool.map(write_shard, [out] * shards, range(shards), chunks, [layout] * shards, [seed] * shards))
    return build_manifest(
        paths, out, {"description": f"photo benchmark shards, {layout} layout, seed {seed}"}, workers=workers
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--layout", default="img2dataset", choices=sorted(LAYOUTS))
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=16, help="at least ranks x workers (the peer's loader needs it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="processes (default: one per core, at most --shards)")
    args = parser.parse_args(argv)
    manifest = build(args.out, args.layout, args.samples, args.shards, args.seed, args.workers)
    print(f"{args.out}: {manifest['total']} {args.layout} photos in {args.shards} shards", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
