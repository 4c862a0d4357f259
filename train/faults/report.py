"""The one-line report of a known failure, for the console and for the launcher's failure summary (the codes:
train.faults.exit_codes). Torch-free: a config error is reported before torch loads."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from train.faults.exit_codes import ExitCode

__all__ = ["one_line", "record_for_launcher", "report_failure"]


def report_failure(err: BaseException, code: ExitCode, label: str, agreed: bool) -> ExitCode:
    """One line per failure (not a traceback per rank): rank 0 prints it, and every rank when the ranks do not
    all raise the same error (`agreed`); the launcher's summary shows it from the error file. Returns `code`."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 or not agreed:
        prefix = "" if rank == 0 else f"[rank {rank}] "
        print(f"{prefix}{label}: {one_line(err)}", file=sys.stderr, flush=True)
    record_for_launcher(err)
    return code


def one_line(err: BaseException) -> str:
    """The error's own message: an error re-raised from a DataLoader worker carries the worker's traceback in its
    message ("Caught X in DataLoader worker process 0. Original Traceback ... X: message"); keep its last line."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    mark = f"{type(err).__name__}: "
    tail = text.rsplit(mark, 1)[-1].strip()
    return tail.splitlines()[-1] if tail else text.strip().splitlines()[0]


def record_for_launcher(err: BaseException) -> None:
    """Write `err` to TORCHELASTIC_ERROR_FILE in torchelastic's error-file format (what its ErrorHandler writes),
    which the launcher reads for its failure summary instead of `error_file: <N/A>`."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {
        "message": {
            "message": f"{type(err).__name__}: {err}",
            "extraInfo": {"py_callstack": traceback.format_exc(), "timestamp": str(int(time.time()))},
        }
    }
    Path(path).write_text(json.dumps(record))
