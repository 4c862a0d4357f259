"""Model-only step time: our CLIP + our OpenCLIP loss (eager and regionally compiled) vs open_clip's model of the
same architecture + its ClipLoss, on one device, the same resident batch, precision, FLIP mask ratio and fused
AdamW; calls interleaved round-robin so noise hits all alike, medians reported.

    python benchmarks/bench_model.py --model ViT-B-16 --batch 256 --precision bf16 --mask-ratios 0.5,0 \
        --out bench_model.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_common import interleaved_medians, machine_description, write_json
from model import create_model, get_model_config
from model.convert_open_clip import model_cfg
from train.losses import OpenCLIPLoss

VARIANTS = ("ours", "ours_compiled", "open_clip")
Step = Callable[[], None]


def _inputs(name: str, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = get_model_config(name)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    tokens = torch.randint(1, 49000, (batch, cfg.text.context_length), generator=g)
    tokens[:, -1] = 49407  # the EOT token (the largest id) pools the text
    return images.to(device), tokens.to(device)


def _step(model: torch.nn.Module, loss: Callable[..., torch.Tensor], inputs: tuple, dtype: torch.dtype | None) -> Step:
    device = inputs[0].device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            image_features, text_features, scale = model(*inputs)
        loss(image_features.float(), text_features.float(), scale).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ours(name: str, inputs: tuple, mask: float, dtype: torch.dtype | None, compiled: bool) -> Step:
    model = create_model(name).to(inputs[0].device).train()
    model.set_mask_ratio(mask)
    if compiled:
        model.compile_blocks()
    criterion, index = OpenCLIPLoss(), torch.arange(inputs[0].shape[0], device=inputs[0].device)
    return _step(model, lambda i, t, ls: criterion(i, t, index, ls).loss, inputs, dtype)


def open_clip_model(name: str, inputs: tuple, mask: float, dtype: torch.dtype | None) -> Step:
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:  # our architecture as an open_clip model config
        path = Path(tmp) / f"fastflip-{name}.json"
        path.write_text(json.dumps(model_cfg(get_model_config(name))))
        open_clip.add_model_config(path)
        model = open_clip.create_model(path.stem, force_patch_dropout=mask or None, device=inputs[0].device)
    criterion = open_clip.ClipLoss()
    return _step(model.train(), lambda i, t, scale: criterion(i, t, scale), inputs, dtype)


def measure(args: argparse.Namespace, mask: float, device: torch.device) -> dict[str, Any]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    inputs = _inputs(args.model, args.batch, device)
    makers = {
        "ours": lambda: ours(args.model, inputs, mask, dtype, compiled=False),
        "ours_compiled": lambda: ours(args.model, inputs, mask, dtype, compiled=True),
        "open_clip": lambda: open_clip_model(args.model, inputs, mask, dtype),
    }
    steps = {name: makers[name]() for name in args.variants.split(",")}
    calls = {name: (lambda s=s: [s() for _ in range(args.steps)]) for name, s in steps.items()}
    seconds = interleaved_medians(calls, args.warmup, args.repeats)
    ms = {name: 1e3 * s / args.steps for name, s in seconds.items()}
    result: dict[str, Any] = {
        "mask_ratio": mask,
        "ms_per_step": ms,
        "samples_per_s": {name: args.batch / (m / 1e3) for name, m in ms.items()},
    }
    if "open_clip" in ms:
        result["ours_over_open_clip"] = {n: ms["open_clip"] / m for n, m in ms.items() if n != "open_clip"}
    if "ours_compiled" in ms and "ours" in ms:
        result["compile_speedup"] = ms["ours"] / ms["ours_compiled"]
    del steps, calls
    gc.collect()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--mask-ratios", default="0.5,0", help="comma-separated FLIP mask ratios")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS}")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed call")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each (compiles, allocates)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each (median)")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    for mask in (float(r) for r in args.mask_ratios.split(",")):
        results.append(measure(args, mask, device))
        r = results[-1]
        print(
            f"mask {mask}: "
            + "  ".join(f"{n} {m:.1f} ms ({r['samples_per_s'][n]:.0f}/s)" for n, m in r["ms_per_step"].items()),
            flush=True,
        )
        write_json(
            args.out,
            {
                "model": args.model,
                "batch": args.batch,
                "precision": args.precision,
                "steps_per_call": args.steps,
                "repeats": args.repeats,
                "results": results,
                "machine": machine_description(),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
