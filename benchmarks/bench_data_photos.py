"""`bench_data.py --photos`: loader throughput per core on real-photo JPEG shards, side by side in one run.

For each shard set (benchmarks/photo_shards.py: img2dataset's 256 px border layout and DataComp's <= 512 px), each
pipeline runs in its own process pinned to one core (os.sched_setaffinity; its loader worker inherits it), then with
one worker per core unpinned ("all cores"). Pipelines, interleaved per repeat (medians reported):

- `decode:<decoder>`: read the tars in order and decode every JPEG at full size (PIL, simplejpeg into a fresh
  array, simplejpeg into one buffer reused across images, torchvision's libjpeg-turbo); `decode_floor` is the
  fastest. `decode:pil_draft` decodes at the largest DCT scale (1/2, 1/4,
  1/8) that keeps the crop at least the target size: a candidate, not a full decode;
- `ours`: the real train loader (build_train_loader: crop box, tokenization, batching, uint8 to the trainer) in the
  path a GPU run takes by default (`data.resize: auto` = device: the worker decodes, the device resizes);
  `ours_host`: the host path (`data.resize: host`: PIL decode + bicubic crop-resize in the worker, the CPU default);
  `ours_decode_device`: `data.decode: device` (the worker reads bytes and headers only);
- `open_clip`: open_clip_train's webdataset pipeline and train transform from the peer's environment
  (benchmarks/open_clip_data_peer.py).

A rate is samples per CPU-second of the pinned process and its loader worker: what one core delivers whatever
else the machine runs (on a quiet machine it equals the wall rate, also recorded). Crop-resize candidates
(bicubic, bilinear, DCT-domain downscale + bicubic, the device resize run on a CPU core) are timed in one pinned
process with their pixel difference to the host path. `cores_per_gpu`: cores a loader needs to feed ViT-B/16 at
the model rates measured on one H200 (bf16, batch 256) at mask 0 / 0.5 / 0.75.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks.cpu_time import cpu_seconds, per_cpu_s, with_children

REPO = Path(__file__).resolve().parents[1]
MODEL_RATES = {"0.0": 2069.0, "0.5": 3170.0, "0.75": 4204.0}  # ViT-B/16 model step on one H200, samples/s
GOALS = {"ours_over_floor": 0.8, "ours_over_open_clip": 2.0, "cores_per_gpu_0.75": {"256": 6.0, "512": 10.0}}
DECODERS = ("pil", "simplejpeg", "simplejpeg_reused", "torchvision", "pil_draft")
OURS = {
    "ours": {"resize": "device"},
    "ours_host": {"resize": "host"},
    "ours_decode_device": {"resize": "device", "decode": "device"},
}


# ----- child processes: one measurement each --------------------------------------------------------------------
def jpegs(shards: str):
    """JPEG bytes of every sample, reading the tars in order as a stream (what a loader reads)."""
    for tar_path in sorted(Path(shards).glob("*.tar")):
        with tarfile.open(tar_path, mode="r|") as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    yield tar.extractfile(member).read()


def decoder(name: str, size: int):
    from PIL import Image

    if name == "pil":

        def decode(data: bytes):
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB")
    elif name == "pil_draft":

        def decode(data: bytes):
            with Image.open(io.BytesIO(data)) as img:
                crop = (0.9**0.5) * min(img.size)  # the smallest crop side the train transform draws, about
                img.draft("RGB", (int(img.width * size / crop), int(img.height * size / crop)))
                return img.convert("RGB")
    elif name == "simplejpeg":
        import simplejpeg

        def decode(data: bytes):
            return simplejpeg.decode_jpeg(data, "RGB")
    elif name == "simplejpeg_reused":  # into one buffer kept across images: no fresh pages to fault in
        import numpy as np
        import simplejpeg

        buffer = np.empty(0, dtype=np.uint8)

        def decode(data: bytes):
            nonlocal buffer
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            if len(buffer) < height * width * 3:
                buffer = np.empty(height * width * 3, dtype=np.uint8)
            return simplejpeg.decode_jpeg(data, "RGB", buffer=buffer[: height * width * 3])
    elif name == "torchvision":
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        def decode(data: bytes):
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    else:
        raise ValueError(f"unknown decoder {name!r}")
    return decode


def run_decode(spec: dict) -> dict:
    decode, stream = decoder(spec["decoder"], spec["image_size"]), jpegs(spec["shards"])
    for _ in range(spec["warmup"] * spec["batch_size"]):
        decode(next(stream))
    n = spec["batches"] * spec["batch_size"]
    start, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        decode(next(stream))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"samples_per_s": n / wall, "samples_per_cpu_s": per_cpu_s(n, cpu)}


def run_ours(spec: dict) -> dict:
    from data.batch_buffer import give_back
    from data.config import DataConfig
    from data.loader import build_train_loader

    cfg = DataConfig(
        path=spec["shards"],
        batch_size=spec["batch_size"],
        workers=spec["workers"],
        image_size=spec["image_size"],
        seed=0,
        **spec["data"],
    )
    loader = build_train_loader(cfg)
    batches = iter(loader)
    for _ in range(spec["warmup"]):
        next(batches)
    pids = with_children(os.getpid())
    start, cpu0, n, previous = time.perf_counter(), cpu_seconds(pids), 0, None
    for _ in range(spec["batches"]):
        batch = next(batches)
        n += len(batch["index"])
        if previous is not None:
            give_back(previous)  # as the trainer does once the next batch is in (Trainer.next_batch)
        previous = batch
    wall, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu0
    loader.close()
    return {"samples_per_s": n / wall, "samples_per_cpu_s": per_cpu_s(n, cpu)}


def run_candidates(spec: dict) -> dict:
    """ms per image of each crop-resize candidate on decoded photos, and its pixels against the host path's."""
    import numpy as np
    import torch
    from PIL import Image

    from data.device_resize import crop_resize
    from data.transforms import random_resized_crop_box

    size, n = spec["image_size"], spec["batches"] * spec["batch_size"]
    data = [d for _, d in zip(range(n), jpegs(spec["shards"]), strict=False)]
    rng = random.Random(0)
    boxes = []
    for d in data:
        with Image.open(io.BytesIO(d)) as img:
            boxes.append(random_resized_crop_box(img.width, img.height, rng))

    def pil(resample):
        def run(d, box):
            with Image.open(io.BytesIO(d)) as img:
                return np.asarray(img.convert("RGB").resize((size, size), resample, box=box))

        return run

    def draft(d, box):
        with Image.open(io.BytesIO(d)) as img:
            w, h = img.size
            img.draft("RGB", (int(w * size / (box[2] - box[0])), int(h * size / (box[3] - box[1]))))
            fx, fy = img.width / w, img.height / h
            scaled = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
            return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC, box=scaled))

    def device_on_cpu(ds, bs):
        images = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in ds]
        sizes = torch.tensor([a.shape[:2] for a in images])
        batch = torch.zeros(len(images), *sizes.max(0).values.tolist(), 3, dtype=torch.uint8)
        for i, a in enumerate(images):
            batch[i, : a.shape[0], : a.shape[1]] = torch.from_numpy(a)
        return crop_resize(batch, torch.tensor(bs), sizes, size).numpy()

    runs = {
        "pil_bicubic": pil(Image.Resampling.BICUBIC),
        "pil_bilinear": pil(Image.Resampling.BILINEAR),
        "pil_draft_bicubic": draft,
    }
    out, reference = {}, None
    for name, fn in runs.items():
        start = time.process_time()
        pixels = np.stack([fn(d, b) for d, b in zip(data, boxes, strict=True)])
        out[name] = {"ms_per_image": 1e3 * (time.process_time() - start) / n}
        reference = pixels if reference is None else reference
        diff = np.abs(pixels.astype(np.int16) - reference)
        out[name] |= {"mean_abs_levels": float(diff.mean()), "max_abs_levels": int(diff.max())}
    k = min(n, 16)  # dense matrix products are slow on a CPU: a few images are enough to time them
    start = time.process_time()
    pixels = device_on_cpu(data[:k], boxes[:k])
    diff = np.abs(pixels.astype(np.int16) - reference[:k])
    out["device_resize_on_a_cpu_core"] = {
        "ms_per_image": 1e3 * (time.process_time() - start) / k,
        "mean_abs_levels": float(diff.mean()),
        "max_abs_levels": int(diff.max()),
    }
    out |= handoff(data[: spec["batch_size"]], reference)
    return out


