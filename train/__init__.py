"""Training: FastCLIP losses and per-sample state, schedules, backends, checkpoints, loop."""

from __future__ import annotations

from typing import Any


def run(config: Any, loader: Any = None) -> dict[str, Any]:
    """Train one run from a TrainConfig (imported lazily so `import train.losses` stays light)."""
    from train.trainer import run as _run

    return _run(config, loader)
