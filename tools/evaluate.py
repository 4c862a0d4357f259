"""Evaluate a checkpoint: zero-shot classification and/or image-text retrieval; prints a table, writes JSON.

  python tools/evaluate.py --checkpoint runs/X/checkpoints/latest --zeroshot SHARDS [--classnames imagenet]
  python tools/evaluate.py --checkpoint runs/X/checkpoints/step_00010000 --retrieval CAPTIONS.csv --out r.json

A task suite through clip_benchmark (DataComp's 38 tasks, ImageNet and variants, or a suite file), on a
checkpoint or an exported open_clip / Hugging Face folder; results cached per (checkpoint, task):
  python tools/evaluate.py --checkpoint runs/X/checkpoints/latest --suite datacomp --data-root /data/datacomp_eval
  python tools/evaluate.py --checkpoint exported/open_clip --suite my_suite.yaml --data-root /data --out results/

Follow a run, evaluating each new checkpoint once beside the training job (stops when the run ends):
  python tools/evaluate.py --watch runs/X --suite imagenet --data-root /data/datacomp_eval --device cuda:7

Any backend's checkpoint works (ddp, fsdp2 DCP, DeepSpeed ZeRO): it is consolidated in this process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from data.tokenizer import get_tokenizer
from data.url_secrets import refuse_argument_secrets
from evaluation import format_table, write_json
from train.checkpoint.consolidate import load_model
from train.config import EvalConfig
from train.evaluator import Evaluator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint",
        help="a step_* dir, a run's checkpoints/ dir or `latest`; with --suite also "
        "an exported open_clip or Hugging Face folder",
    )
    parser.add_argument("--suite", default="", help="datacomp | imagenet | a suite file (YAML/JSON)")
    parser.add_argument(
        "--data-root",
        default="",
        help="where the suite's data lies (DataComp's download_evalsets.py "
        "folder for datacomp / imagenet; suite-file paths are relative to it)",
    )
    parser.add_argument("--watch", default="", metavar="RUN_DIR", help="follow a run (needs --suite)")
    parser.add_argument(
        "--cache",
        default="",
        help="result cache (default ~/.cache/fastflip/eval; RUN_DIR/eval_watch/cache with --watch)",
    )
    parser.add_argument("--device", default="", help="default: cuda if available, else cpu")
    parser.add_argument("--workers", type=int, default=0, help="data loader workers per task")
    parser.add_argument("--amp", action="store_true", help="autocast (clip_benchmark's amp); default float32")
    parser.add_argument("--poll-s", type=float, default=10.0, help="--watch: seconds between looks for checkpoints")
    parser.add_argument(
        "--zeroshot",
        default="",
        help="labelled webdataset shards (json 'label' + manifest classes) "
        "or a class-per-folder image tree (ImageNet val)",
    )
    parser.add_argument("--classnames", default="", help="registry name (imagenet, fashion-mnist); default manifest")
    parser.add_argument("--templates", default="", help="registry name; default = classnames' or generic")
    parser.add_argument(
        "--retrieval",
        default="",
        help="caption set: webdataset shards, or a .csv/.tsv file with filepath and title columns",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--out", default="", help="write results JSON here (with --suite: a folder, one JSON per task and results.json)"
    )
    args = parser.parse_args()
    refuse_argument_secrets(parser, args)  # an index or results file would keep a URL's secret
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.watch or args.suite:
        return run_suite_cli(parser, args)
    if not args.checkpoint:
        parser.error("give --checkpoint (or --watch RUN_DIR --suite ...)")
    if not (args.zeroshot or args.retrieval):
        parser.error("give --zeroshot and/or --retrieval, or --suite")

    model, meta = load_model(args.checkpoint)  # a step directory, latest, checkpoints/ or the run directory
    cfg = meta["config"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    eval_cfg = EvalConfig(
        zeroshot=args.zeroshot,
        classnames=args.classnames,
        templates=args.templates,
        retrieval=args.retrieval,
        batch_size=args.batch_size,
    )
    tokenizer = get_tokenizer(model.config.text.context_length)
    evaluator = Evaluator(eval_cfg, cfg["data"]["image_size"], device, tokenizer)
    if evaluator.prompts_line():
        print(evaluator.prompts_line())
    results = evaluator(model.to(device))
    results = {"step": meta["step"], **results}
    print(f"checkpoint {args.checkpoint} (step {meta['step']}, model {cfg['model']['name']})")
    print(format_table(results))
    if args.out:
        write_json(results, args.out)
    return 0


def run_suite_cli(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from evaluation.cache import ResultCache, default_cache_dir
    from evaluation.models import load_evaluable
    from evaluation.suite import get_suite
    from evaluation.suite_runner import format_suite, run_suite
    from evaluation.watch import WATCH_DIR, Watcher

    if not (args.suite and args.data_root):
        parser.error("--suite and --data-root go together (and --watch needs both)")
    if args.zeroshot or args.retrieval:
        parser.error("--zeroshot / --retrieval are the single-set mode; list those sets in a suite file instead")
    suite = get_suite(args.suite)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.watch:
        if args.checkpoint:
            parser.error("--watch follows a run's checkpoints; leave out --checkpoint")
        run_dir = Path(args.watch)
        if not run_dir.is_dir():
            parser.error(f"--watch {run_dir}: no such run directory")
        watcher = Watcher(run_dir, suite, args.data_root, device, args.batch_size, args.workers, args.amp, args.poll_s)
        if args.cache:
            watcher.cache = ResultCache(args.cache)
        watcher.follow()
        print(f"results: {run_dir / WATCH_DIR / 'results.jsonl'}")
        return 0
    if not args.checkpoint:
        parser.error("--suite needs --checkpoint (or --watch RUN_DIR)")
    evaluable = load_evaluable(args.checkpoint)
    cache = ResultCache(args.cache or default_cache_dir())
    results = run_suite(suite, args.data_root, evaluable, device, cache, args.batch_size, args.workers, args.amp)
    print(f"model {evaluable.description}, suite {suite.name}, data {args.data_root}")
    print(format_suite(results))
    if args.out:
        out = Path(args.out)
        for record in results["tasks"]:
            write_json(record, out / "tasks" / f"{record['task'].replace('/', '-')}.json")
        write_json(results, out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
