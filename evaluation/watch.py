"""Follow a run: evaluate each newly published checkpoint once, in a process of its own, and log the results at
that checkpoint's step. Training never waits for it.

A checkpoint is published when its `step_*` directory appears (train.checkpoint.files renames a complete
`.tmp-*` directory, meta.json inside); `.tmp-*` directories are never read. For each one the suite runs
(results cached per (checkpoint, task), so a watcher killed mid-suite resumes at the next task), then:
- `eval_watch/results.jsonl`: the watcher's own record, one line per checkpoint (the truth on restart);
- `metrics.jsonl` of the run: one row {"step", "suite/<task>/<metric>", ..., "suite/checkpoint_id"}, appended
  with a single O_APPEND write (the trainer's rows are single writes too, so lines never interleave);
- TensorBoard under `tensorboard/eval_watch/` (its own event directory: the trainer's purge on resume never
  touches it), and the run's MLflow run (the run id from the checkpoint's meta.json) when configured.
The watcher stops once status.json reports an end other than "preempted" (a preempted job is requeued and
resumes) written after the newest checkpoint, no job of the run is alive on this host (run.lock), and every
checkpoint is evaluated.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from evaluation.cache import ResultCache
from evaluation.models import checkpoint_identity, load_checkpoint
from evaluation.suite import Suite
from evaluation.suite_runner import flat_scalars, run_suite
from train.faults.status import STATUS_FILE, read_status
from train.trackers import mlflow_name, mlflow_uri

logger = logging.getLogger(__name__)

WATCH_DIR = "eval_watch"
RESULTS = "results.jsonl"
PREFIX = "suite/"
ID_KEY = PREFIX + "checkpoint_id"  # which checkpoint a metrics.jsonl row came from (a step may be re-written)


def append_line(path: Path, row: dict[str, Any]) -> None:
    """One JSON line in a single write(2) on an O_APPEND descriptor: never interleaved with another writer's."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of `path`; a torn last line (a writer killed mid-write) is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def checkpoint_number(identity: str) -> int:
    """A checkpoint's identity as a number metrics.jsonl can hold (48 bits of its meta.json hash)."""
    return int(identity[:12], 16)


