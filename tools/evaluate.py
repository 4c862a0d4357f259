"""Evaluate a checkpoint: zero-shot classification and/or image-text retrieval; prints a table, writes JSON.

  python tools/evaluate.py --checkpoint runs/X/checkpoints/latest --zeroshot SHARDS [--classnames imagenet]
  python tools/evaluate.py --checkpoint runs/X/checkpoints/step_00010000 --retrieval CAPTIONS.csv --out r.json

Any backend's checkpoint works (ddp, fsdp2 DCP, DeepSpeed ZeRO): it is consolidated in this process.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from data.tokenizer import get_tokenizer
from data.url_secrets import refuse_url_secrets
from evaluation import format_table, write_json
from train.checkpoint.checkpointer import find_checkpoint
from train.checkpoint.consolidate import load_model
from train.config import EvalConfig
from train.evaluator import Evaluator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--zeroshot", default="", help="labelled webdataset shards (json 'label' + manifest classes) "
                        "or a class-per-folder image tree (ImageNet val)")
    parser.add_argument("--classnames", default="", help="registry name (imagenet, fashion-mnist); default manifest")
    parser.add_argument("--templates", default="", help="registry name; default = classnames' or generic")
    parser.add_argument("--retrieval", default="", help="caption set: webdataset shards, or a .csv/.tsv file with "
                        "filepath and title columns")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default="", help="write results JSON here")
    args = parser.parse_args()
    try:  # an index or results file would keep a URL's secret
        refuse_url_secrets({"--" + name.replace("_", "-"): value for name, value in vars(args).items()})
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.zeroshot or args.retrieval):
        parser.error("give --zeroshot and/or --retrieval")

    model, meta = load_model(find_checkpoint(args.checkpoint))
    cfg = meta["config"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    eval_cfg = EvalConfig(
        zeroshot=args.zeroshot, classnames=args.classnames, templates=args.templates, retrieval=args.retrieval,
        batch_size=args.batch_size,
    )  # fmt: skip
    tokenizer = get_tokenizer(model.config.text.context_length)
    results = Evaluator(eval_cfg, cfg["data"]["image_size"], device, tokenizer)(model.to(device))
    results = {"step": meta["step"], **results}
    print(f"checkpoint {args.checkpoint} (step {meta['step']}, model {cfg['model']['name']})")
    print(format_table(results))
    if args.out:
        write_json(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
