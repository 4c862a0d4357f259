"""The process exit codes of a run and the status.json word for each: one table that train.cli documents, the
supervisor and the preemption handler return, and tools/slurm_train.sbatch acts on. Torch-free."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a training process returns (the sysexits names where one fits: 69 EX_UNAVAILABLE, 75 EX_TEMPFAIL)."""

    COMPLETED = 0
    ERROR = 1  # an unexpected error (its traceback is printed and recorded for the launcher)
    CONFIG = 2  # the YAML, an override, or a resume whose checkpoint config differs (nothing ran)
    DIVERGED = 3  # too many non-finite steps in a row, or non-finite weights at a checkpoint
    CHECKPOINT = 4  # a checkpoint could not be written (full disk, quota): the previous one is intact
    HUNG = 5  # a rank stopped answering: a collective timed out
    DATA_UNAVAILABLE = 69  # remote shards stayed unreachable past the retry bound; the step was saved; requeue
    PREEMPTED = 75  # SIGTERM / SIGUSR1: the current step was saved; requeue with checkpoint.resume=latest

    @property
    def status(self) -> str:
        """The word status.json records for this code (tools/slurm_train.sbatch requeues two of them)."""
        return _STATUS[self]


_STATUS = {
    ExitCode.COMPLETED: "completed",
    ExitCode.ERROR: "failed",
    ExitCode.CONFIG: "config error",
    ExitCode.DIVERGED: "diverged",
    ExitCode.CHECKPOINT: "checkpoint error",
    ExitCode.HUNG: "hung rank",
    ExitCode.DATA_UNAVAILABLE: "data unavailable",
    ExitCode.PREEMPTED: "preempted",
}


def status_of(code: int) -> str:
    """status.json's word for any exit code: a code outside ExitCode is a failure."""
    return ExitCode(code).status if code in ExitCode._value2member_map_ else ExitCode.ERROR.status
