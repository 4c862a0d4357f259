"""Preemption signals set a flag; a worker whose launcher dies gets SIGTERM instead of training on as an orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ranks import REPO
from train.faults.preemption import PREEMPTION_SIGNALS, PreemptionFlag

WORKER = """
import sys, time
from pathlib import Path
from train.faults.preemption import PreemptionFlag, die_with_parent
die_with_parent()
flag = PreemptionFlag()
flag.install()
out = Path(sys.argv[1])
(out / "ready").write_text("")
deadline = time.monotonic() + 60
while flag.signal is None and time.monotonic() < deadline:
    time.sleep(0.05)
(out / "signal").write_text(str(flag.signal))
"""
LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(120)
"""


@pytest.mark.parametrize("sig", PREEMPTION_SIGNALS)
def test_preemption_signals_set_the_flag_and_handlers_are_restored(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    flag = PreemptionFlag()
    flag.install()
    try:
        assert flag.signal is None
        os.kill(os.getpid(), sig)
        assert flag.signal == sig
    finally:
        flag.restore()
    assert signal.getsignal(sig) is before


def test_worker_gets_sigterm_when_its_launcher_is_killed(tmp_path: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, WORKER, str(tmp_path)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.05)
        launcher.kill()  # SIGKILL: the launcher cannot forward anything
        launcher.wait()
        deadline = time.monotonic() + 20
        while not (tmp_path / "signal").exists():
            assert time.monotonic() < deadline, "the orphaned worker was never told its launcher died"
            time.sleep(0.05)
        assert (tmp_path / "signal").read_text() == str(int(signal.SIGTERM))
    finally:
        launcher.kill()
