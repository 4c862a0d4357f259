"""csv caption sets evaluate as documented: in the training loop (eval.retrieval) and in tools/evaluate.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data_fixtures import caption_of, png
from tests.ranks import REPO, run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config
from train.config import EvalConfig
from train.evaluator import eval_source

PAIRS = 6


def _caption_csv(directory: Path) -> Path:
    """PAIRS images (constant colours) with distinct captions, as filepath,title rows."""
    (directory / "images").mkdir(parents=True)
    rows = [("filepath", "title")]
    for key in range(PAIRS):
        (directory / "images" / f"{key}.png").write_bytes(png(key, size=32))
        rows.append((f"images/{key}.png", caption_of(key)))
    path = directory / "captions.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def _train(rank: int, world_size: int, out_dir: str, retrieval: str) -> dict:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir)
    cfg.eval = EvalConfig(retrieval=retrieval, every_steps=1, batch_size=4)
    return Trainer(cfg, FixedBatches(8, rank, world_size, steps=2)).fit()["eval"]


def test_eval_source_follows_the_path() -> None:
    assert eval_source("/data/coco/captions.csv") == "csv" and eval_source("pairs.TSV") == "csv"
    assert eval_source("/data/shards") == "webdataset" and eval_source("/data/{000..009}.tar") == "webdataset"


@pytest.mark.slow  # spawns a training rank and a tools/evaluate.py subprocess
@pytest.mark.slow
def test_csv_retrieval_in_the_loop_and_in_evaluate(tmp_path: Path) -> None:
    """Before the fix both failed with "no .tar shards match": the csv was opened as webdataset shards."""
    captions = _caption_csv(tmp_path / "set")
    final = run_on_ranks(_train, 1, (str(tmp_path / "run"), str(captions)))[0]
    assert (final["n_images"], final["n_texts"]) == (PAIRS, PAIRS)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/n_images" in r] == [1, 2], "in-loop eval at step 1 and at the end"

    out = tmp_path / "eval.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "evaluate.py"),
            "--checkpoint",
            str(tmp_path / "run" / "checkpoints"),
            "--retrieval",
            str(captions),
            "--out",
            str(out),
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    alone = json.loads(out.read_text())
    for key in ("text_to_image_R@1", "image_to_text_R@5", "n_images"):
        assert alone[key] == pytest.approx(final[key], abs=1e-9), key
