"""WinoGAViL as DataComp scores it: pick, among an instance's candidate images, as many as the cue has associations.

DataComp's download keeps WinoGAViL as a Hugging Face dataset (`nlphuji/winogavil`, split test) in
`<data root>/hf_cache`, read here by evaluation.hf_arrow. Each row has the `cue` (a word), its `candidates`
(names), the `associations` (the candidates that fit the cue) and the `candidate_images`.

Per instance the cue is prompted as "A <cue>" / "An <cue>" (lower-cased), compared with every candidate image by
cosine similarity, and the k most similar images (k = the number of associations) are the prediction. The score
is the Jaccard index of predicted and true sets; DataComp reports its mean over all instances, over those with 5,
6, 10 and 12 candidates, and over 5-6 and 10-12 candidates (`jaccard_score_10-12`, its main metric).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from evaluation.hf_arrow import ArrowSplit

COLUMNS = ("cue", "candidates", "associations", "candidate_images")
Metrics = dict[str, float | int | None]
GROUPS = {"5": (5, 5), "6": (6, 6), "10": (10, 10), "12": (12, 12), "5-6": (5, 6), "10-12": (10, 12)}


@dataclass
class Instance:
    cue: str
    candidates: list[str]
    associations: list[str]


def read_instances(split: ArrowSplit) -> list[Instance]:
    """Cue, candidates and associations of every row (the images stay in the Arrow file)."""
    rows = zip(split.values("cue"), split.values("candidates"), split.values("associations"), strict=True)
    instances = [Instance(cue, candidates, associations) for cue, candidates, associations in rows]
    counts = split.table.column("candidate_images").combine_chunks().value_lengths().to_pylist()
    for inst, n in zip(instances, counts, strict=True):
        if len(inst.candidates) != n:
            raise ValueError(f"{split.root}: cue {inst.cue!r} has {len(inst.candidates)} candidates but {n} images")
    return instances


def prompt(cue: str) -> str:
    cue = cue.lower()
    return f"{'An' if cue[0] in 'aeiou' else 'A'} {cue}"


class _Images(Dataset):
    """Every instance's candidate images in order, transformed."""

    def __init__(self, split: ArrowSplit, instances: list[Instance], transform: Callable) -> None:
        self.split, self.transform = split, transform
        self.index = [(row, j) for row, inst in enumerate(instances) for j in range(len(inst.candidates))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        row, j = self.index[i]
        return self.transform(self.split.image("candidate_images", row, j).convert("RGB"))


def jaccard(truth: np.ndarray, pred: np.ndarray) -> float:
    """|truth and pred| / |truth or pred| of two boolean masks (0 when both are empty, as scikit-learn's)."""
    union = np.logical_or(truth, pred).sum()
    return float(np.logical_and(truth, pred).sum() / union) if union else 0.0


def scores(instances: list[Instance], image_features: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """Each instance's Jaccard index, from unit features: the images of all instances in order, one cue each."""
    out, start = [], 0
    for i, inst in enumerate(instances):
        n = len(inst.candidates)
        similarity = (text_features[i : i + 1] @ image_features[start : start + n].T).squeeze(0).numpy()
        start += n
        truth = np.isin(inst.candidates, inst.associations)
        k = int(truth.sum())
        pred = np.isin(np.arange(n), np.argsort(similarity)[n - k :])
        out.append(jaccard(truth, pred))
    return np.asarray(out)


def summarize(instance_scores: np.ndarray, sizes: np.ndarray) -> Metrics:
    """DataComp's means: over all instances and by candidate count (None where no instance has that count)."""
    metrics: Metrics = {"avg_jaccard_score": float(instance_scores.mean())}
    for name, (low, high) in GROUPS.items():
        chosen = instance_scores[(sizes >= low) & (sizes <= high)]
        metrics[f"jaccard_score_{name}"] = float(chosen.mean()) if chosen.size else None
    return metrics | {"n": len(instance_scores)}


@torch.no_grad()
def evaluate_winogavil(
    path: Path,
    model: Any,
    tokenizer: Callable,
    transform: Callable,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    amp: bool = False,
) -> Metrics:
    """Score a model (clip_benchmark's interface: encode_image, encode_text) on the WinoGAViL Arrow files."""
    split = ArrowSplit(path, COLUMNS)
    instances = read_instances(split)
    loader = DataLoader(_Images(split, instances, transform), batch_size=batch_size, num_workers=workers)
    image_features, text_features = [], []
    with torch.autocast(device.type, enabled=amp):
        for batch in loader:
            image_features.append(F.normalize(model.encode_image(batch.to(device)).float(), dim=-1).cpu())
        prompts = [prompt(inst.cue) for inst in instances]
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start : start + batch_size]).to(device)
            text_features.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    per_instance = scores(instances, torch.cat(image_features), torch.cat(text_features))
    return summarize(per_instance, np.asarray([len(inst.candidates) for inst in instances]))
