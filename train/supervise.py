"""A recipe's run under supervision: load the setup, dry-run or train, and turn known failures into one line,
an exit code (see train.cli) and `<output_dir>/status.json`. Imported by train.cli once the recipe's config has
passed its own checks, which it hands over (this module loads torch, the model and the backends)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import record

from data.integrity import IndexMismatch, ShardChanged
from data.remote import AccessDenied
from data.retry import DataUnavailable
from train.checkpoint.files import CheckpointDamaged, CheckpointWriteError, NonFiniteCheckpointError, checkpoint_name
from train.config import TrainConfig
from train.config_io import ConfigError
from train.faults.exit_codes import ExitCode
from train.faults.nonfinite import TrainingDiverged
from train.faults.preemption import ignore_preemption_after_training, startup_failed
from train.faults.report import one_line, report_failure
from train.faults.run_lock import RunDirectoryLocked
from train.faults.status import write_status
from train.faults.timeouts import CollectiveTimeout
from train.setup import setup_for
from train.summary import end_summary
from train.trackers import TrackerError

logger = logging.getLogger("fastflip")

# Known failures: exit code, label, and whether every rank raises the same error (then rank 0 alone reports).
KNOWN_ERRORS: tuple[tuple[type[BaseException], ExitCode, str, bool], ...] = (
    (RunDirectoryLocked, ExitCode.CONFIG, "run directory in use", False),
    (CheckpointDamaged, ExitCode.CONFIG, "damaged checkpoint", False),
    (ConfigError, ExitCode.CONFIG, ExitCode.CONFIG.status, False),  # every rank prints it: a launcher that stops
    (FileNotFoundError, ExitCode.CONFIG, "missing file", False),  # the job when rank 1 exits first would otherwise
    (FileExistsError, ExitCode.CONFIG, ExitCode.CONFIG.status, False),  # lose rank 0's line
    (ShardChanged, ExitCode.CONFIG, "changed shard", False),  # raised by the rank (or loader worker) that opened it
    (IndexMismatch, ExitCode.CONFIG, "index mismatch", False),
    (AccessDenied, ExitCode.CONFIG, "access denied", False),
    (DataUnavailable, ExitCode.DATA_UNAVAILABLE, ExitCode.DATA_UNAVAILABLE.status, False),  # before training
    (TrainingDiverged, ExitCode.DIVERGED, ExitCode.DIVERGED.status, True),
    (NonFiniteCheckpointError, ExitCode.DIVERGED, ExitCode.DIVERGED.status, True),
    (CheckpointWriteError, ExitCode.CHECKPOINT, ExitCode.CHECKPOINT.status, True),
    (CollectiveTimeout, ExitCode.HUNG, ExitCode.HUNG.status, False),
    (TrackerError, ExitCode.CONFIG, "tracker error", False),
)


FASTCLIP_LOSSES = ("fastclip", "sogclr", "isogclr")  # what the fastclip_*.py entry points train
Report = Callable[[dict[str, Any]], None]


@record
def supervise(args: argparse.Namespace, cfg: TrainConfig, model_family: str = "", report: Report | None = None) -> int:
    """Run the parsed command line with the config train.cli.main read and checked from it (`cfg`: not read
    again); a known failure returns its exit code."""
    outcome = _Outcome()
    try:
        code = _main(args, cfg, model_family, report, outcome)
    except Exception as err:
        startup_failed()  # a signal from here on must not turn this failure into "preempted"
        for kind, code, label, agreed in KNOWN_ERRORS:
            if isinstance(err, kind):
                if not isinstance(err, RunDirectoryLocked):  # that directory's status belongs to the job holding it
                    everyone = agreed or code in (ExitCode.CONFIG, ExitCode.DATA_UNAVAILABLE)
                    outcome.write(code, f"{label}: {one_line(err)}", everyone=everyone)
                return report_failure(err, code, label, agreed)
        outcome.write(ExitCode.ERROR, f"{type(err).__name__}: {err}", everyone=False)
        raise
    outcome.write(code, outcome.message, everyone=False)
    return code


class _Outcome:
    """What status.json says (train.faults.status): the run directory once the config is known, the step reached."""

    def __init__(self) -> None:
        self.output_dir: str | None = None
        self.trainer: Any = None
        self.message = ""

    def write(self, code: int, message: str, everyone: bool) -> None:
        """Rank 0 writes (every rank when `everyone`: the same outcome, so rank 0 being stopped first loses nothing);
        nothing before the config named a run directory, or after a dry run."""
        if self.output_dir is None or not (everyone or int(os.environ.get("RANK", "0")) == 0):
            return
        step = None if self.trainer is None else self.trainer.step
        try:
            write_status(self.output_dir, code, message, step)
        except OSError as err:  # a full disk must not hide the run's own error
            logger.warning("could not write %s/status.json: %s", self.output_dir, err)


def _main(
    args: argparse.Namespace, cfg: TrainConfig, model_family: str, report: Report | None, outcome: _Outcome
) -> int:
    setup = setup_for(cfg, args.config)
    if model_family and cfg.model.name != model_family:
        raise ConfigError(
            f"{args.config}: model.name is {cfg.model.name!r} but this script trains {model_family}; "
            "use the matching recipes/fastclip_*.py or recipes/run_recipe.py"
        )
    if model_family and cfg.loss.name not in FASTCLIP_LOSSES:
        raise ConfigError(
            f"{args.config}: loss.name is {cfg.loss.name!r} but this script trains FastCLIP "
            f"({', '.join(FASTCLIP_LOSSES)}); launch other losses (the openclip_* twins) with recipes/run_recipe.py"
        )
    if args.dry_run:
        from train.dry_run import dry_run

        print(dry_run(setup))
        return ExitCode.COMPLETED
    from train.trainer import Trainer

    outcome.output_dir = cfg.run.output_dir
    with Trainer(setup) as trainer:
        outcome.trainer = trainer
        result = trainer.fit()
        ignore_preemption_after_training()  # the loop has saved; a late signal must not end the teardown
    if result["data_unavailable"]:  # every rank agreed on it; one rank's log line names the data and the error
        outcome.message = (
            f"data unavailable at step {result['steps']}: checkpoint saved; the remote data stayed "
            "unreachable for data.webdataset.remote_retry_s; resume with checkpoint.resume=latest"
        )
        logger.info(outcome.message)
        return ExitCode.DATA_UNAVAILABLE
    saved = trainer.checkpoints.root / checkpoint_name(result["steps"])
    if result["preempted"]:
        outcome.message = f"preempted at step {result['steps']}: checkpoint saved; resume with checkpoint.resume=latest"
        if trainer.backend.is_main:  # the entry point's last line, before the launcher's own report of the signal
            print(preempted_line(result["steps"], saved, args), file=sys.stderr, flush=True)
        return ExitCode.PREEMPTED
    outcome.message = f"done: {result['steps']} steps"
    if report is not None and trainer.backend.is_main:
        report(result)
    if trainer.backend.is_main:
        for line in end_summary(result, saved if saved.is_dir() else None, cfg.model, setup.model_config):
            logger.info("%s", line)
    return ExitCode.COMPLETED


def preempted_line(step: int, saved: Path, args: argparse.Namespace) -> str:
    """'preempted at step N, saved DIR; resume with: <launcher> <script> --config X ... checkpoint.resume=latest'."""
    if "ACCELERATE_MIXED_PRECISION" in os.environ:  # exported by `accelerate launch` to its ranks
        launcher = "accelerate launch [same options]"
    elif "TORCHELASTIC_RUN_ID" in os.environ:
        launcher = "torchrun [same options]"
    else:
        launcher = "python"
    kept = [o for o in args.overrides if not o.startswith("checkpoint.resume=")]
    command = [
        launcher,
        shlex.quote(sys.argv[0]),
        "--config",
        shlex.quote(args.config),
        *map(shlex.quote, kept),
        "checkpoint.resume=latest",
    ]
    return f"preempted at step {step}, saved {saved}; resume with: {' '.join(command)}"
