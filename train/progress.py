"""Progress lines before the log is configured (reading the recipe, loading torch), in the log's own format, on
rank 0's stderr. Torch-free: train.cli prints them while a launched rank is still importing."""

from __future__ import annotations

import os
import sys
import time

_said: set[str] = set()


def say(message: str, once: bool = False) -> None:
    """Print `message` as an INFO line of the `fastflip` log on rank 0; `once`: at most once per process (a line
    about the config, which is read by the CLI and again by the setup)."""
    if os.environ.get("RANK", "0") != "0" or (once and message in _said):
        return
    _said.add(message)
    print(f"{time.strftime('%H:%M:%S')} INFO fastflip: {message}", file=sys.stderr, flush=True)
