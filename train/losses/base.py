"""What every contrastive loss returns and offers the trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LossOutput:
    """loss: scalar to call backward on (per rank; after the backend AVERAGES parameter
    gradients over ranks they equal the exact gradient of the global objective).
    value: detached objective value on the global batch, identical on all ranks (logging).
    stats: metrics under their final names (schedule/gamma, state/log_u1_mean, ...), identical on
    all ranks: host floats, or device tensors that the trainer reads only on logging steps.
    """

    loss: torch.Tensor
    value: torch.Tensor
    stats: dict[str, float | torch.Tensor] = field(default_factory=dict)


class ContrastiveLoss(ABC):
    """A loss over the global batch of its data-parallel `group` (None: the default group when initialised).

    Deliberately not an nn.Module: it has no parameters for a backend to wrap or shard, and
    its state (per-sample tables) is saved per rank by the trainer.
    """

    gamma: float | None = None
    epoch: int = 0

    @abstractmethod
    def __call__(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        index: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> LossOutput:
        """Local L2-normalised features [B, d] (with autograd), int64 sample keys [B], and the
        model's logit_scale parameter [1] (= ln(1/tau)); `logit_bias` [1]: SigLIP's learnable bias
        (`GlobalTemperature.logit_bias`; the other losses have none and ignore it)."""

    def set_epoch(self, epoch: int) -> None:
        """Per-epoch settings (gamma); call before the epoch's first step, also after resuming."""
        self.epoch = epoch

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """This rank's state; `repartition_loss_states` re-splits K of them for another K."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned on this rank (or a re-partitioned shard)."""
