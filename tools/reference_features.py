#!/usr/bin/env python
"""Precompute a reference model's embeddings once per dense row into the index directory (DRRho's cheaper path).

  python tools/reference_features.py --config RECIPE.yaml [key=value ...]      # the recipe's data and loss.reference
  python tools/reference_features.py --reference fastflip:RUN/checkpoints/step_N --data DIR --image-size 56

Writes `reference_features.npy` ([rows, 2, d] float16: image, text; row = the sample's dense row, zeros for rows
that could not be read) and `reference_features.json` (source, sha256, architecture, transform) into the index
directory (data.webdataset.index, else data.path). A recipe then sets `loss.reference_features: precomputed`.

Each image is encoded once, centre-cropped (the evaluation transform), not the augmented view of each step that
the authors' reference sees: a cheaper objective, not theirs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def write_features(loss, data_cfg, out_dir: Path, batch_size: int = 256) -> dict:
    """Encode every readable row of `data_cfg` with `loss.reference`; returns the meta written next to them."""
    import numpy as np
    import torch

    from data.batching import collate, finish, load_sample
    from data.open_source import open_source
    from data.sources import SkipSample
    from data.tokenizer import get_tokenizer
    from data.transforms import EvalTransform
    from train.reference import ReferenceEncoder, load_reference_model
    from train.reference_spec import FEATURES_FILE, FEATURES_META

    model = load_reference_model(loss)
    encoder = ReferenceEncoder(model, loss.reference, torch.device("cpu"), None)
    tokenizer = get_tokenizer(model.config.text.context_length)
    transform = EvalTransform(model.config.vision.image_size)
    source = open_source(data_cfg)
    rows = int(source.num_samples)
    table = np.lib.format.open_memmap(
        out_dir / (FEATURES_FILE + ".tmp.npy"), mode="w+", dtype=np.float16, shape=(rows, 2, model.config.embed_dim)
    )
    skipped: Counter = Counter()
    written, start = 0, time.perf_counter()

    def flush(pixels: list, captions: list, keys: list) -> None:
        batch = finish(collate(pixels, captions, keys, tokenizer, Counter()))
        r1, r2 = encoder(batch["images"], batch["tokens"], batch["index"])
        table[batch["index"].numpy()] = torch.stack([r1, r2], dim=1).to(torch.float16).numpy()
        pixels.clear(), captions.clear(), keys.clear()

    pixels, captions, keys = [], [], []
    for shard, size in enumerate(source.shard_sizes):
        for i in range(int(size)):
            try:
                raw, px = load_sample(source, shard, i, transform, None, rows)
            except SkipSample as e:
                skipped[e.reason] += 1
                continue
            pixels.append(px), captions.append(raw.caption), keys.append(raw.key)
            written += 1
            if len(keys) == batch_size:
                flush(pixels, captions, keys)
    if keys:
        flush(pixels, captions, keys)
    table.flush()
    (out_dir / (FEATURES_FILE + ".tmp.npy")).replace(out_dir / FEATURES_FILE)
    meta = encoder.info | {
        "transform": repr(transform),
        "rows": rows,
        "written": written,
        "skipped": dict(skipped),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out_dir / FEATURES_META).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a recipe: its data section and loss.reference")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides of the recipe")
    p.add_argument("--reference", help="open_clip:PATH, hf:PATH or fastflip:CHECKPOINT (without --config)")
    p.add_argument("--reference-model", help="its architecture for open_clip: / hf: (e.g. ViT-B-32)")
    p.add_argument("--data", help="webdataset shards directory with manifest.json (without --config)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)
    from data.config import DataConfig
    from train.losses.config import LossConfig
    from train.reference_spec import features_dir

    if args.config:
        from train.setup import load_config

        cfg = load_config(args.config, args.overrides)
        loss, data_cfg, out_dir = cfg.loss, cfg.data, features_dir(cfg)
        if loss.reference is None:
            raise SystemExit(f"{args.config}: loss.reference is not set")
    elif args.reference and args.data:
        loss = LossConfig(reference=args.reference, reference_model=args.reference_model)
        loss._validate_reference()
        data_cfg = DataConfig(source="webdataset", path=args.data, image_size=args.image_size)
        out_dir = Path(args.data)
    else:
        raise SystemExit("give --config RECIPE, or --reference SPEC and --data DIR")
    if "://" in str(out_dir):
        raise SystemExit(f"{out_dir}: write the features next to a local index directory")
    meta = write_features(loss, data_cfg, out_dir, args.batch_size)
    print(
        f"{out_dir}: {meta['written']} of {meta['rows']} rows encoded by {meta['source']} ({meta['model']}) in "
        f"{meta['seconds']} s; skipped {meta['skipped'] or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
