"""Image-text retrieval: recall@k image->text and text->image, several captions per image.

Caller guarantees are those of `evaluation.zeroshot` (full parameters on every rank; all ranks call
collectively when sharded; `distributed=False` for rank-0-only evaluation inside a process group).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from evaluation.common import cat_rows, eval_mode, rank_of_target, unit_float
from evaluation.distributed import gather_indexed, is_main_process, use_distributed

logger = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalFeatures:
    """Encoded set: images sorted by id, captions sorted by caption index, and which image each caption describes."""

    image_features: torch.Tensor  # [Ni, d] float32, unit norm
    text_features: torch.Tensor  # [Nt, d] float32, unit norm
    text_to_image: torch.Tensor  # [Nt] int64 row in image_features
    image_ids: torch.Tensor  # [Ni] int64, ascending


def encode_retrieval_set(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    device: torch.device | str,
    distributed: bool | None = None,
    group: dist.ProcessGroup | None = None,
) -> RetrievalFeatures:
    """Encode a caption set; each image is encoded once per batch however many captions it has.

    `batches` yield one row per caption: "images" [B, 3, H, W] (the caption's image), "tokens" [B, L],
    "image_id" [B] int (equal ids mean the same image) and optionally "index" [B], a global caption id
    that orders and de-duplicates captions across ranks (without it, rank parts must be disjoint).
    """
    distributed = use_distributed(distributed, group)
    image_ids, image_parts, caption_image_ids, text_parts, caption_indices = [], [], [], [], []
    with eval_mode(model):
        for batch in batches:
            caption_image = torch.as_tensor(batch["image_id"]).long().cpu()
            unique_ids, inverse = torch.unique(caption_image, return_inverse=True)
            rows = torch.arange(len(caption_image))
            first_row = torch.full_like(unique_ids, len(rows)).scatter_reduce_(0, inverse, rows, "amin")
            images = batch["images"][first_row].to(device, non_blocking=True)
            tokens = batch["tokens"].to(device, non_blocking=True)
            image_parts.append(unit_float(model.encode_image(images, normalize=False)))
            text_parts.append(unit_float(model.encode_text(tokens, normalize=False)))
            image_ids.append(unique_ids)
            caption_image_ids.append(caption_image)
            if "index" in batch:
                caption_indices.append(torch.as_tensor(batch["index"]).long())
    if caption_indices and len(caption_indices) != len(text_parts):
        raise ValueError('either every batch carries an "index" or none does')
    image_features = cat_rows(image_parts, torch.float32)
    text_features = cat_rows(text_parts, torch.float32)
    caption_image = cat_rows(caption_image_ids, torch.long).to(text_features.device)
    ids, (image_features,) = gather_indexed([image_features], cat_rows(image_ids, torch.long), distributed, group)
    caption_index = cat_rows(caption_indices, torch.long) if caption_indices else None
    _, (text_features, caption_image) = gather_indexed(
        [text_features, caption_image], caption_index, distributed, group
    )
    if text_features.shape[0] == 0:
        raise ValueError("retrieval evaluation got no captions")
    return RetrievalFeatures(
        image_features=image_features,
        text_features=text_features,
        text_to_image=torch.searchsorted(ids, caption_image.to(ids.device)),
        image_ids=ids,
    )


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, float | int]:
    """Recall@k both ways (fractions in [0, 1]) from unit features and each caption's image row.

    image->text: an image is a hit when one of its captions is among the top k texts, i.e. fewer than k
    other images' captions score at least as high as its best caption. text->image: a caption is a hit
    when fewer than k other images score at least as high as its own. Ties count against the hit.
    Similarities are computed `chunk_size` rows at a time, so the full [Ni, Nt] matrix never exists.
    """
    num_images, num_texts = image_features.shape[0], text_features.shape[0]
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image must have shape [{num_texts}], got {tuple(text_to_image.shape)}")
    text_to_image = text_to_image.to(image_features.device, torch.long)
    if num_texts and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError(f"text_to_image must index the {num_images} images")
    if (torch.bincount(text_to_image, minlength=num_images) == 0).any():
        raise ValueError("every image needs at least one caption")
    if any(k < 1 for k in ks):
        raise ValueError(f"recall@k needs k >= 1, got {list(ks)}")
    image_features, text_features = image_features.float(), text_features.float()

    image_ranks = []
    for start in range(0, num_images, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, num_images), device=image_features.device)
        scores = image_features[rows] @ text_features.T
        positive = text_to_image[None, :] == rows[:, None]
        best_positive = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        image_ranks.append((~(scores < best_positive) & ~positive).sum(dim=1))
    text_ranks = [
        rank_of_target(
            text_features[start : start + chunk_size] @ image_features.T, text_to_image[start : start + chunk_size]
        )
        for start in range(0, num_texts, chunk_size)
    ]
    image_rank, text_rank = torch.cat(image_ranks), torch.cat(text_ranks)

    results: dict[str, float | int] = {}
    for k in ks:
        results[f"image_to_text_R@{k}"] = (image_rank < k).double().mean().item()
    for k in ks:
        results[f"text_to_image_R@{k}"] = (text_rank < k).double().mean().item()
    results["n_images"], results["n_texts"] = num_images, num_texts
    return results


def evaluate_retrieval(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    device: torch.device | str,
    ks: Sequence[int] = DEFAULT_KS,
    distributed: bool | None = None,
    group: dist.ProcessGroup | None = None,
) -> dict[str, float | int]:
    """Encode a caption set (sharded or not over `group`) and compute recall@k; every rank gets the same result."""
    distributed = use_distributed(distributed, group)
    features = encode_retrieval_set(model, batches, device, distributed, group)
    results = retrieval_metrics(features.image_features, features.text_features, features.text_to_image, ks)
    if is_main_process(distributed, group):
        summary = ", ".join(f"{key} {100 * value:.2f}%" for key, value in results.items() if "@" in key)
        logger.info("retrieval on %d images / %d captions: %s", results["n_images"], results["n_texts"], summary)
    return results
