"""What a checkpoint holds, in one place: a map of named parts, each saved and restored the same way
on every backend (the `Stateful` style of torch.distributed.checkpoint: `state_dict` / `load_state_dict`).

  model+optimizer  the backend's own format (model.pt + optimizer.pt, a DCP directory, DeepSpeed's files)
  loss             the per-sample state, one shard per rank; re-partitioned on another number of ranks
  temperature      the fp32 global temperature and its optimizer state; replicated, rank 0 writes it
  data             each rank's data-stream position; on another number of ranks, rank 0's epoch restarts
  rng              each rank's RNG states (torch, numpy, python, CUDA, FLIP mask generator); same ranks only
  trainer          the trainer's progress: step, non-finite counters, tracked-run ids; replicated, rank 0 writes it
meta.json, written last by rank 0 (train.checkpoint.checkpointer), describes the checkpoint to people and tools.

Adding something to the checkpoint is one line in `checkpoint_parts`. Every part is tensors and plain
containers and loads with `weights_only=True` (train.checkpoint.trusted): a checkpoint from elsewhere cannot
run code.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.distributed.checkpoint.stateful import Stateful

from train.checkpoint.trusted import load_file


class Part(Protocol):
    """One entry of the map: every rank calls `save` and `load` (collectives are allowed)."""

    def save(self, directory: Path, rank: int) -> None: ...

    def load(self, directory: Path, rank: int, saved_world: int, world: int) -> None: ...


class DirectoryState(Protocol):
    """What a backend offers: model + optimizer written in its own (possibly sharded) format."""

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


@dataclass
class BackendPart:
    backend: DirectoryState

    def save(self, directory: Path, rank: int) -> None:
        self.backend.save(directory)

    def load(self, directory: Path, rank: int, saved_world: int, world: int) -> None:
        self.backend.load(directory)


@dataclass
class ReplicatedPart:
    """The same on every rank: rank 0 writes one file, every rank reads it."""

    state: Stateful
    file: str

    def save(self, directory: Path, rank: int) -> None:
        if rank == 0:
            torch.save(self.state.state_dict(), directory / self.file)

    def load(self, directory: Path, rank: int, saved_world: int, world: int) -> None:
        self.state.load_state_dict(load_file(directory / self.file))


@dataclass
class PerRankPart:
    """One file per rank. On another number of ranks, `on_new_world(rank 0's state)` decides (None: skip)."""

    state: Stateful
    file: str  # with {rank}
    on_new_world: Callable[[Stateful, dict[str, Any]], None] | None = None

    def save(self, directory: Path, rank: int) -> None:
        torch.save(self.state.state_dict(), directory / self.file.format(rank=rank))

    def load(self, directory: Path, rank: int, saved_world: int, world: int) -> None:
        if saved_world == world:
            self.state.load_state_dict(load_file(directory / self.file.format(rank=rank)))
        elif self.on_new_world is not None:
            self.on_new_world(self.state, load_file(directory / self.file.format(rank=0)))


@dataclass
class ShardedPart:
    """One shard per rank; every saved shard is read and re-partitioned when the number of ranks changed."""

    state: Stateful
    file: str  # with {rank}
    repartition: Callable[[list[dict[str, Any]], int], list[dict[str, Any]]]

    def save(self, directory: Path, rank: int) -> None:
        torch.save(self.state.state_dict(), directory / self.file.format(rank=rank))

    def load(self, directory: Path, rank: int, saved_world: int, world: int) -> None:
        if saved_world == world:
            shard = load_file(directory / self.file.format(rank=rank))
        else:
            shards = [load_file(directory / self.file.format(rank=r)) for r in range(saved_world)]
            shard = self.repartition(shards, world)[rank]
        self.state.load_state_dict(shard)


class RNGState:
    """Every random stream a rank draws from, as one Stateful (restoring it makes resume bitwise). numpy's state is
    kept as a tensor and plain numbers, so the file loads with `weights_only=True`."""

    def __init__(self, mask_generator: torch.Generator) -> None:
        self.mask_generator = mask_generator

    def state_dict(self) -> dict[str, Any]:
        state = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(),
            "python": random.getstate(),
            "mask_generator": self.mask_generator.get_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_state_from(state["numpy"]))
        random.setstate(state["python"])
        self.mask_generator.set_state(state["mask_generator"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def _numpy_state() -> tuple[str, torch.Tensor, int, int, float]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state_from(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    keys = keys.numpy().astype(np.uint32) if isinstance(keys, torch.Tensor) else keys  # older checkpoints: ndarray
    return name, keys, pos, has_gauss, cached


def restart_data_from_rank0(loader: Any, state: dict[str, Any]) -> None:
    """Another number of ranks splits samples differently: continue from rank 0's epoch (non-strict)."""
    loader.load_state_dict(state, strict=False)


def checkpoint_parts(
    backend: DirectoryState,
    loss: Stateful,
    repartition_loss: Callable[[list[dict[str, Any]], int], list[dict[str, Any]]],
    temperature: Stateful,
    loader: Stateful,
    mask_generator: torch.Generator,
    trainer: Stateful,
) -> dict[str, Part]:
    """The map: what every checkpoint holds besides meta.json (written last, by the Checkpointer)."""
    return {
        "model+optimizer": BackendPart(backend),
        "loss": ShardedPart(loss, "loss_rank{rank}.pt", repartition_loss),
        "temperature": ReplicatedPart(temperature, "temperature.pt"),
        "data": PerRankPart(loader, "data_rank{rank}.pt", restart_data_from_rank0),
        "rng": PerRankPart(RNGState(mask_generator), "rng_rank{rank}.pt"),
        "trainer": ReplicatedPart(trainer, "trainer.pt"),
    }


def save_parts(parts: dict[str, Part], directory: Path, rank: int) -> None:
    for part in parts.values():
        part.save(directory, rank)


def load_parts(parts: dict[str, Part], directory: Path, rank: int, saved_world: int, world: int) -> None:
    for part in parts.values():
        part.load(directory, rank, saved_world, world)
