"""What a run says about itself: the trainable parameters and frozen towers (at start and in the dry run), and the
summary a finished run ends with (final loss, last evaluation, final checkpoint, the export command to run next)."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import torch

from data.config import DataConfig
from model import CLIP, CLIPConfig
from model.lock import lock_tower
from train.config import ModelSection

LOSS_WINDOW = 10  # the summary's mean loss covers the last steps (as the checkpoints' health check does)


def trainable_counts(section: ModelSection, model_config: CLIPConfig) -> tuple[int, int]:
    """(parameters, trainable parameters) of the model with the recipe's towers locked, counted on the meta device."""
    with torch.device("meta"):
        model = CLIP(model_config)
    params = sum(p.numel() for p in model.parameters())
    for tower, locked, layers in (
        ("visual", section.lock_image, section.lock_image_unlocked_layers),
        ("text", section.lock_text, section.lock_text_unlocked_layers),
    ):
        if locked:
            lock_tower(model, tower, layers, section.lock_norms)
    return params, sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen_line(section: ModelSection, model_config: CLIPConfig) -> str:
    """'frozen: the image tower except its last 2 blocks and its head; trainable 3.10M of 7.61M parameters'."""
    params, trainable = trainable_counts(section, model_config)
    parts = []
    for tower, locked, layers in (
        ("image", section.lock_image, section.lock_image_unlocked_layers),
        ("text", section.lock_text, section.lock_text_unlocked_layers),
    ):
        if locked:
            parts.append(f"the {tower} tower" + (f" except its last {layers} block(s) and its head" if layers else ""))
    if not parts:
        return f"frozen: nothing; trainable: all {params / 1e6:.2f}M parameters"
    norms = "" if section.lock_norms else " (their LayerNorms stay trainable: model.lock_norms false)"
    return f"frozen: {' and '.join(parts)}{norms}; trainable {trainable / 1e6:.2f}M of {params / 1e6:.2f}M parameters"


def end_summary(
    result: dict[str, Any], checkpoint: Path | None, section: ModelSection, model_config: CLIPConfig
) -> list[str]:
    """The lines a finished run ends with."""
    losses = [v for v in result["losses"] if math.isfinite(v)]
    lines = [f"done: {result['steps']} steps, {result['train_seconds']:.0f} s of training"]
    if losses:
        recent = losses[-LOSS_WINDOW:]
        mean = sum(recent) / len(recent)
        lines.append(f"final loss {losses[-1]:.4f} (mean of the last {len(recent)} steps {mean:.4f})")
    evaluation = result.get("eval") or {}
    if evaluation:
        lines.append(
            f"last evaluation (step {result['steps']}): " + ", ".join(f"{k} {v:.4f}" for k, v in evaluation.items())
        )
    else:
        lines.append("last evaluation: none (set eval.zeroshot or eval.retrieval, or run tools/evaluate.py)")
    if checkpoint is not None:
        latest = checkpoint.parent / "latest"
        export = checkpoint.parent.parent / "export" / "open_clip"
        lines += [
            f"final checkpoint: {checkpoint}",
            f"next: python tools/export.py --checkpoint {shlex.quote(str(latest))} --to open_clip "
            f"--out {shlex.quote(str(export))}   (or --to hf)",
        ]
    lines.append(frozen_line(section, model_config))
    return lines


def describe_data(data: DataConfig) -> str:
    """Where the training pairs come from, in words: the path and index, or each mixed source with its weight."""
    if data.sources:
        return f"{len(data.sources)} mixed sources: " + "; ".join(
            f"{s.path or s.index}" + (f" (index {s.index})" if s.index and s.path else "") + f" x weight {s.weight:g}"
            for s in data.sources
        )
    return f"{data.source} {data.path}" + (f" (index {data.webdataset.index})" if data.webdataset.index else "")
