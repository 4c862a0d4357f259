"""Run logging: TensorBoard scalars and a console progress line, both on rank 0 only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger("fastflip")

# (scalar, console label, format) of the progress line
_CONSOLE = (
    ("train/loss", "loss", ".4f"),
    ("schedule/lr", "lr", ".3g"),
    ("schedule/tau", "tau", ".4f"),
    ("schedule/gamma", "gamma", ".3f"),
    ("schedule/mask_ratio", "mask", ".2f"),
    ("perf/samples_per_s", "samples/s", ".1f"),
    ("perf/data_s", "data_s", ".3f"),
)


class MetricsLogger:
    """Writes scalars to TensorBoard and `metrics.jsonl` and prints a progress line (rank 0 only).

    The trainer calls `log` on logging steps only, with values already read from the device.
    """

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, total_steps: int) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.writer = None
        self.jsonl = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = (out_dir / "metrics.jsonl").open("a")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step} | scalars) + "\n")
        self.jsonl.flush()
        line = f"step {step}/{self.total_steps}  epoch {int(scalars.get('train/epoch', 0))}"
        for key, label, fmt in _CONSOLE:  # only what this run has (no "gamma nan" for OpenCLIP)
            if key in scalars:
                line += f"  {label} {scalars[key]:{fmt}}"
        logger.info("%s", line)

    def log_eval(self, step: int, results: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in results.items():
            if self.writer is not None:
                self.writer.add_scalar(f"eval/{key}", value, step)
        self.jsonl.write(json.dumps({"step": step} | {f"eval/{k}": v for k, v in results.items()}) + "\n")
        self.jsonl.flush()
        logger.info("eval at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in results.items()))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def setup_console_logging(is_main: bool) -> None:
    """INFO on rank 0, WARNING elsewhere, so only one rank prints progress."""
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
