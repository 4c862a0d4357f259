"""The CPU demo: train the Fashion-MNIST recipe, then print one summary line with zero-shot top-1.

`make demo` runs `accelerate launch --num_processes 2 recipes/fastclip_demo.py --config
recipes/configs/demo_fashion_mnist.yaml`; without --config this script runs that recipe. It goes
through `train.cli` like every recipe: --dry-run prints the plan, errors get the documented exit codes.
"""

import time
from pathlib import Path
from typing import Any

STARTED = time.time()

from train.cli import exit_process, main  # noqa: E402

DEMO_RECIPE = Path(__file__).resolve().parent / "configs" / "demo_fashion_mnist.yaml"


def summary(result: dict[str, Any]) -> None:
    """The demo's one line: zero-shot top-1, wall time, samples."""
    top1, n = result["eval"]["zeroshot_top1"], result["eval"]["zeroshot_n"]
    print(
        f"demo: zero-shot top-1 = {100 * top1:.1f}% on {n} Fashion-MNIST test images, "
        f"wall {time.time() - STARTED:.0f} s ({result['samples']} training samples, "
        f"{result['train_seconds']:.0f} s of training)",
        flush=True,
    )


if __name__ == "__main__":
    exit_process(main(description=__doc__, flagship=DEMO_RECIPE, report=summary))
