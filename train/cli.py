"""Command line of every recipe: `[--config FILE.yaml] [key.path=value ...] [--dry-run]`.

A named entry point (recipes/fastclip_vitl.py, ...) runs its model's flagship recipe when --config is left out.

Exit codes (what a cluster script can act on):
  0   finished
  1   an unexpected error (its traceback is printed and recorded for the launcher)
  2   config error: the YAML, an override, or a resume whose checkpoint config differs (nothing ran)
  3   diverged: too many non-finite steps in a row, or non-finite weights at a checkpoint
  4   a checkpoint could not be written (full disk, quota): the previous one is intact
  5   a rank stopped answering: a collective timed out (backend.timeout_s / backend.step_timeout_s)
  75  preempted (SIGTERM / SIGUSR1): the current step was saved; requeue with checkpoint.resume=latest
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from torch.distributed.elastic.multiprocessing.errors import ErrorHandler, record

from train.checkpoint.files import CheckpointDamaged, CheckpointWriteError, NonFiniteCheckpointError
from train.config_io import ConfigError
from train.faults.nonfinite import TrainingDiverged
from train.faults.preemption import die_with_parent
from train.faults.run_lock import RunDirectoryLocked
from train.faults.status import write_status
from train.faults.timeouts import CollectiveTimeout
from train.setup import load_setup

logger = logging.getLogger("fastflip")

EXIT_ERROR, EXIT_CONFIG, EXIT_DIVERGED, EXIT_CHECKPOINT, EXIT_HUNG, EXIT_PREEMPTED = 1, 2, 3, 4, 5, 75
# Known failures: exit code, label, and whether every rank raises the same error (then rank 0 alone reports).
KNOWN_ERRORS: tuple[tuple[type[BaseException], int, str, bool], ...] = (
    (RunDirectoryLocked, EXIT_CONFIG, "run directory in use", False),
    (CheckpointDamaged, EXIT_CONFIG, "damaged checkpoint", False),
    (ConfigError, EXIT_CONFIG, "config error", False),  # every rank prints it: a launcher that stops the job when
    (FileNotFoundError, EXIT_CONFIG, "missing file", False),  # rank 1 exits first would otherwise lose rank 0's line
    (FileExistsError, EXIT_CONFIG, "config error", False),
    (TrainingDiverged, EXIT_DIVERGED, "diverged", True),
    (NonFiniteCheckpointError, EXIT_DIVERGED, "diverged", True),
    (CheckpointWriteError, EXIT_CHECKPOINT, "checkpoint error", True),
    (CollectiveTimeout, EXIT_HUNG, "hung rank", False),
)


FASTCLIP_LOSSES = ("fastclip", "sogclr", "isogclr")  # what the fastclip_*.py entry points train


def parse_args(argv: list[str] | None, description: str, default_config: Path | None = None) -> argparse.Namespace:
    """`default_config`: the recipe run when --config is left out (said on stderr); None makes --config required."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config", required=default_config is None, default=None,
        help="recipe YAML (recipes/configs/*.yaml)" + (f"; default: {default_config}" if default_config else ""),
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="resolve the recipe and print its plan; no data")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. optim.lr=5e-4")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = str(default_config)
        if os.environ.get("RANK", "0") == "0":
            print(f"no --config given: running {_shown(default_config)}", file=sys.stderr, flush=True)
    return args


def _shown(path: Path) -> str:
    """The path as a user in the repository would type it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


Report = Callable[[dict[str, Any]], None]


@record
def main(
    argv: list[str] | None = None, description: str = "Train a CLIP recipe.", model_family: str = "",
    flagship: Path | None = None, report: Report | None = None,
) -> int:  # fmt: skip
    """Load and validate the config (errors name the file and key), then dry-run or train.

    `model_family` (e.g. "ViT-L-14") is what a named FastCLIP recipe script trains; another model or a loss
    outside FASTCLIP_LOSSES is an error. `flagship` is the recipe it runs when --config is left out.
    `report(result)` runs on rank 0 after a run that was not preempted (the demo prints its summary line).
    Known failures end with one readable message and an exit code from the table above.
    """
    if "LOCAL_RANK" in os.environ:  # started by a launcher: do not outlive it
        die_with_parent()
    args = parse_args(argv, description, flagship)
    outcome = _Outcome()
    try:
        code = _main(args, model_family, report, outcome)
    except Exception as err:
        for kind, code, label, agreed in KNOWN_ERRORS:
            if isinstance(err, kind):
                if not isinstance(err, RunDirectoryLocked):  # that directory's status belongs to the job holding it
                    outcome.write(code, f"{label}: {err}", everyone=agreed or code == EXIT_CONFIG)
                return _report(err, code, label, agreed)
        outcome.write(EXIT_ERROR, f"{type(err).__name__}: {err}", everyone=False)
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


def _main(args: argparse.Namespace, model_family: str, report: Report | None, outcome: _Outcome) -> int:
    setup = load_setup(args.config, args.overrides)
    cfg = setup.cfg
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
        return 0
    from train.trainer import Trainer

    outcome.output_dir = cfg.run.output_dir
    with Trainer(setup) as trainer:
        outcome.trainer = trainer
        result = trainer.fit()
    if result["preempted"]:
        outcome.message = f"preempted at step {result['steps']}: checkpoint saved; resume with checkpoint.resume=latest"
        logger.info(outcome.message)
        return EXIT_PREEMPTED
    outcome.message = f"done: {result['steps']} steps"
    if report is not None and trainer.backend.is_main:
        report(result)
    logger.info("done: %d steps, %.0f s of training", result["steps"], result["train_seconds"])
    return 0


def exit_process(code: int) -> NoReturn:
    """End a training process with `code` without the interpreter's teardown (the recipes' `__main__`).

    A gloo worker thread can still be releasing the tensors of the last collective when Python
    finalizes; it then needs the GIL, Python ends the thread inside a C++ destructor, and the process
    aborts (SIGABRT, "terminate called without an active exception") instead of exiting with `code`.
    Everything a run writes is closed by then (checkpoints, metrics, the launcher's error file), so
    only the log streams are flushed here. Multiprocessing's ranks end the same way (`os._exit`).
    Outside a launcher (no LOCAL_RANK: typed on a shell, or run in-process by a test) it is `sys.exit`.
    """
    if "LOCAL_RANK" not in os.environ:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _report(err: Exception, code: int, label: str, agreed: bool) -> int:
    """One line per failure (not a traceback per rank); the launcher's summary shows it from the error file."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 or not agreed:
        prefix = "" if rank == 0 else f"[rank {rank}] "
        print(f"{prefix}{label}: {err}", file=sys.stderr, flush=True)
    ErrorHandler().record_exception(err)
    return code
