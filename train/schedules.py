"""Step-indexed schedules: the FLIP phase plan (masked pre-training, unmasked tuning) and its LRs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.config import TrainConfig


def warmup_cosine(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    """Linear warmup from 0 to `peak` over `warmup` steps, then cosine from `peak` to `floor` at `total`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Phase:
    """A contiguous range of global steps [start, end) with one mask ratio and one LR schedule."""

    name: str
    start: int
    end: int
    mask_ratio: float
    lr: float
    lr_min: float
    warmup_steps: int

    @property
    def steps(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class PhasePlan:
    """Pre-training (FLIP mask ratio r) followed by optional unmasked tuning, in one step count."""

    phases: tuple[Phase, ...]

    @property
    def total_steps(self) -> int:
        return self.phases[-1].end

    def phase_at(self, step: int) -> Phase:
        for phase in self.phases:
            if step < phase.end:
                return phase
        return self.phases[-1]

    def lr_at(self, step: int) -> float:
        phase = self.phase_at(step)
        return warmup_cosine(step - phase.start, phase.steps, phase.lr, phase.lr_min, phase.warmup_steps)

    def milestones(self) -> list[str]:
        return [
            f"{p.name}: steps {p.start}-{p.end} ({p.steps}), mask {p.mask_ratio}, lr {p.lr:g} -> {p.lr_min:g}, "
            f"warmup {p.warmup_steps}"
            for p in self.phases
        ]


def build_phase_plan(
    pretrain_steps: int,
    mask_ratio: float,
    lr: float,
    lr_min: float,
    warmup_steps: int,
    tuning_steps: int = 0,
    tuning_lr: float = 0.0,
    tuning_lr_min: float = 0.0,
    tuning_warmup_steps: int = 0,
) -> PhasePlan:
    """The plan for a run; the tuning phase (if any) always runs unmasked."""
    if pretrain_steps < 1:
        raise ValueError(f"pre-training needs at least one step, got {pretrain_steps}")
    phases = [Phase("pretrain", 0, pretrain_steps, mask_ratio, lr, lr_min, warmup_steps)]
    if tuning_steps > 0:
        end = pretrain_steps + tuning_steps
        phases.append(Phase("unmasked_tuning", pretrain_steps, end, 0.0, tuning_lr, tuning_lr_min, tuning_warmup_steps))
    return PhasePlan(tuple(phases))


def phase_plan_for(cfg: TrainConfig, steps_per_epoch: int, global_batch: int) -> PhasePlan:
    """The plan of a run: `epochs` of pre-training (capped by `max_steps`), then `flip.tuning_samples`."""
    pretrain = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        pretrain = min(pretrain, cfg.max_steps)
    tuning = math.ceil(cfg.flip.tuning_samples / global_batch)
    o, f = cfg.optim, cfg.flip
    return build_phase_plan(
        pretrain,
        f.mask_ratio,
        o.lr,
        o.lr_min,
        o.warmup_steps,
        tuning,
        f.tuning_lr,
        f.tuning_lr_min,
        f.tuning_warmup_steps,
    )
