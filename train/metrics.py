"""Run logging: TensorBoard scalars and a console progress line, both on rank 0 only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger("fastflip")


class MetricsLogger:
    """Writes every scalar to TensorBoard and `metrics.jsonl`; prints a progress line every `every` steps."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, every: int, total_steps: int) -> None:
        self.enabled = enabled
        self.every = max(1, every)
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
        if step % self.every == 0 or step == self.total_steps:
            logger.info(
                "step %d/%d  epoch %d  loss %.4f  lr %.3g  tau %.4f  gamma %.3f  mask %.2f  %.1f samples/s",
                step, self.total_steps, int(scalars.get("train/epoch", 0)), scalars["train/loss"],
                scalars["schedule/lr"], scalars.get("schedule/tau", float("nan")),
                scalars.get("schedule/gamma", float("nan")), scalars["schedule/mask_ratio"],
                scalars.get("perf/samples_per_s", float("nan")),
            )  # fmt: skip

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
