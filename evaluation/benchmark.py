"""One task through LAION's clip_benchmark: its webdataset reader, zero-shot classifier, metrics and templates.

What is ours: opening the ImageFolder, csv and Hugging Face cache layouts as the (image, label) / (image, captions)
datasets its metrics iterate, resolving class names and templates (and saying where each came from), and counting
samples.
clip_benchmark computes the logits and retrieval numbers (recall@k both ways); `mean_recall@1` is DataComp's mean
of the two recall@1. DataComp's metadata-grouped metrics (evaluation.grouped_metrics) and WinoGAViL
(evaluation.winogavil) are the tasks clip_benchmark has no metric for.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from evaluation.grouped_metrics import grouped_metrics
from evaluation.hf_arrow import ArrowSplit
from evaluation.prompts import get_classnames, get_templates, render
from evaluation.suite import Task
from evaluation.winogavil import evaluate_winogavil

RECALL_KS = (1, 5, 10)
CLIP_BENCHMARK_VERSION = "1.6.2"


@dataclass
class Prompts:
    classnames: list[str]
    classnames_source: str
    templates: list[Any]  # str with {c} or {}, or a callable (evaluation.prompts)
    templates_source: str

    def per_class(self) -> dict[str, list[str]]:
        """clip_benchmark's class-specific form {class name: prompts}: any template style renders the same."""
        return {name: [expand(t, name) for t in self.templates] for name in self.classnames}

    def describe(self) -> dict[str, Any]:
        shown = [t if isinstance(t, str) else f"{expand(t, '{c}')} (callable)" for t in self.templates]
        return {
            "classnames": self.classnames,
            "classnames_source": self.classnames_source,
            "templates": shown,
            "templates_source": self.templates_source,
        }


def expand(template: Any, classname: str) -> str:
    """clip_benchmark's `{c}` templates and ours (`{}` or a callable)."""
    if isinstance(template, str) and "{c}" in template:
        return template.replace("{c}", classname)
    return render(template, classname)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _clip_benchmark_default(kind: str, task: Task) -> tuple[list[str] | None, str]:
    """clip_benchmark's packaged English class names / templates for this dataset name (templates fall back to
    ImageNet's, as clip_benchmark does)."""
    import clip_benchmark.datasets as cbd

    table = json.loads((Path(cbd.__file__).parent / f"en_{kind}.json").read_text())
    keys = [task.name, task.name.split("/")[-1]] + (["imagenet1k"] if kind != "classnames" else [])
    for key in keys:
        if key in table:
            return list(table[key]), f"clip_benchmark en_{kind}.json[{key!r}]"
    return None, ""


def _given(value: str | tuple[str, ...], registry: Callable[[str], tuple]) -> tuple[list[Any], str] | None:
    if isinstance(value, tuple):
        return list(value), "suite file"
    if not value:
        return None
    if os.path.isfile(value):
        return _lines(Path(value)), value
    return list(registry(value)), f"registry {value!r}"


def resolve_prompts(task: Task, path: Path, layout: str, folder_classes: list[str] | None = None) -> Prompts:
    """Class names: the task's, else the data's (classnames.txt, folder names), else clip_benchmark's for its name.
    Templates: the task's, else the data's (zeroshot_classification_templates.txt), else clip_benchmark's."""
    names = _given(task.classnames, get_classnames)
    if names is None and layout == "wds" and (path / "classnames.txt").is_file():
        names = _lines(path / "classnames.txt"), str(path / "classnames.txt")
    if names is None and folder_classes:
        names = folder_classes, f"folder names of {path}"
    if names is None:
        names = _clip_benchmark_default("classnames", task)
    if not names or not names[0]:
        raise ValueError(
            f"task {task.name}: no class names (set `classnames` in the suite file, or add {path}/classnames.txt)"
        )
    templates = _given(task.templates, get_templates)
    if templates is None and layout == "wds" and (path / "zeroshot_classification_templates.txt").is_file():
        file = path / "zeroshot_classification_templates.txt"
        templates = _lines(file), str(file)
    if templates is None:
        templates = _clip_benchmark_default("zeroshot_classification_templates", task)
    return Prompts(names[0], names[1], templates[0], templates[1])


class CsvCaptions(Dataset):
    """A caption csv as clip_benchmark's retrieval datasets: (image, [its captions]) per distinct image.

    Rows of one image share its path, or its `image_id` column when there is one (as tools/evaluate.py's
    --retrieval reads it). Relative paths resolve against the csv's folder."""

    def __init__(self, path: Path, transform: Callable, image_key: str, caption_key: str) -> None:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        if not rows or image_key not in rows[0] or caption_key not in rows[0]:
            raise ValueError(f"{path}: needs columns {image_key!r} and {caption_key!r} and at least one row")
        groups: dict[str, tuple[str, list[str]]] = {}
        for row in rows:
            group = row.get("image_id") or row[image_key]
            groups.setdefault(group, (row[image_key], []))[1].append(row[caption_key])
        self.items = list(groups.values())
        self.root, self.transform = path.parent, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[str]]:
        image, captions = self.items[i]
        with Image.open(self.root / image) as img:
            return self.transform(img.convert("RGB") if img.mode not in ("RGB", "L") else img.copy()), captions


