"""DataComp's metadata-grouped metrics for the WILDS and fairness sets, from zero-shot logits and per-sample metadata.

DataComp's download stores these sets in clip_benchmark's webdataset layout with one more file per sample,
`<key>.npy`: an integer vector of metadata fields (its eval_utils name them per set). The metrics here are the
ones its evaluators report through the `wilds` package (computed here directly, without that package):
- `iwildcam`: accuracy `acc_avg`, and over the classes present in the labels, macro recall `recall-macro_all` and
  macro F1 `F1-macro_all` (scikit-learn's, as WILDS calls it); no metadata needed;
- `fmow` (fields region, year, y): `acc_avg`, accuracy per year and per region, `acc_worst_year` and
  `acc_worst_region`: the lowest accuracy over the regions that have samples. DataComp's evaluator carries no names
  for the region numbers, so its skip of WILDS' "Other" region never matches: every non-empty region counts;
- `dollar_street` (fields income_ds, income_meta, region): top-5 accuracy `acc_top5_avg`, per income group
  (`income_ds`) and its worst group `acc_top5_wg`;
- `geode` (fields region, country): `acc_avg`, per region and the worst region `acc_wg`.
A group's key is `<metric>_<field>:<value>` with `count_<field>:<value>` beside it, as WILDS names them; groups
without samples are left out (WILDS reports them as 0 or nan). Predictions are the argmax of the logits, the top 5
torch.topk's, as DataComp takes them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Metrics = dict[str, float | int]


def group_means(values: np.ndarray, groups: np.ndarray) -> dict[int, tuple[float, int]]:
    """{group value: (mean of `values` over it, its count)} for the groups that have samples."""
    return {int(g): (float(values[groups == g].mean()), int((groups == g).sum())) for g in np.unique(groups)}


def _grouped(name: str, field: str, values: np.ndarray, groups: np.ndarray) -> tuple[Metrics, float]:
    """Per-group `<name>_<field>:<g>` and `count_<field>:<g>`, and the worst (lowest) group mean."""
    means = group_means(values, groups)
    out: Metrics = {}
    for g, (mean, count) in means.items():
        out[f"{name}_{field}:{g}"] = mean
        out[f"count_{field}:{g}"] = count
    return out, min(mean for mean, _ in means.values())


def iwildcam(logits: torch.Tensor, target: torch.Tensor, metadata: np.ndarray) -> Metrics:
    from sklearn.metrics import f1_score, recall_score

    pred, y = logits.argmax(dim=1).numpy(), target.numpy()
    labels = np.unique(y)
    with warnings.catch_warnings():  # a class never predicted scores 0 (scikit-learn's default, said silently)
        warnings.simplefilter("ignore")
        recall = recall_score(y, pred, average="macro", labels=labels, zero_division=0)
        f1 = f1_score(y, pred, average="macro", labels=labels, zero_division=0)
    return {"acc_avg": float((pred == y).mean()), "recall-macro_all": float(recall), "F1-macro_all": float(f1)}


def fmow(logits: torch.Tensor, target: torch.Tensor, metadata: np.ndarray) -> Metrics:
    correct = (logits.argmax(dim=1) == target).double().numpy()
    by_year, worst_year = _grouped("acc", "year", correct, metadata[:, 1])
    by_region, worst_region = _grouped("acc", "region", correct, metadata[:, 0])
    return {
        "acc_avg": float(correct.mean()),
        **by_year,
        "acc_worst_year": worst_year,
        **by_region,
        "acc_worst_region": worst_region,
    }


def dollar_street(logits: torch.Tensor, target: torch.Tensor, metadata: np.ndarray) -> Metrics:
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct = (top5 == target[:, None]).any(dim=1).double().numpy()
    by_income, worst = _grouped("acc_top5", "income_ds", correct, metadata[:, 0])
    return {"acc_top5_avg": float(correct.mean()), **by_income, "acc_top5_wg": worst}


def geode(logits: torch.Tensor, target: torch.Tensor, metadata: np.ndarray) -> Metrics:
    correct = (logits.argmax(dim=1) == target).double().numpy()
    by_region, worst = _grouped("acc", "region", correct, metadata[:, 0])
    return {"acc_avg": float(correct.mean()), **by_region, "acc_wg": worst}


@dataclass(frozen=True)
class Grouping:
    fields: tuple[str, ...]  # the `.npy` vector's fields (empty: the metric reads no metadata)
    compute: Callable[[torch.Tensor, torch.Tensor, np.ndarray], Metrics]  # logits, labels, metadata [N, fields]


GROUPINGS: dict[str, Grouping] = {
    "iwildcam": Grouping((), iwildcam),
    "fmow": Grouping(("region", "year", "y"), fmow),
    "dollar_street": Grouping(("income_ds", "income_meta", "region"), dollar_street),
    "geode": Grouping(("region", "country"), geode),
}


def read_metadata(path: Path, batch_size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N], metadata [N, fields]) of a webdataset task folder, in the order clip_benchmark's reader yields
    its images with the same batch size and workers (same shards, same split over workers, images not decoded)."""
    import webdataset as wds
    from torch.utils.data import DataLoader

    nshards = int((path / "test" / "nshards.txt").read_text())
    pattern = str(path / "test" / f"{{0..{nshards - 1}}}.tar")
    dataset = wds.WebDataset(pattern, shardshuffle=False, nodesplitter=lambda src: src).decode().to_tuple("cls", "npy")
    loader = DataLoader(dataset.batched(batch_size, partial=True), batch_size=None, num_workers=workers)
    labels, rows = [], []
    for cls, npy in loader:
        labels.append(np.asarray(cls).reshape(-1))
        rows.append(np.asarray(npy))
    if not labels:
        raise ValueError(f"{path}/test: no samples with a .cls and a .npy")
    return np.concatenate(labels).astype(np.int64), np.concatenate(rows)


def grouped_metrics(
    name: str, logits: torch.Tensor, target: torch.Tensor, path: Path, batch_size: int = 256, workers: int = 0
) -> Metrics:
    """DataComp's metrics `name` (a key of GROUPINGS) of a zero-shot pass over the webdataset at `path`."""
    if name not in GROUPINGS:
        raise ValueError(f"grouped metrics {name!r}: known are {sorted(GROUPINGS)}")
    grouping = GROUPINGS[name]
    metadata = np.zeros((len(target), 0), dtype=np.int64)
    if grouping.fields:
        labels, metadata = read_metadata(path, batch_size, workers)
        if metadata.ndim != 2 or metadata.shape[1] != len(grouping.fields):
            raise ValueError(
                f"{path}/test: each <key>.npy must hold the {len(grouping.fields)} fields "
                f"{grouping.fields} of {name}; got shape {metadata.shape}"
            )
        if len(labels) != len(target) or not np.array_equal(labels, target.numpy()):
            raise ValueError(
                f"{path}/test: the .cls labels read with the .npy metadata ({len(labels)}) do not "
                f"match the zero-shot pass ({len(target)}); a sample lacks its .npy or the shards "
                "changed"
            )
        if (metadata < 0).any() or not np.issubdtype(metadata.dtype, np.integer):
            raise ValueError(f"{path}/test: metadata must be non-negative integers, got {metadata.dtype}")
    return grouping.compute(logits, target, metadata)