def handoff(data: list[bytes], crops) -> dict:
    """ms per image to decode a batch (simplejpeg) into what a worker hands the trainer, in shared memory:
    `handoff_pooled`: into a pooled buffer the consumer gives back (the loader's way, data.batch_buffer);
    `handoff_fresh`: into a fresh buffer each batch (a consumer that keeps its batches);
    `handoff_copied`: into per-image arrays, then copied into a new tensor moved to shared memory (before the pool);
    `handoff_crops`: the host path's final crops (already resized) into fresh shared memory, decode not included."""
    import simplejpeg
    import torch

    from data.batch_buffer import Arena, BufferPool, give_back
    from data.transforms import stack_pixels

    def into_arena(pool: BufferPool, back: bool):
        def run():
            arena = Arena(pool, len(data))
            for d in data:
                h, w, _, _ = simplejpeg.decode_jpeg_header(d)
                simplejpeg.decode_jpeg(d, "RGB", buffer=arena.slot(h * w * 3))
                arena.commit(h * w * 3)
            if back:
                give_back({"decoded": arena.take()})

        return run

    def copied():
        arrays = [simplejpeg.decode_jpeg(d, "RGB") for d in data]
        flat = torch.empty(sum(a.size for a in arrays), dtype=torch.uint8).share_memory_()
        view, at = flat.numpy(), 0
        for a in arrays:
            view[at : at + a.size] = a.reshape(-1)
            at += a.size

    out = {}
    for name, fn in (
        ("handoff_pooled", into_arena(BufferPool(True, 4), True)),
        ("handoff_fresh", into_arena(BufferPool(True, 4), False)),
        ("handoff_copied", copied),
        ("handoff_crops", lambda: stack_pixels(list(crops[: len(data)]), shared=True)),
    ):
        fn()  # the pool's first buffer is made here, as a worker makes it in its first batch
        start = time.process_time()
        for _ in range(3):
            fn()
        out[name] = {"ms_per_image": 1e3 * (time.process_time() - start) / (3 * len(data))}
    return out