class ArrowCaptions(Dataset):
    """A Hugging Face retrieval set in DataComp's hf_cache (Flickr, MSCOCO: an `image` and its `caption` list per
    row) as clip_benchmark's retrieval datasets: (image, [its captions])."""

    def __init__(self, path: Path, transform: Callable) -> None:
        self.split = ArrowSplit(path, ("image", "caption"))
        self.captions = [[c] if isinstance(c, str) else list(c) for c in self.split.values("caption")]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[str]]:
        return self.transform(self.split.image("image", i).convert("RGB")), self.captions[i]


class _Counted:
    """A loader that counts what passes through (clip_benchmark returns metrics, not sample counts)."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.images, self.texts = loader, 0, 0

    def __iter__(self) -> Iterator:
        for images, targets in self.loader:
            self.images += len(images)
            self.texts += sum(len(t) for t in targets) if isinstance(targets, list | tuple) else 0
            yield images, targets


def _loader(task: Task, path: Path, layout: str, transform: Callable, batch_size: int, workers: int):
    """(loader of (images, labels or caption lists), the data's own class names)."""
    from clip_benchmark.datasets.builder import build_wds_dataset, image_captions_collate_fn

    retrieval = task.kind == "retrieval"
    if layout == "wds":
        with warnings.catch_warnings():  # it reads shards in order (no shuffle) but leaves webdataset to say so
            warnings.filterwarnings("ignore", message=r"WebDataset\(shardshuffle=")
            dataset = build_wds_dataset(task.name, transform=transform, split="test", data_dir=str(path))
        is_captions = dataset.classes is None and dataset.templates is None  # dataset_type.txt says retrieval
        if is_captions != retrieval:
            raise ValueError(
                f"task {task.name}: kind {task.kind} but {path}/dataset_type.txt says "
                f"{'retrieval' if is_captions else 'classification'}"
            )
        collate = {"collation_fn": image_captions_collate_fn} if retrieval else {}  # else webdataset's default
        # batch_size=None: the DataLoader only converts (numpy labels -> tensors), as DataComp's wds_eval does
        batches = dataset.batched(batch_size, partial=True, **collate)
        return DataLoader(batches, batch_size=None, num_workers=workers), None
    if layout == "imagefolder":
        if retrieval:
            raise ValueError(f"task {task.name}: an image folder ({path}) has labels, not captions; use kind zeroshot")
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(str(path), transform=transform)
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers), list(dataset.classes)
    if not retrieval:
        raise ValueError(f"task {task.name}: a {layout} ({path}) holds captions; use kind retrieval")
    if layout == "hf-arrow":
        dataset = ArrowCaptions(path, transform)
    else:
        dataset = CsvCaptions(path, transform, task.csv_image_key, task.csv_caption_key)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=image_captions_collate_fn), None


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float | None]:
    """clip_benchmark's zero-shot metrics from its logits. Its own `accuracy` calls float() on a 1-element array,
    which numpy >= 2.4 refuses, so top-k is counted here the same way (torch.topk: ties broken by index); acc5 is
    None below 5 classes (DataComp). Multi-label sets (2-D targets) get its mean average precision."""
    from clip_benchmark.metrics.zeroshot_classification import average_precision_per_class
    from sklearn.metrics import balanced_accuracy_score

    if target.ndim == 2:
        return {"mean_average_precision": average_precision_per_class(logits, target).mean().item()}
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top == target[:, None]
    return {
        "acc1": hits[:, :1].any(dim=1).double().mean().item(),
        "acc5": hits.any(dim=1).double().mean().item() if logits.shape[1] >= 5 else None,
        "mean_per_class_recall": float(balanced_accuracy_score(target.numpy(), logits.argmax(dim=1).numpy())),
    }


def run_task(
    task: Task,
    path: Path,
    layout: str,
    model: Any,
    tokenizer: Callable,
    transform: Callable,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    amp: bool = False,
    prompts: Prompts | None = None,
) -> dict[str, Any]:
    """Metrics of one task (clip_benchmark's names; zero-shot adds `n`, retrieval `n_images`, `n_texts`)."""
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    if task.kind == "winogavil":
        return evaluate_winogavil(path, model, tokenizer, transform, device, batch_size, workers, amp)
    loader, folder_classes = _loader(task, path, layout, transform, batch_size, workers)
    device_type = device.type  # torch.autocast takes "cuda" / "cpu"; the model already sits on `device`
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if task.kind == "zeroshot":
        prompts = prompts or resolve_prompts(task, path, layout, folder_classes)
        if folder_classes is not None and len(folder_classes) != len(prompts.classnames):
            raise ValueError(
                f"task {task.name}: {path} has {len(folder_classes)} class folders but "
                f"{prompts.classnames_source} names {len(prompts.classnames)} classes"
            )
        counted = _Counted(loader)
        classifier = zeroshot_classification.zero_shot_classifier(
            model, tokenizer, prompts.classnames, prompts.per_class(), device_type, amp=amp
        )
        logits, target = zeroshot_classification.run_classification(model, classifier, counted, device_type, amp=amp)
        metrics = classification_metrics(logits, target) | {"n": counted.images}
        if task.grouped:
            if layout != "wds":
                raise ValueError(
                    f"task {task.name}: grouped metrics read per-sample .npy from a webdataset; {path} is a {layout}"
                )
            metrics |= grouped_metrics(task.grouped, logits, target, path, batch_size, workers)
        return metrics
    counted = _Counted(loader)
    metrics = zeroshot_retrieval.evaluate(
        model, counted, tokenizer, device_type, amp=amp, recall_k_list=list(RECALL_KS)
    )
    metrics["mean_recall@1"] = (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    return metrics | {"n_images": counted.images, "n_texts": counted.texts}
