"""Zero-shot classification: a text classifier from class names x prompt templates, top-1/top-5 accuracy.

The caller guarantees, for every function here:
- `model` exposes `encode_image(images, normalize)` and `encode_text(tokens, normalize)` and holds the
  full parameters on this rank (unwrapped from DDP; gathered under ZeRO-3, e.g. inside
  `deepspeed.zero.GatheredParameters`; a full copy or `full_tensor()` state under FSDP2). The towers
  run a different number of forwards on different ranks, so a sharded module would hang.
- Sharded (`distributed=True`, or `None` with a process group of > 1 rank): every rank calls the same
  functions in the same order with the same class names and templates, and passes its own part of the
  images (disjoint parts, or parts with an "index" per sample so overlaps are dropped). Results are
  identical on every rank and equal to a single-process run. For rank-0-only evaluation inside a
  process group, pass `distributed=False` on rank 0 and call nothing on the others.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from evaluation.common import cat_rows, eval_mode, rank_of_target, unit_float
from evaluation.distributed import gather_indexed, is_main_process, use_distributed
from evaluation.prompts import Template, render

logger = logging.getLogger(__name__)

TokenizeFn = Callable[[list[str]], torch.Tensor]


def build_zeroshot_classifier(
    model: nn.Module,
    tokenizer: TokenizeFn,
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: torch.device | str,
    batch_size: int = 256,
    distributed: bool | None = None,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Classifier weights [d, C] (float32): per class, the renormalised mean of its normalised prompt embeddings.

    This is OpenAI CLIP's prompt ensembling. `batch_size` is the number of prompts per text forward.
    Sharded, each rank encodes a contiguous block of classes and the blocks are all_gathered.
    """
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    distributed = use_distributed(distributed, group)
    num_classes = len(classnames)
    first, stop = 0, num_classes
    if distributed:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        block = math.ceil(num_classes / world)
        first, stop = min(rank * block, num_classes), min((rank + 1) * block, num_classes)
    prompts = [render(template, classnames[c]) for c in range(first, stop) for template in templates]
    embeddings = []
    with eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start : start + batch_size]).to(device)
            embeddings.append(unit_float(model.encode_text(tokens, normalize=False)))
    if embeddings:
        per_prompt = torch.cat(embeddings)
        weights = unit_float(per_prompt.view(stop - first, len(templates), -1).mean(dim=1))
    else:
        weights = torch.empty(0, device=device)
    _, (weights,) = gather_indexed([weights], torch.arange(first, stop), distributed, group)
    return weights.T.contiguous()


def zeroshot_accuracy(
    model: nn.Module,
    classifier: torch.Tensor,
    batches: Iterable[Mapping[str, torch.Tensor]],
    device: torch.device | str,
    distributed: bool | None = None,
    group: dist.ProcessGroup | None = None,
) -> dict[str, float | int]:
    """Top-1 and top-5 accuracy (fractions in [0, 1]) and the number of images `n`.

    `batches` yield dicts with "images" [B, 3, H, W] and "label" [B] (optionally "index" [B], a global
    sample id that orders and de-duplicates samples across ranks). Top-k counts a sample as correct when
    fewer than k other classes score at least as high as its label (ties count against it). With fewer
    than 5 classes, top-5 is top-C and therefore 1.0: every class is within the first five.
    """
    distributed = use_distributed(distributed, group)
    num_classes = classifier.shape[1]
    classifier = classifier.to(device, torch.float32)
    ranks: list[torch.Tensor] = []
    indices: list[torch.Tensor] = []
    with eval_mode(model):
        for batch in batches:
            labels = torch.as_tensor(batch["label"]).to(device, torch.long)
            if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
            features = unit_float(model.encode_image(batch["images"].to(device, non_blocking=True), normalize=False))
            ranks.append(rank_of_target(features @ classifier, labels))
            if "index" in batch:
                indices.append(torch.as_tensor(batch["index"]).long())
    if indices and len(indices) != len(ranks):
        raise ValueError('either every batch carries an "index" or none does')
    index = cat_rows(indices, torch.long) if indices else None
    _, (rank,) = gather_indexed([cat_rows(ranks, torch.long)], index, distributed, group)
    if rank.numel() == 0:
        raise ValueError("zero-shot evaluation got no images")
    results: dict[str, float | int] = {
        "top1": (rank < 1).double().mean().item(),
        "top5": (rank < 5).double().mean().item(),
        "n": rank.numel(),
    }
    if is_main_process(distributed, group):
        logger.info(
            "zero-shot: top-1 %.2f%%, top-5 %.2f%% on %d images",
            100 * results["top1"],
            100 * results["top5"],
            results["n"],
        )
    return results


def evaluate_zeroshot(
    model: nn.Module,
    tokenizer: TokenizeFn,
    classnames: Sequence[str],
    templates: Sequence[Template],
    batches: Iterable[Mapping[str, torch.Tensor]],
    device: torch.device | str,
    batch_size: int = 256,
    distributed: bool | None = None,
    group: dist.ProcessGroup | None = None,
) -> dict[str, float | int]:
    """Build the classifier from the current weights, then measure accuracy (what in-loop eval calls)."""
    classifier = build_zeroshot_classifier(
        model, tokenizer, classnames, templates, device, batch_size, distributed, group
    )
    return zeroshot_accuracy(model, classifier, batches, device, distributed, group)