def child(spec: dict) -> dict:
    """Each of spec["pipelines"] in turn, in this one (pinned) process: name -> its result."""
    if spec.get("core", -1) >= 0:
        os.sched_setaffinity(0, {spec["core"]})
    import torch

    torch.set_num_threads(1)
    out = {}
    for name in spec["pipelines"]:
        if name.startswith("decode:"):
            out[name] = run_decode(spec | {"decoder": name.split(":", 1)[1]})
        elif name == "candidates":
            out[name] = run_candidates(spec)
        else:
            out[name] = run_ours(spec | {"data": OURS[name]})
    return out


# ----- the parent: runs, medians, ratios --------------------------------------------------------------------------
def _run(command: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(names: list[str], spec: dict, site: Path) -> dict:
    """name -> {"samples_per_s", "samples_per_cpu_s"} (or the candidates' table): ours in one process, the peer's
    pipeline in another, from its own environment."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    out = {}
    if "open_clip" in names:
        from data.manifest import resolve_shards

        shardset = resolve_shards(spec["shards"])
        names_glob = "{" + ",".join(s.name for s in shardset.shards) + "}"
        pattern = os.path.join(os.path.abspath(shardset.directory), names_glob)
        command = [
            sys.executable,
            str(REPO / "benchmarks" / "open_clip_data_peer.py"),
            "--shards",
            pattern,
            "--samples",
            str(shardset.total),
            "--batch-size",
            str(spec["batch_size"]),
            "--workers",
            str(spec["workers"]),
            "--image-size",
            str(spec["image_size"]),
            "--warmup",
            str(spec["warmup"]),
            "--batches",
            str(spec["batches"]),
            "--core",
            str(spec.get("core", -1)),
        ]
        peer_env = {k: v for k, v in env.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
        out["open_clip"] = _run(command, peer_env)
    ours = [n for n in names if n != "open_clip"]
    if ours:
        payload = json.dumps(spec | {"pipelines": ours})
        command = [sys.executable, "-m", "benchmarks.bench_data_photos", "--child", payload]
        out |= _run(command, env | {"PYTHONPATH": str(REPO)})
    return out


def summarise(per_core: dict, all_cores: dict) -> dict:
    """Ratios and cores per GPU from the per-core medians of each shard set."""
    out: dict = {"ours_over_floor": {}, "ours_over_open_clip": {}, "cores_per_gpu": {}, "by_variant": {}}
    for size, rates in per_core.items():
        floor = max(rates[f"decode:{d}"] for d in DECODERS if d != "pil_draft")
        rates["decode_floor"] = floor
        for name in OURS:
            ratios = out["by_variant"].setdefault(name, {"over_floor": {}, "over_open_clip": {}})
            ratios["over_floor"][size] = rates[name] / floor
            ratios["over_open_clip"][size] = rates[name] / rates["open_clip"]
            out["cores_per_gpu"].setdefault(size, {})[name] = {m: r / rates[name] for m, r in MODEL_RATES.items()}
        out["cores_per_gpu"][size]["open_clip"] = {m: r / rates["open_clip"] for m, r in MODEL_RATES.items()}
        out["ours_over_floor"][size] = out["by_variant"]["ours"]["over_floor"][size]
        out["ours_over_open_clip"][size] = out["by_variant"]["ours"]["over_open_clip"][size]
    out["goals"] = {
        size: {
            "ours_over_floor>=0.8": out["ours_over_floor"][size] >= GOALS["ours_over_floor"],
            "ours_over_open_clip>=2.0": out["ours_over_open_clip"][size] >= GOALS["ours_over_open_clip"],
            f"cores_per_gpu_0.75<={GOALS['cores_per_gpu_0.75'][size]:g}": out["cores_per_gpu"][size]["ours"]["0.75"]
            <= GOALS["cores_per_gpu_0.75"][size],
        }
        for size in per_core
        if size in GOALS["cores_per_gpu_0.75"]
    }
    return out


def table(result: dict) -> str:
    names = ["decode_floor", *(f"decode:{d}" for d in DECODERS), *OURS, "open_clip"]
    sizes = list(result["per_core"])
    lines = [f"{'per core, samples/s':<24}" + "".join(f"{s + ' px':>12}" for s in sizes)]
    for name in names:
        lines.append(f"{name:<24}" + "".join(f"{result['per_core'][s][name]:12.0f}" for s in sizes))
    for name in OURS:
        for key in ("over_floor", "over_open_clip"):
            row = result["by_variant"][name][key]
            lines.append(f"{name + ' ' + key:<24}" + "".join(f"{row[s]:12.2f}" for s in sizes))
    for name in [*OURS, "open_clip"]:
        row = [result["cores_per_gpu"][s][name]["0.75"] for s in sizes]
        lines.append(f"{'cores/GPU B16@.75 ' + name:<24}" + "".join(f"{v:12.1f}" for v in row))
    if result.get("all_cores"):
        for name in result["all_cores"][sizes[0]]:
            lines.append(f"{'all cores ' + name:<24}" + "".join(f"{result['all_cores'][s][name]:12.0f}" for s in sizes))
    return "\n".join(lines)


def main(argv: list[str]) -> dict:
    from benchmarks.bench_common import machine_description, write_json
    from benchmarks.bench_e2e import peer_env

    p = argparse.ArgumentParser(
        prog="bench_data.py --photos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--photos", action="store_true")
    p.add_argument(
        "--shards",
        default="",
        help="SIZE=DIR,SIZE=DIR of photo shards (default: build them in "
        "artifacts/photo_shards with benchmarks/photo_shards.py)",
    )
    p.add_argument("--samples", type=int, default=4096, help="per shard set, when building them")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="batches before timing")
    p.add_argument("--batches", type=int, default=10, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--core", type=int, default=-1, help="the core to pin to (default: the last one allowed)")
    p.add_argument("--no-all-cores", action="store_true", help="skip the all-cores runs")
    p.add_argument("--peer-site", default=str(REPO / ".peer" / "site"))
    p.add_argument("--peer-wheels", default="")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    shard_sets = dict(item.split("=", 1) for item in args.shards.split(",")) if args.shards else {}
    if not shard_sets:
        from benchmarks.photo_shards import build

        for layout, size in (("img2dataset", "256"), ("datacomp", "512")):
            out = REPO / "artifacts" / "photo_shards" / f"{layout}-{args.samples}"
            if not (out / "manifest.json").exists():
                build(str(out), layout, args.samples, max(16, args.samples // 256))
            shard_sets[size] = str(out)
    site = peer_env(Path(args.peer_site), args.peer_wheels)
    core = args.core if args.core >= 0 else max(os.sched_getaffinity(0))
    base = {
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "batches": args.batches,
        "image_size": args.image_size,
    }
    pipelines = [*(f"decode:{d}" for d in DECODERS), *OURS, "open_clip"]
    runs: dict = {s: {n: [] for n in pipelines} for s in shard_sets}
    candidates: dict = {}
    wall: dict = {s: {n: [] for n in pipelines} for s in shard_sets}
    info = machine_description()
    for rep in range(args.repeats):
        for size, shards in shard_sets.items():
            spec = base | {"shards": shards, "workers": 1, "core": core}
            extra = ["candidates"] if rep == 0 else []
            measured = measure([*pipelines, *extra], spec, site)
            if extra:
                candidates[size] = measured.pop("candidates")
            for name, r in measured.items():
                runs[size][name].append(r["samples_per_cpu_s"])
                wall[size][name].append(r["samples_per_s"])
                print(
                    f"  repeat {rep} {size} px {name:22s} {r['samples_per_cpu_s']:8.1f} samples/CPU-s "
                    f"({r['samples_per_s']:.1f}/s wall)",
                    file=sys.stderr,
                    flush=True,
                )
    per_core = {s: {n: statistics.median(v) for n, v in rates.items()} for s, rates in runs.items()}
    all_cores: dict = {}
    if not args.no_all_cores:
        cores = len(os.sched_getaffinity(0))
        for size, shards in shard_sets.items():
            measured = measure(["ours", "ours_host", "open_clip"], base | {"shards": shards, "workers": cores}, site)
            all_cores[size] = {name: r["samples_per_s"] for name, r in measured.items()}
    result = {
        "per_core": per_core,
        **summarise(per_core, all_cores),
        "all_cores": all_cores,
        "candidates": candidates,
        "per_core_runs": runs,
        "wall_samples_per_s_runs": wall,
        "model_rates_b16_h200": MODEL_RATES,
        "goal_values": GOALS,
        "config": {k: getattr(args, k) for k in ("image_size", "batch_size", "warmup", "batches", "repeats")}
        | {"shards": shard_sets, "pinned_core": core, "cores_all": len(os.sched_getaffinity(0))},
        "machine": info | {"loadavg_at_end": os.getloadavg()},
    }
    print("\n" + table(result))
    print(json.dumps(result["goals"]))
    write_json(args.out or None, result)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        main(sys.argv[1:])
