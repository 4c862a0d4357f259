"""Preemption: SIGTERM / SIGUSR1 set a flag; the loop agrees on it, saves at the current step and exits.

A scheduler (SLURM time limit or preemption, `--signal`) warns a job with a signal before it kills
it. The handler only records the signal; the training loop reads the flag once per step, and all
ranks agree on it (one tiny all-reduce), so every rank saves the same step. Workers also ask the
kernel for SIGTERM when their launcher dies (PR_SET_PDEATHSIG), so a launcher killed by a signal it
does not handle cannot leave orphaned workers training on.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from types import FrameType

logger = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; the checkpoint of the current step is saved
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class PreemptionFlag:
    """Records the first preemption signal received; `install` / `restore` bracket one run."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        """Handle the preemption signals; Python allows that only in the main thread (elsewhere: no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent (the launcher) exits (Linux only).

    Called first thing in a worker, so the window in which a dying launcher goes unnoticed is the
    interpreter's start-up.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s; workers may outlive a killed launcher", os.strerror(err))
        return
