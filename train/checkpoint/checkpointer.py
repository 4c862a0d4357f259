"""One owner of a run's checkpoints: what meta.json holds, which checkpoint `latest` resumes, whether a
checkpoint may be resumed by this run (backend, world size, config), saving and pruning."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from train.checkpoint.compat import check_resume_config
from train.checkpoint.files import (
    CheckpointDamaged,
    CheckpointWriter,
    checkpoint_name,
    is_complete,
    last_healthy,
    read_meta,
    resolve_resume_on_main,
)
from train.checkpoint.parts import Part, load_parts, save_parts
from train.checkpoint.resolved import RESOLVED
from train.config import TrainConfig
from train.config_io import ConfigError, to_dict
from train.faults.timeouts import is_timeout

logger = logging.getLogger("fastflip")

FORMAT = 2  # meta.json's "format" (none: 1); 2: the trainer's progress is a part of its own (trainer.pt)


class Checkpointer:
    """The checkpoints of one run under `<run.output_dir>/checkpoints`; every rank holds one.

    `parts` is the map of what a checkpoint holds (train.checkpoint.parts); meta.json (a summary of the progress,
    world size, backend, the config, the `resolved` block (train.checkpoint.resolved: RunSetup.resolved) and facts
    measured from the data) is assembled here and written last; without `resolved` there is no block (readers derive
    it). In training, `due(step)` says when to save (every `checkpoint.every_steps` before `total_steps`, whose
    checkpoint ends the run).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        parts: dict[str, Part],
        rank: int,
        world_size: int,
        barrier: Callable[[], None],
        resolved: dict[str, Any] | None = None,
        total_steps: int = 0,
    ) -> None:
        self.cfg = cfg
        self.resolved = resolved
        self.total_steps = total_steps
        self.parts = parts
        self.rank = rank
        self.world_size = world_size
        self.root = Path(cfg.run.output_dir) / "checkpoints"
        c = cfg.checkpoint
        self.writer = CheckpointWriter(self.root, c.keep_last, rank, barrier, c.keep_every_steps)

    def due(self, step: int) -> bool:
        every = self.cfg.checkpoint.every_steps
        return bool(every) and step % every == 0 and step < self.total_steps

    def has(self, step: int) -> bool:
        return is_complete(self.root / checkpoint_name(step))

    def resume_target(self) -> Path | None:
        """What checkpoint.resume names (decided on rank 0); a fresh run refuses a directory that already
        holds checkpoints, so a forgotten `resume=latest` never overwrites an earlier run."""
        path = resolve_resume_on_main(self.root, self.cfg.checkpoint.resume)
        if path is None and any(is_complete(p) for p in self.root.glob("step_*")):
            raise FileExistsError(
                f"{self.root} already holds checkpoints of an earlier run: set checkpoint.resume=latest to "
                "continue it, or choose another run.output_dir"
            )
        return path

    def health(
        self, losses: torch.Tensor, nonfinite_in_a_row: int, max_abs_weight: float | None = None
    ) -> dict[str, Any]:
        """Whether a checkpoint written now is healthy: no non-finite streak is running, the recent loss (mean of
        the last 10 finite step losses of `losses`; none since a restart: nothing to compare) stays within
        checkpoint.healthy_loss_factor of the newest healthy checkpoint's, and the largest |weight| (over every
        rank's parameters) within checkpoint.healthy_weight_factor of its (the first checkpoint is the reference)."""
        recent = losses[-10:]  # a save waits for the device anyway
        recent = recent[torch.isfinite(recent)]
        recent_loss = float(recent.mean()) if recent.numel() else None
        reference: dict[str, Any] = {}
        if (healthy := last_healthy(self.root)) is not None:
            reference = read_meta(healthy).get("health", {})
        ref_loss, ref_weight = reference.get("recent_loss"), reference.get("max_abs_weight")
        c = self.cfg.checkpoint
        if nonfinite_in_a_row:
            reason = f"written during a streak of {nonfinite_in_a_row} non-finite steps"
        elif None not in (recent_loss, ref_loss) and recent_loss > c.healthy_loss_factor * ref_loss:
            reason = f"recent loss {recent_loss:.4g} left its range (> {c.healthy_loss_factor:g} x {ref_loss:.4g})"
        elif None not in (max_abs_weight, ref_weight) and max_abs_weight > c.healthy_weight_factor * ref_weight:
            reason = (
                f"largest |weight| {max_abs_weight:.4g} jumped past {c.healthy_weight_factor:g} x "
                f"{ref_weight:.4g} (the last healthy checkpoint's, {healthy.name})"
            )
        else:
            reason = ""
        return {"healthy": not reason, "recent_loss": recent_loss, "max_abs_weight": max_abs_weight, "reason": reason}

    def resume_advice(self) -> str:
        """Where a diverged run should restart: the newest healthy checkpoint, named."""
        healthy = last_healthy(self.root)
        if healthy is None:
            return "no healthy checkpoint was written: start again with a new run.output_dir"
        return f"the last healthy checkpoint is {healthy}: resume with checkpoint.resume={healthy}"

    def save(self, progress: dict[str, Any], dataset: dict[str, Any], weights_finite: Callable[[], bool]) -> Path:
        """Write every part, then meta.json; `progress` (step, epoch, phase, health, tracked runs) describes the
        checkpoint to people and tools, the parts hold the state (the trainer's own progress included)."""
        meta = (
            progress
            | {
                "format": FORMAT,
                "world_size": self.world_size,
                "backend": self.cfg.backend.name,
                "config": to_dict(self.cfg),
                "dataset": dataset,
            }
            | ({} if self.resolved is None else {RESOLVED: self.resolved})
        )
        return self.writer.save(
            progress["step"], lambda directory: save_parts(self.parts, directory, self.rank), meta, weights_finite
        )

    def check_resumable(
        self, path: Path, dataset: dict[str, Any], global_batch: int, resumes_elsewhere: bool, keys_are_rows: bool
    ) -> dict:
        """Refuse a checkpoint this run cannot continue (before anything is loaded); return its meta.

        `dataset`: this run's facts measured from the data; `resumes_elsewhere`: whether the backend's
        checkpoints load on another number of ranks; `keys_are_rows`: whether the index's dense rows equal the
        integer source keys (then a checkpoint from before dense rows indexes the same samples). The per-rank
        batch may differ when the global batch is kept.
        """
        meta = read_meta(path)
        if meta.get("format", 1) != FORMAT:
            raise ConfigError(
                f"{path} is in checkpoint format {meta.get('format', 1)}; this version reads format {FORMAT} (the "
                "trainer's progress in trainer.pt). Resume it with the version that wrote it, or start a new run"
            )
        if meta["backend"] != self.cfg.backend.name:
            raise ConfigError(
                f"{path} was written by backend {meta['backend']!r}, this run uses {self.cfg.backend.name!r}"
            )
        saved, current = meta["config"], to_dict(self.cfg)
        if "dataset" in meta:  # facts measured from the data (older checkpoints lack them)
            facts = dict(meta["dataset"])
            if "rows" not in facts and not keys_are_rows:  # per-sample state indexed by source key
                raise ConfigError(
                    f"{path} indexes its per-sample state by source key (max key + 1 rows); this "
                    "data's index gives dense rows 0..N-1 that differ from those keys, so the saved "
                    "state would belong to other samples. Start a new run, or resume it with the "
                    "version that wrote it"
                )
            saved, current = saved | {"dataset": facts | {"rows": "dense"}}, current | {"dataset": dataset}
        allowed = list(self.cfg.checkpoint.allow_changes)
        if meta["world_size"] * saved["data"]["batch_size"] == global_batch:  # another world size, same global
            allowed.append("data.batch_size")  # batch: the per-rank batch follows the number of ranks
        changes = check_resume_config(saved, current, allowed, str(path))
        if changes and self.rank == 0:
            logger.info("config changes since %s:\n  %s", path.name, "\n  ".join(changes))
        if meta["world_size"] != self.world_size and not resumes_elsewhere:
            raise ConfigError(
                f"{path}: backend {self.cfg.backend.name} cannot resume a {meta['world_size']}-rank "
                f"checkpoint on {self.world_size} ranks"
            )
        return meta

    def load(self, path: Path, saved_world: int) -> None:
        """Restore every part (collective); a different world size re-partitions what can be. A file that fails to
        load (damaged after the resume check, or by a bug) ends the run in one line naming the checkpoint."""
        try:
            load_parts(self.parts, path, self.rank, saved_world, self.world_size)
        except CheckpointException as err:  # torch.distributed.checkpoint: each rank's traceback; keep the cause
            cause = [line for line in str(err).splitlines() if line.strip()][-1]
            raise CheckpointDamaged(
                f"{path} could not be loaded on rank {self.rank} ({cause}); resume from an earlier step_* directory"
            ) from None
        except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
            if is_timeout(err):  # a silent rank, not a bad file: train.faults.timeouts.watch names it
                raise
            raise CheckpointDamaged(
                f"{path} could not be loaded on rank {self.rank} ({type(err).__name__}: {err}); resume from an "
                "earlier step_* directory"
            ) from err
