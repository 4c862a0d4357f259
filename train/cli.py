"""Command line of every recipe: `--config FILE.yaml [key.path=value ...] [--dry-run]`."""

from __future__ import annotations

import argparse
import logging
import sys

from train.config import load_config
from train.config_io import ConfigError

logger = logging.getLogger("fastflip")


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="recipe YAML (recipes/configs/*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="resolve the recipe and print its plan; no data")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. optim.lr=5e-4")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, description: str = "Train a CLIP recipe.", model_family: str = "") -> int:
    """Load and validate the config (errors name the file and key), then dry-run or train.

    `model_family` (e.g. "ViT-L-14") is what a named recipe script trains; another model is an error.
    """
    args = parse_args(argv, description)
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if model_family and cfg.model.name != model_family:
        print(
            f"config error: {args.config}: model.name is {cfg.model.name!r} but this script trains {model_family}; "
            "use the matching recipes/fastclip_*.py or recipes/run_recipe.py",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        from train.dry_run import dry_run

        print(dry_run(cfg))
        return 0
    from train.trainer import run

    result = run(cfg)
    logger.info("done: %d steps, %.0f s of training", result["steps"], result["train_seconds"])
    return 0
