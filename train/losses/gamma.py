"""Inner learning rate gamma of FastCLIP's moving-average estimators u, set once per epoch.

Epoch 0 always uses gamma = 1: every sample is seen for the first time, so u is just the
current batch estimate. Afterwards gamma either jumps to `gamma_min` (`constant`, SogCLR /
iSogCLR) or follows a cosine from 1 down to `gamma_min` over `decay_epochs` epochs and stays
there (`cosine`, FastCLIP). FastCLIP recommends `decay_epochs` of about half the run.
`epochs_rule` (the DRRho-CLIP README's 2025 rule) is the cosine with gamma_min = min(1, 4.177 E^-0.7265)
decayed over all E epochs of the run (`train.setup` sets decay_epochs = E and gamma_min from the rule).
"""

from __future__ import annotations

import math

GAMMA_SCHEDULES = ("cosine", "constant", "epochs_rule")


def epochs_rule_gamma(epochs: int) -> float:
    """gamma_min = min(1, 4.177 * E^-0.7265) for a run of E epochs (DRRho-CLIP README)."""
    if epochs < 1:
        raise ValueError(f"the gamma rule needs epochs >= 1, got {epochs}")
    return min(1.0, 4.177 * epochs**-0.7265)


def gamma_for_epoch(epoch: int, schedule: str, gamma_min: float, decay_epochs: int) -> float:
    """gamma used for every step of `epoch` (0-based)."""
    if schedule not in GAMMA_SCHEDULES:
        raise ValueError(f"gamma_schedule must be one of {GAMMA_SCHEDULES}, got {schedule!r}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epoch == 0:
        return 1.0
    if schedule == "epochs_rule":
        gamma_min = epochs_rule_gamma(decay_epochs)
    if schedule == "constant" or epoch >= decay_epochs:
        return gamma_min
    return 0.5 * (1.0 + math.cos(math.pi * epoch / decay_epochs)) * (1.0 - gamma_min) + gamma_min
