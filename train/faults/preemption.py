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

from train.faults.exit_codes import ExitCode
from train.faults.lock_probe import held_elsewhere
from train.faults.status import write_status

logger = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class PreemptionFlag:
    """Records the first preemption signal received; `install` / `restore` bracket one run."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.data_unavailable: str | None = None  # why this rank's remote data stayed unreachable (data/retry.py)
        self._previous: dict[int, object] = {}

    @property
    def code(self) -> float:
        """What the ranks agree on (MAX over ranks): 0 train on, 1 a preemption signal, 2 data unavailable."""
        return 2.0 if self.data_unavailable is not None else 1.0 if self.signal is not None else 0.0

    def install(self) -> None:
        """Handle the preemption signals; Python allows that only in the main thread (elsewhere: no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        _startup.clear()  # start-up is over: the handler restored after training acts as the default again

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


_startup: list[str] = []  # the run directory while the start-up handler is installed
STARTUP_MESSAGE = (
    "preempted during start-up, before training began: nothing new to save; requeue with "
    "checkpoint.resume=latest (it resumes from the last checkpoint, if any)"
)


def preempt_during_startup(output_dir: str) -> None:
    """From the moment the config names the run directory until the training loop takes the signals over
    (PreemptionFlag.install): a preemption signal writes status.json "preempted" (no step) and ends the process
    with ExitCode.PREEMPTED, so a batch script can requeue a job stopped while its ranks start. Main thread only.
    It never replaces a status.json (a rank that failed in setup wrote the real outcome, and the launcher then
    signals the others) nor writes into a directory whose lock another job holds."""

    def stop(signum: int, frame: FrameType | None) -> None:
        if not _startup:  # restored after training failed (PreemptionFlag.restore): the signal's default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        try:
            if not held_elsewhere(output_dir):  # another job's directory: its status is not ours to write
                write_status(output_dir, ExitCode.PREEMPTED, STARTUP_MESSAGE, None, replace=False)  # a failure stays
            print(f"{STARTUP_MESSAGE} (signal {signal.Signals(signum).name})", file=sys.stderr, flush=True)
        finally:
            os._exit(ExitCode.PREEMPTED)

    if threading.current_thread() is threading.main_thread():
        for sig in PREEMPTION_SIGNALS:
            signal.signal(sig, stop)
        _startup.append(output_dir)


def startup_failed() -> None:
    """This rank's setup raised (and writes its own status): a later signal takes its default action."""
    _startup.clear()


def ignore_preemption_after_training() -> None:
    """Once the training loop has ended (and saved), a late signal must not end a finished run's teardown: the
    run ends on its own with its own status."""
    if threading.current_thread() is threading.main_thread() and "LOCAL_RANK" in os.environ:
        for sig in PREEMPTION_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
