"""Command line of every recipe: `[--config FILE.yaml] [key.path=value ...] [--dry-run]`.

A named entry point (recipes/fastclip_vitl.py, ...) runs its model's flagship recipe when --config is left out.

Exit codes (what a cluster script can act on) are train.faults.exit_codes.ExitCode, listed by --help.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from train.config import read_config
from train.config_io import ConfigError
from train.faults.exit_codes import ExitCode
from train.faults.preemption import die_with_parent, preempt_during_startup
from train.faults.report import report_failure
from train.progress import say
from train.trackers import check_trackers

if TYPE_CHECKING:
    from train.supervise import Report

__all__ = ["exit_process", "main", "parse_args"]


def parse_args(argv: list[str] | None, description: str, default_config: Path | None = None) -> argparse.Namespace:
    """`default_config`: the recipe run when --config is left out (said on stderr); None makes --config required."""
    codes = "\n".join(f"  {code.value:<3} {code.status}" for code in ExitCode)
    parser = argparse.ArgumentParser(
        description=description, epilog=f"exit codes:\n{codes}", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        required=default_config is None,
        default=None,
        help="recipe YAML (recipes/configs/*.yaml)" + (f"; default: {default_config}" if default_config else ""),
    )
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


def main(
    argv: list[str] | None = None,
    description: str = "Train a CLIP recipe.",
    model_family: str = "",
    flagship: Path | None = None,
    report: Report | None = None,
) -> int:
    """Read and check the config (errors name the file and key), then dry-run or train (train.supervise).

    `model_family` (e.g. "ViT-L-14") is what a named FastCLIP recipe script trains; another model or a loss
    outside FASTCLIP_LOSSES is an error. `flagship` is the recipe it runs when --config is left out.
    `report(result)` runs on rank 0 after a run that was not preempted (the demo prints its summary line).
    Known failures end with one readable message and an ExitCode. The recipe's own
    checks run before torch loads, so each rank of a launched job reports a bad value within a second.
    """
    if "LOCAL_RANK" in os.environ:  # started by a launcher: do not outlive it
        die_with_parent()
    args = parse_args(argv, description, flagship)
    try:
        cfg = read_config(args.config, args.overrides)
        try:
            check_trackers(cfg.logging.trackers, Path(cfg.run.output_dir))
        except ValueError as err:
            raise ConfigError(f"{args.config}: {err}") from err
    except ConfigError as err:  # every rank prints it: a launcher that stops the job when rank 1 exits first
        return report_failure(err, ExitCode.CONFIG, ExitCode.CONFIG.status, agreed=False)  # would lose rank 0's
    say(
        f"recipe {_shown(Path(args.config))} read and checked (run {cfg.run.name}, model {cfg.model.name}, "
        f"backend {cfg.backend.name}); loading torch and the backend"
    )
    if "LOCAL_RANK" in os.environ and not args.dry_run:  # a job's rank: a signal while it starts is a preemption
        preempt_during_startup(cfg.run.output_dir)
    from train.supervise import supervise  # noqa: PLC0415 (torch, the model and the backends load here)

    return supervise(args, cfg, model_family, report)  # the checked config: the YAML is read once per launch


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
