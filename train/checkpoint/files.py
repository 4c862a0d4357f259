"""Checkpoint directories: written under a temporary name, renamed when complete, `latest` pointer, keep N.

Layout of one checkpoint `step_00001234/`:
  meta.json              step, epoch, world size, backend, the resolved config (written last by rank 0)
  trainer.pt             the trainer's progress: step, non-finite counters, tracked-run ids (rank 0)
  model / optimizer      in the backend's own format (model.pt + optimizer.pt, dcp/, deepspeed/)
  temperature.pt         the fp32 temperature and its Adam state (rank 0)
  data_rank{r}.pt        per rank: the data-stream position
  rng_rank{r}.pt         per rank: RNG states (torch, numpy, python, CUDA, the FLIP mask generator)
  loss_rank{r}.pt        per rank: the loss's per-sample state shard (re-partitioned on a new K)
The parts come from train.checkpoint.parts; train.checkpoint.checkpointer assembles meta.json.
A crash while writing leaves only a `.tmp-*` directory: `latest` still names the previous one. A failed
write (full disk) removes its `.tmp-*` and raises CheckpointWriteError naming the directory and its free
space; weights with NaN / inf are never published, so pruning cannot leave only diverged checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from train.faults.rank_sync import all_ranks, distributed, from_main
from train.renamed_keys import upgrade

logger = logging.getLogger(__name__)

META = "meta.json"
DAMAGED = "damaged: "  # marks a CheckpointDamaged answer when rank 0 broadcasts it
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / META).is_file()


class CheckpointDamaged(RuntimeError):
    """A checkpoint file is missing, truncated or altered since it was written (its meta.json records each one)."""


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json; its saved config with the keys renamed since it was written moved to their new
    places (train.renamed_keys), so a checkpoint from before a rename resumes, exports and evaluates."""
    try:
        meta = json.loads((path / META).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointDamaged(f"{path / META} is torn or corrupt ({err})") from err
    if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
        meta["config"] = upgrade(meta["config"])
    return meta


def file_records(directory: Path) -> dict[str, dict[str, int]]:
    """Size and CRC-32 of every file below `directory` (relative paths), as meta.json's `files` records them."""
    records = {}
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != META):
        crc = 0
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
        records[str(file.relative_to(directory))] = {"size": file.stat().st_size, "crc32": crc}
    return records


def damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted ("<file>: <what>"), or None when every recorded file is
    intact. Checkpoints from before the records were kept are checked for a readable meta.json only."""
    try:
        meta = read_meta(path)
    except CheckpointDamaged as err:
        return str(err)
    recorded = meta.get("files")
    if recorded is None:
        return None
    found = file_records(path)
    for name, want in recorded.items():
        got = found.get(name)
        if got is None:
            return f"{path / name}: missing"
        if got["size"] != want["size"]:
            return f"{path / name}: {got['size']} bytes, {want['size']} when written (truncated or replaced)"
        if got["crc32"] != want["crc32"]:
            return f"{path / name}: checksum differs from the one recorded when it was written"
    return None


def is_healthy(meta: dict[str, Any]) -> bool:
    """Checkpoints from before health was recorded count as healthy."""
    return bool(meta.get("health", {}).get("healthy", True))


def last_healthy(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` that was healthy when written (see CheckpointConfig)."""
    for path in sorted((p for p in root.glob("step_*") if is_complete(p)), reverse=True):
        try:
            if is_healthy(read_meta(path)):
                return path
        except CheckpointDamaged:
            continue
    return None


def resolve_resume(root: Path, resume: str | None) -> Path | None:
    """`None` -> no resume; `latest` -> the newest intact checkpoint (the one `latest` names, or, when that one is
    damaged, the newest intact before it, with a warning naming the bad file); else a path, refused if damaged."""
    if resume is None:
        return None
    if resume != LATEST:
        path = Path(resume)
        if not is_complete(path):
            raise FileNotFoundError(
                f"checkpoint.resume: {path} is not a complete checkpoint directory ({META} missing); "
                f"use 'latest' or a step_* directory under {root}"
            )
        if (problem := damage(path)) is not None:
            raise CheckpointDamaged(f"checkpoint.resume: {problem}; resume from another step_* directory or 'latest'")
        return path
    pointer = root / LATEST
    done = sorted(p for p in root.glob("step_*") if is_complete(p))
    if pointer.is_file():  # without one (killed between rename and pointer update): the newest complete one
        named = root / pointer.read_text().strip()
        if not is_complete(named):
            raise FileNotFoundError(f"{pointer} names {named}, which is not a complete checkpoint ({META} missing)")
        done = [p for p in done if p.name <= named.name]
    for candidate in reversed(done):
        problem = damage(candidate)
        if problem is None:
            return candidate
        logger.warning("checkpoint %s is damaged (%s); trying the one before it", candidate.name, problem)
    if done:
        raise CheckpointDamaged(f"every checkpoint under {root} is damaged (the newest: {damage(done[-1])})")
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A step_* directory, a run's checkpoints/ directory, its `latest` pointer or the run directory -> the step_*
    directory (for all but the first: the newest intact one, as `checkpoint.resume=latest` picks). What the tools,
    train.checkpoint.consolidate and model.api accept; anything else is a FileNotFoundError saying what to give."""
    p = Path(path)
    if p.name == LATEST and not p.is_dir():  # the pointer file
        p = p.parent
    if is_complete(p):
        return p
    for root in (p, p / "checkpoints"):
        if root.is_dir() and (found := resolve_resume(root, LATEST)) is not None:
            return found
    raise FileNotFoundError(
        f"{path}: no checkpoint there; give a step_* directory, a run's checkpoints/ directory, "
        f"its {LATEST!r} or the run directory"
    )


def resolve_resume_on_main(root: Path, resume: str | None) -> Path | None:
    """`resolve_resume` decided by rank 0 and broadcast: ranks that read a shared filesystem at slightly
    different moments (a save in flight, NFS attribute caching) could otherwise resume different steps."""
    answer: tuple[str | None, str | None] = (None, None)
    if not distributed() or torch.distributed.get_rank() == 0:
        try:
            path = resolve_resume(root, resume)
            answer = (None if path is None else str(path), None)
        except FileNotFoundError as err:
            answer = (None, str(err))
        except CheckpointDamaged as err:
            answer = (None, DAMAGED + str(err))
    path, error = from_main(answer)
    if error is not None:
        raise (CheckpointDamaged if error.startswith(DAMAGED) else FileNotFoundError)(error.removeprefix(DAMAGED))
    return None if path is None else Path(path)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, quota, I/O error); the previous one is intact."""


