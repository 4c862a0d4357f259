"""Checkpoint directories: written under a temporary name, renamed when complete, `latest` pointer, keep N.

Layout of one checkpoint `step_00001234/`:
  meta.json              step, epoch, world size, backend, the resolved config (written last by rank 0)
  model / optimizer      in the backend's own format (model.pt + optimizer.pt, dcp/, deepspeed/)
  rank{r}.pt             per rank: RNG states, data-stream position
  loss_rank{r}.pt        per rank: the loss's per-sample state shard (re-partitioned on a new K)
A crash while writing leaves only a `.tmp-*` directory: `latest` still names the previous one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

META = "meta.json"
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / META).is_file()


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / META).read_text())


def resolve_resume(root: Path, resume: str | None) -> Path | None:
    """`None` -> no resume; `latest` -> the checkpoint `latest` names (without a pointer: the newest complete
    one, or None on a fresh run); else a path."""
    if resume is None:
        return None
    if resume == LATEST:
        pointer = root / LATEST
        if not pointer.is_file():  # e.g. killed between rename and pointer update: newest complete one
            done = sorted(p for p in root.glob("step_*") if is_complete(p))
            return done[-1] if done else None
        path = root / pointer.read_text().strip()
        if not is_complete(path):
            raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint ({META} missing)")
        return path
    path = Path(resume)
    if not is_complete(path):
        raise FileNotFoundError(
            f"checkpoint.resume: {path} is not a complete checkpoint directory ({META} missing); "
            f"use 'latest' or a step_* directory under {root}"
        )
    return path


class CheckpointWriter:
    """Collective save: every rank writes its parts into the temporary directory, rank 0 publishes it."""

    def __init__(self, root: Path, keep_last: int, rank: int, barrier: Callable[[], None]) -> None:
        self.root = root
        self.keep_last = keep_last
        self.rank = rank
        self.barrier = barrier

    def save(self, step: int, write: Callable[[Path], None], meta: dict[str, Any]) -> Path:
        final = self.root / checkpoint_name(step)
        tmp = self.root / f".tmp-{checkpoint_name(step)}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        write(tmp)
        self.barrier()
        if self.rank == 0:
            (tmp / META).write_text(json.dumps(meta, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            pointer_tmp = self.root / f".{LATEST}.tmp"
            pointer_tmp.write_text(final.name)
            os.replace(pointer_tmp, self.root / LATEST)
            self._prune(final)
        self.barrier()
        return final

    def _prune(self, newest: Path) -> None:
        done = sorted(p for p in self.root.glob("step_*") if is_complete(p))
        for old in done[: max(0, len(done) - self.keep_last)]:
            if old != newest:
                shutil.rmtree(old)
                logger.info("removed old checkpoint %s (keep_last=%d)", old, self.keep_last)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
