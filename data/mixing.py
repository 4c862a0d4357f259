"""Several shard sources in one run, mixed with weights (`data.sources`).

Each source keeps its own dense rows, moved past the previous sources' (one per-sample table:
source 0 rows 0..N0-1, source 1 rows N0..N0+N1-1, ...). An epoch takes n_i = round(weight_i * T_i)
samples from source i (T_i its samples): floor(n_i / T_i) whole passes over its shards, then whole
shards in a per-(seed, epoch, source) random order until n_i is reached, the last one cut short.
So weight 2 shows every sample twice per epoch, weight 0.5 half the samples (other halves in
other epochs), and the epoch length is the same every epoch. The epoch's pieces ("segments":
shard, start, length) are then ordered, split across ranks and shuffled exactly like shards
(data/plan.py), so the stream stays a pure function of (seed, epoch, ...) and resumes exactly.
"""

from __future__ import annotations

import logging

import numpy as np

from data.config import DataConfig
from data.plan import EpochPlan
from data.sources import RawSample, ShardSource
from data.types import Source

log = logging.getLogger(__name__)
_MIX = 3  # stream tag for the seeded generator (data/plan.py uses 1 and 2)


class MixedSource(Source):
    """The shards of all sources as one list; `segments(seed, epoch)` is an epoch's weighted composition."""

    kind = "webdataset"
    has_labels = False
    classes = None
    origin = "mixed sources"

    def __init__(self, cfg: DataConfig) -> None:
        self.parts: list[ShardSource] = []
        offset = 0
        for spec in cfg.sources:
            part = ShardSource(cfg, spec.path, spec.index, key_offset=offset)
            self.parts.append(part)
            offset += part.shardset.num_samples
        self.num_samples = cfg.num_samples or offset
        self.weights = [spec.weight for spec in cfg.sources]
        self.names = [spec.path or spec.index for spec in cfg.sources]
        self._where = [(p, s) for p, part in enumerate(self.parts) for s in range(len(part.shard_sizes))]
        self.shard_sizes = np.concatenate([part.shard_sizes for part in self.parts])
        self.first_shard = np.cumsum([0] + [len(part.shard_sizes) for part in self.parts])
        self.per_source = [
            int(round(w * int(part.shard_sizes.sum()))) for w, part in zip(self.weights, self.parts, strict=True)
        ]
        self.keys_are_rows = all(part.keys_are_rows for part in self.parts)

    @property
    def samples_per_epoch(self) -> int:
        return sum(self.per_source)

    def plan(self, **plan_args: int | bool) -> MixedPlan:
        return MixedPlan(self, **plan_args)

    def describe(self) -> str:
        return f"{len(self.parts)} mixed webdataset sources"

    def composition(self) -> str:
        parts = zip(self.names, self.parts, self.weights, self.per_source, strict=True)
        return "; ".join(
            f"{name}: {int(part.shard_sizes.sum())} samples x weight {w:g} -> {n} per epoch"
            for name, part, w, n in parts
        )

    def segments(self, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(global shard, start, length) of every piece of this epoch, sources in order."""
        shards, starts, lengths = [], [], []
        for p, part in enumerate(self.parts):
            sizes, first = part.shard_sizes, int(self.first_shard[p])
            total, want = int(sizes.sum()), self.per_source[p]
            if total == 0 or want == 0:
                continue
            ids = np.flatnonzero(sizes > 0)
            for _ in range(want // total):
                shards += (first + ids).tolist()
                starts += [0] * len(ids)
                lengths += sizes[ids].tolist()
            left = want % total
            order = np.random.default_rng([seed, epoch, _MIX, p]).permutation(ids)
            for s in order:
                if left <= 0:
                    break
                take = min(int(sizes[s]), left)
                shards.append(first + int(s))
                starts.append(0)
                lengths.append(take)
                left -= take
        return np.array(shards, dtype=np.int64), np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64)

    def read(self, shard: int, i: int, need_caption: bool = True) -> RawSample:
        p, s = self._where[shard]
        return self.parts[p].read(s, i, need_caption)

    def prefetch(self, shards) -> None:
        for p, part in enumerate(self.parts):
            part.prefetch([self._where[int(s)][1] for s in shards if self._where[int(s)][0] == p])


class MixedPlan:
    """An EpochPlan over an epoch's segments, answering in (global shard, position in shard)."""

    def __init__(self, source: MixedSource, **plan_args) -> None:
        self.seg_shard, self.seg_start, lengths = source.segments(plan_args["seed"], plan_args["epoch"])
        self.plan = EpochPlan(lengths, **plan_args)
        self.steps = self.plan.steps

    def batch(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        seg, pos = self.plan.batch(b)
        return self.seg_shard[seg], self.seg_start[seg] + pos

    def substitute(self, b: int, j: int, attempt: int) -> tuple[int, int]:
        seg, pos = self.plan.substitute(b, j, attempt)
        return int(self.seg_shard[seg]), int(self.seg_start[seg] + pos)
