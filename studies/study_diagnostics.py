"""What the study measures besides recall: eval curves and trajectories from a run's metrics.jsonl, the
staleness of FastCLIP's per-sample estimates u, and how many in-batch negatives are false negatives.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from train.checkpoint.trusted import load_file

TRACKED = ("schedule/tau", "schedule/gamma", "train/loss", "state/log_u1_mean", "state/log_u2_mean")


def parse_metrics(path: Path, batch: int, steps_per_epoch: int) -> dict:
    """Eval points with samples seen and training seconds, and per-epoch trajectories of `TRACKED`.

    A logged row's samples/s covers the steps since the previous logged row (the trainer restarts that window
    after an in-loop eval or checkpoint), so evaluation stays off the wall-clock axis.
    """
    steps: dict[int, dict] = {}
    evals: list[dict] = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "train/loss" in row:
            steps[row["step"]] = row
        elif any(k.startswith("eval/") for k in row):
            evals.append({"step": row["step"]} | {k[5:]: v for k, v in row.items() if k.startswith("eval/")})
    if not steps or not evals:
        raise ValueError(f"{path}: no training steps or no eval results logged")
    clock, previous, elapsed = 0.0, 0, {0: 0.0}
    for s in sorted(steps):
        clock += (s - previous) * batch / steps[s]["perf/samples_per_s"]
        elapsed[s], previous = clock, s
    for e in evals:
        e["samples"] = e["step"] * batch
        e["train_seconds"] = elapsed[max(s for s in elapsed if s <= e["step"])]
    trajectory = []
    for end in range(steps_per_epoch, max(steps) + 1, steps_per_epoch):
        if end in steps:
            trajectory.append(
                {"epoch": end // steps_per_epoch, "step": end} | {k: steps[end][k] for k in TRACKED if k in steps[end]}
            )
    return {"evals": evals, "final": evals[-1], "train_seconds": clock, "steps": max(steps), "trajectory": trajectory}


def _cells(train_dir: Path) -> np.ndarray:
    """The four cell labels of every training mosaic (json "cells"), in key order."""
    rows: dict[int, list[int]] = {}
    for tar_path in sorted(train_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            for member in tf:
                if member.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(member).read())
                    rows[meta["key"]] = meta["cells"]
    return np.array([rows[k] for k in sorted(rows)])


def false_negative_rates(train_dir: Path, batch: int) -> dict:
    """Chance that an in-batch negative shares the anchor's caption (all 4 cells) or 3 of 4 cells, against
    Fashion-MNIST with class-name captions (same class), for uniformly drawn batches."""
    cells = _cells(train_dir)
    n = len(cells)
    same = (cells[:, None, :] == cells[None, :, :]).sum(-1)
    off_diagonal = n * (n - 1)
    p_exact = float(((same == 4).sum() - n) / off_diagonal)
    p_three = float((same >= 3).sum() - n) / off_diagonal
    labels = cells.reshape(-1)  # the items inside the mosaics, as single-item captions would see them
    counts = Counter(labels.tolist())
    total = len(labels)
    p_class = sum(c * (c - 1) for c in counts.values()) / (total * (total - 1))
    return {
        "train_mosaics": n,
        "distinct_train_captions": len({tuple(r) for r in cells.tolist()}),
        "batch": batch,
        "p_negative_same_caption": p_exact,
        "p_negative_3_of_4_cells": p_three,
        "p_negative_same_class_single_items": p_class,
        "false_negatives_per_anchor_in_batch": {"mosaic": p_exact * (batch - 1), "single_items": p_class * (batch - 1)},
    }


def _features(checkpoint: Path, train_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    from data.eval_loader import build_eval_loader  # noqa: PLC0415 (heavy imports only when diagnosing)
    from data.tokenizer import get_tokenizer  # noqa: PLC0415
    from evaluation.common import eval_mode  # noqa: PLC0415
    from train.checkpoint.consolidate import load_model  # noqa: PLC0415

    model, _ = load_model(checkpoint)
    tokenizer = get_tokenizer(model.config.text.context_length)
    loader = build_eval_loader(str(train_dir), model.config.vision.image_size, 500, tokenizer=tokenizer, label_key=None)
    images, texts, keys = [], [], []
    with eval_mode(model):
        for b in loader:
            images.append(model.encode_image(b["images"], normalize=True))
            texts.append(model.encode_text(b["tokens"], normalize=True))
            keys.append(b["index"])
    scale = float(model.logit_scale.detach().exp().reshape(-1)[0])  # the trained one: load_model reads temperature.pt
    return torch.cat(images).double(), torch.cat(texts).double(), torch.cat(keys), scale


def _log_g(diff: torch.Tensor) -> torch.Tensor:
    """log g_i = log mean_{j != i} exp(diff_ij) over the whole dataset (what u_i estimates)."""
    masked = diff.clone()
    masked.fill_diagonal_(-math.inf)
    return torch.logsumexp(masked, dim=1) - math.log(diff.shape[1] - 1)


def _log_g_batch(diff: torch.Tensor, rows: torch.Tensor, batches: torch.Tensor) -> torch.Tensor:
    """log g_i over the other members of row i's batch (`batches` [R, b] holds each row's batch, itself too)."""
    picked = diff[rows[:, None], batches].masked_fill(batches == rows[:, None], -math.inf)
    return torch.logsumexp(picked, dim=1) - math.log(batches.shape[1] - 1)


def u_staleness(checkpoint_root: Path, train_dir: Path, batch: int, seed: int) -> list[dict]:
    """Per saved epoch: how far the stored u_i are from the exact dataset-wide g_i of the current model,
    next to the error of a fresh single-batch estimate (what a mini-batch loss uses), in |log| units."""
    generator = torch.Generator().manual_seed(seed)
    results = []
    for ckpt in sorted(checkpoint_root.glob("step_*")):
        img, txt, keys, scale = _features(ckpt, train_dir)
        state = load_file(ckpt / "loss_rank0.pt")["sample_state"]
        table, columns = state["table"].double(), state["columns"]
        n = len(keys)
        sim = img @ txt.T
        pos = sim.diagonal()
        perm = torch.randperm(n, generator=generator)
        usable = n - n % batch
        groups = perm[:usable].view(-1, batch)
        row_batch = torch.empty(n, dtype=torch.long)
        row_batch[perm[:usable]] = torch.arange(usable) // batch
        out = {"step": int(ckpt.name.split("_")[1]), "tau": 1 / scale}
        for side, diff in (("1", scale * (sim - pos[:, None])), ("2", scale * (sim.T - pos[:, None]))):
            exact = _log_g(diff)
            log_u = table[keys - state["start"], columns.index(f"log_u{side}")]
            rows = perm[:usable]
            batch_est = _log_g_batch(diff, rows, groups[row_batch[rows]])
            out[f"median_abs_log_u_over_g{side}"] = float((log_u - exact).abs().median())
            out[f"mean_log_u_over_g{side}"] = float((log_u - exact).mean())
            out[f"median_abs_log_batch_over_g{side}"] = float((batch_est - exact[rows]).abs().median())
        results.append(out)
    return results
