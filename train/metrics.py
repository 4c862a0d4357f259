"""Run logging: metrics.jsonl, the trackers (train.trackers: TensorBoard, wandb, MLflow) and a console line, on
rank 0 only; the cadence is `logging.every_steps` and the last step."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from train.config import TrainConfig
from train.config_io import to_dict
from train.trackers import Tracker, mlflow_uri, open_trackers

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
    """Writes scalars to `metrics.jsonl` and the trackers and prints a progress line (rank 0 only).

    The trainer asks `due(step)` and calls `log` on those steps only, with values already read from the device.
    """

    def __init__(
        self,
        out_dir: Path,
        enabled: bool,
        trackers: dict[str, Tracker] | None = None,
        *,
        total_steps: int,
        every_steps: int = 10,
        resume_step: int = 0,
    ) -> None:
        """`resume_step`: the step training continues from. What a crashed run logged after it is dropped from
        metrics.jsonl (the trackers do the same: TensorBoard hides it), so no step appears twice. `trackers` get the
        same rows as metrics.jsonl."""
        self.enabled = enabled
        self.trackers = trackers or {}
        self.total_steps = total_steps
        self.every_steps = every_steps
        self.jsonl = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            _drop_rows_after(out_dir / "metrics.jsonl", resume_step)
            self.jsonl = (out_dir / "metrics.jsonl").open("a")

    @classmethod
    def for_run(
        cls, cfg: TrainConfig, is_main: bool, total_steps: int, resume_step: int, run_ids: dict[str, str]
    ) -> MetricsLogger:
        """The run's logger under run.output_dir: on rank 0 with the trackers of `logging.trackers` (and TensorBoard
        when `logging.tensorboard`), continuing the tracked runs `run_ids`; other ranks log nothing."""
        log, out_dir = cfg.logging, Path(cfg.run.output_dir)
        trackers: dict[str, Tracker] = {}
        if is_main:
            if {"wandb", "mlflow"} & set(log.trackers):
                logger.info(
                    "starting the trackers: %s",
                    ", ".join(f"mlflow ({mlflow_uri(out_dir)})" if t == "mlflow" else t for t in log.trackers),
                )
            names = [*log.trackers, *(["tensorboard"] if log.tensorboard else [])]
            trackers = open_trackers(names, out_dir, log.project, cfg.run.name, to_dict(cfg), run_ids, resume_step)
        return cls(
            out_dir, is_main, trackers, total_steps=total_steps, every_steps=log.every_steps, resume_step=resume_step
        )

    def due(self, step: int) -> bool:
        """Whether step `step` (just taken) is logged: every `every_steps` steps and the last one, on every rank
        (logging sums the skip counts over ranks)."""
        return step % self.every_steps == 0 or step == self.total_steps

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step} | scalars) + "\n")
        self.jsonl.flush()
        for tracker in self.trackers.values():
            tracker.log(step, scalars)
        line = f"step {step}/{self.total_steps}  epoch {int(scalars.get('train/epoch', 0))}"
        for key, label, fmt in _CONSOLE:  # only what this run has (no "gamma nan" for OpenCLIP)
            if key in scalars:
                line += f"  {label} {scalars[key]:{fmt}}"
        if "perf/step_s" in scalars and step < self.total_steps:  # the window's pace (host clocks, no device read)
            line += f"  eta {eta(self.total_steps - step, scalars['perf/step_s'] + scalars['perf/data_s'])}"
        logger.info("%s", line)

    def log_eval(self, step: int, results: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {f"eval/{k}": v for k, v in results.items()}
        self.jsonl.write(json.dumps({"step": step} | row) + "\n")
        self.jsonl.flush()
        for tracker in self.trackers.values():
            tracker.log(step, row)
        logger.info("eval at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in results.items()))

    def run_ids(self) -> dict[str, str]:
        """Tracker name -> run id, kept in the checkpoint so a resumed run continues the same tracked run."""
        return {name: tracker.run_id for name, tracker in self.trackers.items() if tracker.run_id}

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers = {}
        if self.jsonl is not None:
            self.jsonl.close()


def eta(steps: int, seconds_per_step: float) -> str:
    """The time `steps` more steps take at `seconds_per_step`: '45s', '12m05s', '3h02m', '2d04h'."""
    left = round(steps * seconds_per_step)
    if left < 60:
        return f"{left}s"
    if left < 3600:
        return f"{left // 60}m{left % 60:02d}s"
    if left < 86400:
        return f"{left // 3600}h{left % 3600 // 60:02d}m"
    return f"{left // 86400}d{left % 86400 // 3600:02d}h"


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of `path` up to `step` (rewritten under a temporary name, then renamed)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["step"] <= step]
    if len(kept) != len(rows):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(path)


def setup_console_logging(is_main: bool) -> None:
    """INFO on rank 0, WARNING elsewhere, so only one rank prints progress."""
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


class ThroughputWindow:
    """Throughput of the steps since the last log: wall time, the part spent waiting for data, FLOPs."""

    def __init__(self) -> None:
        self.restart(0)

    def restart(self, step: int) -> None:
        self.step, self.started, self.data_s = step, time.perf_counter(), 0.0

    def perf(self, step: int, global_batch: int, flops_per_sample: float, peak_flops: float) -> dict[str, float]:
        """`peak_flops`: of all ranks together (peak per device x world size)."""
        steps = max(step - self.step, 1)
        wall = max(time.perf_counter() - self.started, 1e-9)
        samples_per_s = steps * global_batch / wall
        return {
            "perf/samples_per_s": samples_per_s,
            "perf/data_s": self.data_s / steps,
            "perf/step_s": (wall - self.data_s) / steps,
            "perf/mfu": samples_per_s * flops_per_sample / peak_flops,
        }