class Watcher:
    def __init__(
        self,
        run_dir: str | Path,
        suite: Suite,
        data_root: str,
        device: torch.device,
        batch_size: int = 256,
        workers: int = 0,
        amp: bool = False,
        poll_s: float = 10.0,
    ) -> None:
        self.run = Path(run_dir)
        self.suite, self.data_root, self.device = suite, data_root, device
        self.batch_size, self.workers, self.amp, self.poll_s = batch_size, workers, amp, poll_s
        self.dir = self.run / WATCH_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache = ResultCache(self.dir / "cache")
        self.writer = None
        self._lock_fd: int | None = None

    # ----- what is there to do ------------------------------------------------------------
    def done(self) -> dict[str, str]:
        """checkpoint name -> identity of what results.jsonl records as evaluated."""
        return {row["checkpoint"]: row["identity"] for row in read_rows(self.dir / RESULTS)}

    def pending(self) -> list[Path]:
        """Published checkpoints not yet evaluated (a step re-written since with other contents counts as new)."""
        done = self.done()
        out = []
        for path in sorted(self.run.glob("checkpoints/step_*")):
            try:
                if done.get(path.name) != checkpoint_identity(path):
                    out.append(path)
            except FileNotFoundError:  # not complete, or pruned while we looked
                continue
        return out

    def run_ended(self) -> bool:
        """status.json says the run ended (not preempted) after its newest checkpoint was written."""
        try:
            written = (self.run / STATUS_FILE).stat().st_mtime
            status = read_status(self.run)
        except (FileNotFoundError, ValueError):  # not written yet, or being written
            return False
        if status is None or status.get("status") == "preempted" or self._job_alive_here():
            return False
        metas = [p.stat().st_mtime for p in self.run.glob("checkpoints/step_*/meta.json")]
        return not metas or written >= max(metas)

    def _job_alive_here(self) -> bool:
        """Whether run.lock names a live process on this host (a resumed job, before it writes a checkpoint, behind
        the status.json of the job before it). From another host only status.json can tell."""
        try:
            holder = json.loads((self.run / "run.lock").read_text() or "null")
        except (FileNotFoundError, ValueError):
            return False
        if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True

    # ----- one checkpoint -------------------------------------------------------------------
    def evaluate(self, checkpoint: Path) -> dict[str, Any] | None:
        """Evaluate and publish one checkpoint; None when it was pruned or rewritten before it could be read."""
        try:
            evaluable = load_checkpoint(checkpoint)
        except FileNotFoundError as err:
            logger.warning("skipping %s: %s (raise checkpoint.keep_last if the watcher falls behind)", checkpoint, err)
            return None
        logger.info("evaluating %s", evaluable.description)
        results = run_suite(
            self.suite, self.data_root, evaluable, self.device, self.cache, self.batch_size, self.workers, self.amp
        )
        meta = evaluable.meta or {}
        samples = meta["step"] * meta["world_size"] * meta["config"]["data"]["batch_size"]
        scalars = flat_scalars(results) | {"samples": float(samples)}
        self.publish(meta["step"], evaluable.identity, scalars, meta)
        row = {
            "step": meta["step"],
            "checkpoint": checkpoint.name,
            "identity": evaluable.identity,
            "samples": samples,
            "scalars": scalars,
            "results": results,
            "time": time.time(),
        }
        append_line(self.dir / RESULTS, row)  # last: a crash before it re-evaluates (from the cache)
        return row

    def publish(self, step: int, identity: str, scalars: dict[str, float], meta: dict[str, Any]) -> None:
        """metrics.jsonl (once per checkpoint), TensorBoard and the run's MLflow run."""
        number = checkpoint_number(identity)
        metrics = self.run / "metrics.jsonl"
        if not any(row.get(ID_KEY) == number for row in read_rows(metrics)):
            append_line(metrics, {"step": step} | {PREFIX + k: v for k, v in scalars.items()} | {ID_KEY: number})
        writer = self._tensorboard()
        for key, value in scalars.items():
            writer.add_scalar(PREFIX + key, value, step)
        writer.flush()
        self._mlflow(step, scalars, meta)

    def _tensorboard(self):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            steps = [row["step"] for row in read_rows(self.dir / RESULTS)]
            # events a killed watcher wrote after its last recorded checkpoint are hidden, then written again
            self.writer = SummaryWriter(
                str(self.run / "tensorboard" / WATCH_DIR), purge_step=max(steps) + 1 if steps else None
            )
        return self.writer

    def _mlflow(self, step: int, scalars: dict[str, float], meta: dict[str, Any]) -> None:
        """Into the training run's own MLflow run (its id is in meta.json). wandb refuses steps older than a run's
        current one, so suite results reach wandb through TensorBoard sync or metrics.jsonl, not here."""
        logging_cfg = meta["config"].get("logging", {})
        run_id = meta.get("trackers", {}).get("mlflow")
        if "mlflow" not in logging_cfg.get("trackers", []) or not run_id:
            return
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        uri = mlflow_uri(self.run)  # the training run's own store
        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_name(PREFIX + k), float(v), now, step) for k, v in scalars.items()]
        MlflowClient(tracking_uri=uri).log_batch(run_id, metrics=metrics)

    # ----- the loop ---------------------------------------------------------------------------
    def lock(self) -> None:
        """One watcher per run (a POSIX lock, released by the kernel when the holder dies)."""
        fd = os.open(self.dir / "watch.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = (self.dir / "watch.lock").read_text().strip()
            raise RuntimeError(f"another watcher follows {self.run} ({holder}); stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._lock_fd = fd

    def follow(self) -> int:
        """Evaluate checkpoints as they appear until the run ends; the number evaluated by this process."""
        self.lock()
        evaluated = 0
        try:
            while True:
                ended = self.run_ended()  # read before the scan: a checkpoint published after it is still seen
                for checkpoint in self.pending():
                    evaluated += self.evaluate(checkpoint) is not None
                if ended and not self.pending():
                    status = read_status(self.run) or {}
                    logger.info(
                        "run ended (%s at step %s); %d checkpoints evaluated by this watcher",
                        status.get("status"),
                        status.get("step"),
                        evaluated,
                    )
                    return evaluated
                time.sleep(self.poll_s)
        finally:
            if self.writer is not None:
                self.writer.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
