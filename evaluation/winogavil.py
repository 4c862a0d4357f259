"""WinoGAViL as DataComp scores it: pick, among an instance's candidate images, as many as the cue has associations.

DataComp's download keeps WinoGAViL as a Hugging Face dataset (`nlphuji/winogavil`, split test) in
`<data root>/hf_cache`; `datasets` caches it as Arrow stream files,
`hf_cache/nlphuji___winogavil/<config>/<version>/<hash>/winogavil-test*.arrow`. They are read here with pyarrow,
without the dataset's loading script. Each row has the `cue` (a word), its `candidates` (names), the
`associations` (the candidates that fit the cue) and the `candidate_images` (the images, as Arrow structs of
bytes and/or a file path).

Per instance the cue is prompted as "A <cue>" / "An <cue>" (lower-cased), compared with every candidate image by
cosine similarity, and the k most similar images (k = the number of associations) are the prediction. The score
is the Jaccard index of predicted and true sets; DataComp reports its mean over all instances, over those with 5,
6, 10 and 12 candidates, and over 5-6 and 10-12 candidates (`jaccard_score_10-12`, its main metric).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

ARROW_GLOB = "**/winogavil-test*.arrow"
COLUMNS = ("cue", "candidates", "associations", "candidate_images")
Metrics = dict[str, float | int | None]
GROUPS = {"5": (5, 5), "6": (6, 6), "10": (10, 10), "12": (12, 12), "5-6": (5, 6), "10-12": (10, 12)}


@dataclass
class Instance:
    cue: str
    candidates: list[str]
    associations: list[str]
    images: list[dict[str, Any]]  # {"bytes": ..., "path": ...} as `datasets` stores an Image


def arrow_files(path: Path) -> list[Path]:
    """The test split's Arrow files under a task folder (empty: the task is missing)."""
    return sorted(path.glob(ARROW_GLOB)) if path.is_dir() else []


def read_instances(files: list[Path]) -> list[Instance]:
    import pyarrow as pa

    folders = sorted({str(f.parent) for f in files})
    if len(folders) > 1:
        raise ValueError(f"WinoGAViL's test split is cached in {len(folders)} folders ({folders}); `datasets` keeps "
                         "one per download: remove the stale ones")  # fmt: skip
    instances = []
    for file in files:
        with pa.memory_map(str(file)) as source:
            table = pa.ipc.open_stream(source).read_all()
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{file}: a WinoGAViL Arrow file needs columns {COLUMNS}; missing {missing}")
        rows = table.select(list(COLUMNS)).to_pylist()
        instances += [Instance(r["cue"], r["candidates"], r["associations"], r["candidate_images"]) for r in rows]
    if not instances:
        raise ValueError(f"{files}: no WinoGAViL instances")
    return instances


def prompt(cue: str) -> str:
    cue = cue.lower()
    return f"{'An' if cue[0] in 'aeiou' else 'A'} {cue}"


def open_image(image: dict[str, Any], root: Path) -> Image.Image:
    """An image stored by `datasets`: its bytes, else its file (relative paths against the Arrow file's folder)."""
    if image.get("bytes"):
        return Image.open(io.BytesIO(image["bytes"]))
    path = Path(image.get("path") or "")
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise FileNotFoundError(f"WinoGAViL image {image.get('path')!r} has no bytes and no file at {path}; "
                                "download the dataset again into this hf_cache")  # fmt: skip
    return Image.open(path)


class _Images(Dataset):
    def __init__(self, images: list[dict[str, Any]], root: Path, transform: Callable) -> None:
        self.images, self.root, self.transform = images, root, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        with open_image(self.images[i], self.root) as img:
            return self.transform(img.convert("RGB"))


def jaccard(truth: np.ndarray, pred: np.ndarray) -> float:
    """|truth and pred| / |truth or pred| of two boolean masks (0 when both are empty, as scikit-learn's)."""
    union = np.logical_or(truth, pred).sum()
    return float(np.logical_and(truth, pred).sum() / union) if union else 0.0


def scores(instances: list[Instance], image_features: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """Each instance's Jaccard index, from unit features: the images of all instances in order, one cue each."""
    out, start = [], 0
    for i, inst in enumerate(instances):
        n = len(inst.images)
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
def evaluate_winogavil(path: Path, model: Any, tokenizer: Callable, transform: Callable, device: torch.device,
                       batch_size: int = 256, workers: int = 0, amp: bool = False) -> Metrics:  # fmt: skip
    """Score a model (clip_benchmark's interface: encode_image, encode_text) on the WinoGAViL Arrow files."""
    files = arrow_files(path)
    instances = read_instances(files)
    for inst in instances:
        if len(inst.candidates) != len(inst.images):
            raise ValueError(f"{files[0].parent}: cue {inst.cue!r} has {len(inst.candidates)} candidates but "
                             f"{len(inst.images)} images")  # fmt: skip
    images = [image for inst in instances for image in inst.images]
    loader = DataLoader(_Images(images, files[0].parent, transform), batch_size=batch_size, num_workers=workers)
    image_features, text_features = [], []
    with torch.autocast(device.type, enabled=amp):
        for batch in loader:
            image_features.append(F.normalize(model.encode_image(batch.to(device)).float(), dim=-1).cpu())
        prompts = [prompt(inst.cue) for inst in instances]
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start : start + batch_size]).to(device)
            text_features.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    per_instance = scores(instances, torch.cat(image_features), torch.cat(text_features))
    return summarize(per_instance, np.asarray([len(inst.images) for inst in instances]))
