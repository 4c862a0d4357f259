"""FLIP masking speed-up: forward+backward time at mask ratio 0.5 / 0.75 relative to unmasked.

Times the ViT-B/16 image tower and the whole CLIP (both towers + a contrastive loss) at
batch 8, 224 px, fp32 on CPU (bf16 autocast on GPU), interleaving the ratios so that machine
noise hits all of them alike. Prints a table and writes `--out FILE.json`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.bench_common import interleaved_medians, machine_description, write_json
from model import CLIP, create_model

RATIOS = (0.0, 0.5, 0.75)


def _step(model: CLIP, images: torch.Tensor, tokens: torch.Tensor | None, ratio: float) -> Callable[[], None]:
    def run() -> None:
        model.set_mask_ratio(ratio)
        model.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.is_cuda):
            if tokens is None:
                loss = model.encode_image(images).float().square().mean()
            else:
                img, txt, scale = model(images, tokens)
                logits = scale.exp() * img.float() @ txt.float().T
                labels = torch.arange(len(img), device=img.device)
                loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write results JSON here")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = create_model(args.model).to(device).train()
    size = model.config.vision.image_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    tokens = torch.randint(1, 49406, (args.batch, 77), device=device)
    tokens[:, 20] = 49407

    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    for part, toks in (("image_tower", None), ("clip", tokens)):
        fns = {str(r): _step(model, images, toks, r) for r in RATIOS}
        med = interleaved_medians(fns, args.warmup, args.repeats)
        seconds[part] = med
        results[part] = {str(r): med[str(r)] / med["0.0"] for r in RATIOS if r > 0}

    print(f"{args.model} fwd+bwd, batch {args.batch}, {size} px, {device.type}, median of {args.repeats}")
    print(f"{'part':<12} {'ratio':>6} {'seconds':>9} {'vs unmasked':>12}")
    for part, med in seconds.items():
        for r in RATIOS:
            print(f"{part:<12} {r:>6.2f} {med[str(r)]:>9.3f} {med[str(r)] / med['0.0']:>12.3f}")
    write_json(
        args.out,
        {
            **results,
            "seconds": seconds,
            "config": vars(args) | {"image_size": size, "device": device.type},
            "machine": machine_description(),
        },
    )


if __name__ == "__main__":
    main()
