"""The types at the data seams: what a source reads, what a batch holds, what the trainer consumes.

A batch is a `TypedDict`: a plain dict at run time, so DataLoader workers send it and `pin_memory` pins it
with no custom hooks (a dataclass would need both). Which image fields it carries depends on where the
pixels become images:

  pixels               uint8 [B,H,W,3] (grey: [B,H,W]): host-decoded, normalised on the device (training)
  decoded, boxes,      `data.resize: device`: whole uint8 images back to back, crop boxes, (h, w) sizes
  sizes
  jpeg, jpeg_ends,     `data.decode: device`: JPEG bytes back to back and each one's end (0: not a JPEG, its
  other, boxes, sizes  pixels are in `other`), crop boxes and sizes (data.device_transforms)
  images               float32 [B,3,H,W], already normalised (evaluation batches, fixed test batches)

`data.device_transforms.device_images` turns any of these into the model's input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import numpy as np
import torch

from data.plan import EpochPlan

if TYPE_CHECKING:
    from data.sources import RawSample


class Batch(TypedDict, total=False):
    """One rank's batch (see the module docstring for the image fields); `tokens` and `index` are always there."""

    tokens: torch.Tensor  # int64 [B, context_length]
    index: torch.Tensor  # int64 [B]: the sample's dense row in the per-sample state
    label: torch.Tensor  # int64 [B]: evaluation only (a class, or an image id column)
    pixels: torch.Tensor
    images: torch.Tensor
    decoded: torch.Tensor  # uint8 [sum of h*w*3]
    jpeg: torch.Tensor  # uint8 [total bytes]
    jpeg_ends: torch.Tensor  # int64 [B]
    other: list[torch.Tensor]  # uint8 [h, w, 3] of the samples that are not JPEGs
    boxes: torch.Tensor  # int64 [B, 4]: the crop of each image
    sizes: torch.Tensor  # int64 [B, 2]: (h, w) of each image


class Plan(Protocol):
    """An epoch's order for one rank (data.plan.EpochPlan; data.mixing.MixedPlan for mixed sources)."""

    steps: int

    def batch(self, b: int) -> tuple[np.ndarray, np.ndarray]: ...

    def substitute(self, b: int, j: int, attempt: int) -> tuple[int, int]: ...


class Source(Protocol):
    """Random-access records in (virtual) shards. Every source implements it, mixing included; the defaults here
    are those of a single source whose shards are read in full each epoch.

    `kind` is the data's format ("webdataset", "csv", "hf", "imagefolder"), `num_samples` the size of the
    per-sample table (index space), `shard_sizes` the records per shard, `classes` the class names when known.
    """

    kind: str
    num_samples: int
    shard_sizes: np.ndarray
    classes: list[str] | None
    has_labels: bool
    origin: str  # where the data is (a path, a URL, an index)
    keys_are_rows: bool = True  # each sample's dense row equals its integer source key (row-numbered sources)

    def read(self, shard: int, i: int, need_caption: bool = True) -> RawSample:
        """The record, undecoded; raises data.sources.SkipSample(reason) for one that cannot be used."""
        ...

    @property
    def manifest(self) -> dict:
        """The shard manifest (class names, prompts); {} for sources without one."""
        return {}

    @property
    def samples_per_epoch(self) -> int:
        return int(self.shard_sizes.sum())

    def plan(self, **plan_args: int | bool) -> Plan:
        """One rank's order of an epoch (`plan_args`: data.plan.EpochPlan's keywords)."""
        return EpochPlan(self.shard_sizes, **plan_args)

    def prefetch(self, shards: np.ndarray) -> None:
        """Make the shards of the coming batch local (remote shards); nothing to do for local sources."""
        return None

    def describe(self) -> str:
        return f"{self.kind} {self.origin}"

    def composition(self) -> str:
        """What an epoch takes from each part of a mixed source ("" for a single source)."""
        return ""


class TrainStream(Protocol):
    """A rank's resumable training stream (data.loader.TrainLoader; tests pass fixed batches); a
    torch.distributed.checkpoint `Stateful` (it is not declared a subclass: torch checks `isinstance(x, Stateful)`
    on every object it saves, and a protocol with attributes among Stateful's subclasses makes that check raise).

    Iterating yields the rest of the current epoch; `set_epoch(e)` moves to epoch e's start (kept when e is the
    current epoch, so a stream restored by `load_state_dict` continues mid-epoch). `batches` is how trainers and
    benchmarks read it across epochs.
    """

    num_samples: int  # the per-sample table's size
    steps_per_epoch: int
    keys_are_rows: bool  # see Source.keys_are_rows

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def skipped_counts(self) -> dict[str, int]:
        """Unusable samples skipped so far, by reason."""
        ...

    def close(self) -> None:
        """Stop worker processes."""
        ...


def batches(stream: TrainStream, epoch: int, on_epoch: Callable[[int], None]) -> Iterator[tuple[int, Batch]]:
    """(epoch, batch) from the stream's position in `epoch` on, epoch after epoch, without end. `on_epoch(e)` runs
    as epoch e starts (the loss's per-epoch settings), before its first batch is read."""
    if stream.steps_per_epoch < 1:
        raise ValueError("the training stream has no batches per epoch")
    while True:
        stream.set_epoch(epoch)
        on_epoch(epoch)
        for batch in stream:
            yield epoch, batch
        epoch += 1
