"""The CPU demo: train the Fashion-MNIST recipe, then print one summary line with zero-shot top-1.

`make demo` runs `accelerate launch --num_processes 2 recipes/fastclip_demo.py --config
recipes/configs/demo_fashion_mnist.yaml`; without --config this script runs that recipe.
"""

import time
from pathlib import Path

STARTED = time.time()

from train.cli import exit_process, parse_args  # noqa: E402
from train.config import load_config  # noqa: E402
from train.trainer import Trainer  # noqa: E402

DEMO_RECIPE = Path(__file__).resolve().parent / "configs" / "demo_fashion_mnist.yaml"


def main() -> int:
    args = parse_args(None, __doc__, DEMO_RECIPE)
    with Trainer(load_config(args.config, args.overrides)) as trainer:
        result = trainer.fit()
    if trainer.backend.is_main:
        top1, n = result["eval"]["zeroshot_top1"], result["eval"]["zeroshot_n"]
        print(
            f"demo: zero-shot top-1 = {100 * top1:.1f}% on {n} Fashion-MNIST test images, "
            f"wall {time.time() - STARTED:.0f} s ({result['samples']} training samples, "
            f"{result['train_seconds']:.0f} s of training)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    exit_process(main())