class NonFiniteCheckpointError(RuntimeError):
    """The weights hold NaN or inf: publishing them would let `latest` resume a diverged run."""


class CheckpointWriter:
    """Collective save: every rank writes its parts into a temporary directory; rank 0 publishes it.

    Publishing is fsync (every rank, its node's dirty pages) + one rename + the `latest` pointer, so
    a crash or a full disk at any point leaves `latest` on a complete checkpoint. Ranks agree on
    every outcome (`train.faults.rank_sync`), so a failure on one rank raises on all of them.
    """

    def __init__(
        self, root: Path, keep_last: int, rank: int, barrier: Callable[[], None], keep_every_steps: int = 0
    ) -> None:
        self.root = root
        self.keep_last = keep_last
        self.keep_every_steps = keep_every_steps
        self.rank = rank
        self.barrier = barrier

    def save(
        self,
        step: int,
        write: Callable[[Path], None],
        meta: dict[str, Any],
        weights_finite: Callable[[], bool] = lambda: True,
    ) -> Path:
        """`weights_finite` is a collective check run before anything is written (the publish hook)."""
        if not weights_finite():
            raise NonFiniteCheckpointError(
                f"refusing to save checkpoint {checkpoint_name(step)}: the weights hold NaN or inf; "
                f"`latest` still names {self._latest_name()}, the last healthy checkpoint is "
                f"{last_healthy(self.root) or 'none'}"
            )
        final = self.root / checkpoint_name(step)
        tmp = self.root / f".tmp-{checkpoint_name(step)}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        error = self._attempt(lambda: (write(tmp), fsync_tree(tmp)))
        if not all_ranks(error is None):
            self._fail(step, tmp, error)
        if self.rank == 0:
            error = self._attempt(lambda: self._publish(tmp, final, meta))
        if not all_ranks(error is None):
            self._fail(step, tmp, error)
        if self.rank == 0:
            self._prune(final)
        return final

    @staticmethod
    def _attempt(action: Callable[[], object]) -> Exception | None:
        """Run one phase of the save; its error is returned so that the ranks can agree on it first."""
        try:
            action()
        except Exception as err:  # noqa: BLE001 - any write error; the ranks agree, then all raise
            return err
        return None

    def _publish(self, tmp: Path, final: Path, meta: dict[str, Any]) -> None:
        meta = meta | {"files": file_records(tmp)}  # what a resume verifies (train.checkpoint.files.damage)
        write_synced(tmp / META, json.dumps(meta, indent=2))
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = self.root / f".{LATEST}.tmp"
        write_synced(pointer_tmp, final.name)
        os.replace(pointer_tmp, self.root / LATEST)
        fsync_dir(self.root)

    def _fail(self, step: int, tmp: Path, error: Exception | None) -> None:
        """Remove the partial directory (it would fill the disk further) and raise one readable error."""
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            reason = "another rank failed to write its part (its error names the cause)"
        elif isinstance(error, OSError) and error.errno is not None:
            reason = f"{os.strerror(error.errno)}: {error.filename or tmp}"
        else:
            reason = f"{type(error).__name__}: {error}"
        raise CheckpointWriteError(
            f"checkpoint {checkpoint_name(step)} could not be written under {self.root} ({reason}); "
            f"{describe_free_space(self.root)}. The partial directory was removed and `latest` still names "
            f"{self._latest_name()}. Free space (or lower checkpoint.keep_last, or move run.output_dir) and "
            "resume with checkpoint.resume=latest"
        ) from error

    def _latest_name(self) -> str:
        pointer = self.root / LATEST
        return pointer.read_text().strip() if pointer.is_file() else "no checkpoint"

    def _prune(self, newest: Path) -> None:
        """Keep the newest `keep_last`, the newest healthy one (so a diverging run cannot prune every checkpoint
        worth resuming) and the milestones (step % keep_every_steps == 0); remove the rest."""
        done = sorted(p for p in self.root.glob("step_*") if is_complete(p))
        kept = {*done[-self.keep_last :], newest}
        if (healthy := last_healthy(self.root)) is not None:
            kept.add(healthy)
        if self.keep_every_steps:
            kept |= {p for p in done if int(p.name.removeprefix("step_")) % self.keep_every_steps == 0}
        for old in done:
            if old not in kept:
                shutil.rmtree(old)
                logger.info("removed old checkpoint %s (keep_last=%d)", old, self.keep_last)


def describe_free_space(path: Path) -> str:
    """'1.2 GiB free of 100 GiB on /x' for the filesystem holding `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    full = " (the disk is full)" if usage.free < max(64 << 20, usage.total // 1000) else ""
    return f"{_gib(usage.free)} free of {_gib(usage.total)} on {probe}{full}"


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def fsync_tree(directory: Path) -> None:
    """fsync every file and folder below `directory`, so the rename that publishes it publishes data."""
    for folder, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
