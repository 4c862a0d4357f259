#!/usr/bin/env python
"""What the DRRho reference costs per training step on this machine, and what precomputed features save.

  python benchmarks/bench_reference.py [--steps 10 --rounds 5 --batch 64]   # CPU: table on stdout + JSON
  python benchmarks/bench_reference.py --gpu-b16 --out $OUT/bench_reference.json  # gpu_check.sh: B/16, B/32 ref

One process on fixed synthetic batches. Default (CPU): the study's tiny target (56 px mosaics, patch 14, text
context 40), fp32. `--gpu-b16`: ViT-B/16 target at bf16 with 75% FLIP masking, a ViT-B/32 reference (the
DRRho-CLIP paper's pair). Modes, timed round-robin in one run so that load from other jobs hits them alike
(compare ratios, not seconds): no reference (FastCLIP-v3); the reference model encoding every batch (the
authors' objective), with the target's architecture (the study's reference) and 2x wider (CPU) or the B/32
(GPU); precomputed features read by row (`loss.reference_features: precomputed`, not the authors' exact
objective). The reference forward is also timed alone, so its share of the step is measured directly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OVERRIDES = {"vision_image_size": 56, "vision_patch_size": 14, "text_context_length": 40}
WIDE = OVERRIDES | {"embed_dim": 128, "vision_width": 128, "text_width": 128, "vision_head_width": 32}
NUM_SAMPLES = 2500
# setting -> target (model, overrides, image size, context), references {mode: (model, overrides)}, precision, mask
SETTINGS = {
    "cpu_tiny": (
        ("tiny", OVERRIDES, 56, 40),
        {"model": ("tiny", OVERRIDES), "model_2x_wide": ("tiny", WIDE)},
        "fp32",
        0.0,
    ),
    "gpu_b16": (("ViT-B-16", {}, 224, 77), {"model_b32": ("ViT-B-32", {})}, "bf16", 0.75),
}


def _config(out: str, batch: int, setting: str, reference: dict | None):
    from tests.tiny_run import tiny_recipe
    from train.config import TrainConfig
    from train.config_io import from_dict

    (model, overrides, size, _), _, precision, mask = SETTINGS[setting]
    raw = tiny_recipe(
        out,
        data={"batch_size": batch, "image_size": size},
        flip={"mask_ratio": mask},
        epochs=1000,
        model={"name": model, "overrides": overrides},
        backend={"name": "ddp", "precision": precision},
    )
    raw["loss"] |= {"gamma_schedule": "epochs_rule"} | (reference or {})
    return from_dict(TrainConfig, raw, "bench_reference")


def _modes(tmp: Path, setting: str) -> dict[str, dict | None]:
    """mode -> loss.reference settings; writes the reference weights and a features table into `tmp`."""
    import numpy as np

    from model import create_model, get_model_config
    from model.convert_open_clip import save_open_clip
    from train.reference_spec import FEATURES_FILE

    modes: dict[str, dict | None] = {"none": None}
    for mode, (name, overrides) in SETTINGS[setting][1].items():
        folder = tmp / mode
        save_open_clip(create_model(name, **overrides).state_dict(), get_model_config(name, **overrides), folder)
        modes[mode] = {"reference": f"open_clip:{folder}", "reference_model": name, "reference_overrides": overrides}
    first = next(m for m in modes.values() if m)
    dim = get_model_config(first["reference_model"], **first["reference_overrides"]).embed_dim
    table = np.random.default_rng(0).standard_normal((NUM_SAMPLES, 2, dim)).astype(np.float16)
    np.save(tmp / FEATURES_FILE, table)
    modes["precomputed"] = dict(first) | {"reference_features": "precomputed"}
    return modes


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(steps: int, rounds: int, batch: int, setting: str = "cpu_tiny") -> dict:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29731",
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
            "ACCELERATE_USE_CPU": "1",
        }
    )
    import torch

    from tests.tiny_run import FixedBatches
    from train.trainer import Trainer

    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    (_, _, size, context), _, precision, mask = SETTINGS[setting]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        trainers, batches = {}, {}
        for mode, reference in _modes(tmp, setting).items():
            cfg = _config(str(tmp / f"run_{mode}"), batch, setting, reference)
            cfg.data.webdataset.index = str(tmp)
            trainer = Trainer(
                cfg, FixedBatches(batch, 0, 1, 4, num_samples=NUM_SAMPLES, image_size=size, context_length=context)
            )
            images, tokens, index = trainer.inputs(trainer.next_batch())
            batches[mode] = {"images": images, "tokens": tokens, "index": index}
            for _ in range(3):
                trainer.train_step(batches[mode])
            trainers[mode] = trainer
        step_s: dict[str, list[float]] = {m: [] for m in trainers}
        ref_s: dict[str, list[float]] = {m: [] for m in trainers if trainers[m].reference is not None}
        for _ in range(rounds):
            for mode, trainer in trainers.items():
                b = batches[mode]
                _sync()
                start = time.perf_counter()
                for _ in range(steps):
                    trainer.train_step(b)
                _sync()
                step_s[mode].append((time.perf_counter() - start) / steps)
                if mode in ref_s:
                    cpu_index = b["index"].cpu()
                    start = time.perf_counter()
                    for _ in range(steps):
                        trainer.reference(b["images"], b["tokens"], cpu_index)
                    _sync()
                    ref_s[mode].append((time.perf_counter() - start) / steps)
        for trainer in trainers.values():
            trainer.close()
    base = statistics.median(step_s["none"])
    rows = {}
    for mode, times in step_s.items():
        med = statistics.median(times)
        rows[mode] = {
            "step_ms": 1e3 * med,
            "samples_per_s": batch / med,
            "step_vs_none": med / base,
            "reference_ms": 1e3 * statistics.median(ref_s[mode]) if mode in ref_s else 0.0,
        }
        rows[mode]["reference_share_of_step"] = rows[mode]["reference_ms"] / rows[mode]["step_ms"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu, 1 thread"
    return {
        "setting": setting,
        "device": device,
        "precision": precision,
        "mask_ratio": mask,
        "batch": batch,
        "steps_per_round": steps,
        "rounds": rounds,
        "modes": rows,
    }


def table(result: dict) -> str:
    lines = [f"{'mode':<16}{'step ms':>9}{'samples/s':>11}{'vs none':>9}{'ref fwd ms':>12}{'ref share':>11}"]
    for mode, r in result["modes"].items():
        lines.append(
            f"{mode:<16}{r['step_ms']:>9.1f}{r['samples_per_s']:>11.1f}{r['step_vs_none']:>9.3f}"
            f"{r['reference_ms']:>12.1f}{100 * r['reference_share_of_step']:>10.1f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--gpu-b16", action="store_true", help="ViT-B/16 target, ViT-B/32 reference, bf16, 75%% masking")
    p.add_argument("--json", "--out", default=str(REPO / "benchmarks" / "results" / "bench_reference_cpu.json"))
    args = p.parse_args(argv)
    setting = "gpu_b16" if args.gpu_b16 else "cpu_tiny"
    result = measure(args.steps, args.rounds, args.batch, setting)
    print(table(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
