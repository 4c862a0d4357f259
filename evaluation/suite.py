"""Task suites: which sets a model is evaluated on, where their data lies, and each task's main metric.

A task is zero-shot classification (`zeroshot`), image-text retrieval (`retrieval`) or WinoGAViL's associations
(`winogavil`, evaluation.winogavil). Its data is found under the suite's data root in one of the layouts users
download:
- clip_benchmark's webdataset layout (`test/nshards.txt`, `test/*.tar`, `classnames.txt`,
  `zeroshot_classification_templates.txt`, `dataset_type.txt` = retrieval for caption sets): how DataComp's
  download_evalsets.py stores its sets, as `wds_<key with / as ->_test`;
- a class-per-folder image tree (ImageNet val);
- a csv / tsv of image path and caption (retrieval; several rows of one image share its path or `image_id`);
- the Hugging Face cache DataComp's download fills for its retrieval sets and WinoGAViL
  (`hf_cache/nlphuji___<name>`, Arrow files; evaluation.hf_arrow).
A zero-shot task may add DataComp's metadata-grouped metrics (`grouped`: WILDS' iWildCam and FMoW, Dollar Street,
GeoDE; evaluation.grouped_metrics), read from the shards' per-sample `.npy`.

`datacomp` is DataComp's list (tasklist.yml): the 38 tasks its average runs over, each with its main metric.
`imagenet` is ImageNet and the variants CLIP papers report. A suite FILE (YAML or JSON) lists the user's own tasks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from data.imagefolder import is_image_folder
from evaluation.grouped_metrics import GROUPINGS
from evaluation.hf_arrow import arrow_files, hf_folder

KINDS = ("zeroshot", "retrieval", "winogavil")
DEFAULT_METRIC = {"zeroshot": "acc1", "retrieval": "mean_recall@1", "winogavil": "jaccard_score_10-12"}
CSV_SUFFIXES = (".csv", ".tsv")


@dataclass(frozen=True)
class Task:
    """One evaluation. `classnames` / `templates`: "" = from the data (classnames.txt or the folder names;
    zeroshot_classification_templates.txt or the generic templates), a registry name (evaluation.prompts), a
    text file (one per line) or a list. `grouped`: DataComp's metadata-grouped metrics to add (a zero-shot task on
    a webdataset with per-sample `.npy`; evaluation.grouped_metrics.GROUPINGS)."""

    name: str
    kind: str
    path: str
    main_metric: str = ""
    title: str = ""
    classnames: str | tuple[str, ...] = ""
    templates: str | tuple[str, ...] = ""
    csv_image_key: str = "filepath"
    csv_caption_key: str = "title"
    grouped: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.grouped and (self.kind != "zeroshot" or self.grouped not in GROUPINGS):
            raise ValueError(
                f"task {self.name!r}: grouped {self.grouped!r} needs kind zeroshot and one of {sorted(GROUPINGS)}"
            )
        if not self.main_metric:
            object.__setattr__(self, "main_metric", DEFAULT_METRIC[self.kind])
        if not self.title:
            object.__setattr__(self, "title", self.name)

    def definition(self) -> dict[str, Any]:
        """The fields that define the task (what a cached result is keyed on, with the data's fingerprint)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "title"}


@dataclass
class Suite:
    name: str
    tasks: list[Task]
    expected: int = 0  # how many tasks the published average runs over (DataComp: 38)


def datacomp_folder(key: str) -> str:
    """DataComp's download_evalsets.py folder of a task: retrieval/ and misc/ sets are Hugging Face datasets
    (nlphuji/<name>) in its hf_cache; the others webdatasets, fairness/ dropped and '/' -> '-'."""
    if key.startswith(("retrieval/", "misc/")):
        return hf_folder("nlphuji/" + key.split("/", 1)[1])
    return f"wds_{key.removeprefix('fairness/').replace('/', '-')}_test"


# DataComp tasklist.yml: key -> (display name, main metric). Classification's default metric is acc1.
_DATACOMP: dict[str, tuple[str, str]] = {
    "vtab/caltech101": ("Caltech-101", "mean_per_class_recall"),
    "cifar10": ("CIFAR-10", "acc1"),
    "vtab/cifar100": ("CIFAR-100", "acc1"),
    "vtab/clevr_count_all": ("CLEVR Counts", "acc1"),
    "vtab/clevr_closest_object_distance": ("CLEVR Distance", "acc1"),
    "country211": ("Country211", "acc1"),
    "vtab/dtd": ("Describable Textures", "acc1"),
    "vtab/eurosat": ("EuroSAT", "acc1"),
    "fgvc_aircraft": ("FGVC Aircraft", "mean_per_class_recall"),
    "food101": ("Food-101", "acc1"),
    "gtsrb": ("GTSRB", "acc1"),
    "imagenet1k": ("ImageNet 1k", "acc1"),
    "imagenet_sketch": ("ImageNet Sketch", "acc1"),
    "imagenetv2": ("ImageNet v2", "acc1"),
    "imagenet-a": ("ImageNet-A", "acc1"),
    "imagenet-o": ("ImageNet-O", "acc1"),
    "imagenet-r": ("ImageNet-R", "acc1"),
    "vtab/kitti_closest_vehicle_distance": ("KITTI Vehicle Distance", "acc1"),
    "mnist": ("MNIST", "acc1"),
    "objectnet": ("ObjectNet", "acc1"),
    "vtab/flowers": ("Oxford Flowers-102", "mean_per_class_recall"),
    "vtab/pets": ("Oxford-IIIT Pet", "mean_per_class_recall"),
    "voc2007": ("Pascal VOC 2007", "acc1"),
    "vtab/pcam": ("PatchCamelyon", "acc1"),
    "renderedsst2": ("Rendered SST2", "acc1"),
    "vtab/resisc45": ("RESISC45", "acc1"),
    "cars": ("Stanford Cars", "acc1"),
    "stl10": ("STL-10", "acc1"),
    "sun397": ("SUN397", "acc1"),
    "vtab/svhn": ("SVHN", "acc1"),
    "retrieval/flickr_1k_test_image_text_retrieval": ("Flickr", "mean_recall@1"),
    "retrieval/mscoco_2014_5k_test_image_text_retrieval": ("MSCOCO", "mean_recall@1"),
    "misc/winogavil": ("WinoGAViL", "jaccard_score_10-12"),
    "wilds/iwildcam": ("iWildCam", "F1-macro_all"),
    "wilds/camelyon17": ("Camelyon17", "acc1"),
    "wilds/fmow": ("FMoW", "acc_worst_region"),
    "fairness/dollar_street": ("Dollar Street", "acc_top5_wg"),
    "fairness/geode": ("GeoDE", "acc_wg"),
}
# Tasks scored with metadata-grouped metrics (evaluation.grouped_metrics).
_GROUPED = {
    "wilds/iwildcam": "iwildcam",
    "wilds/fmow": "fmow",
    "fairness/dollar_street": "dollar_street",
    "fairness/geode": "geode",
}
# ImageNet and the variants CLIP papers report (FastCLIP: ImageNet & variants), in DataComp's folders.
_IMAGENET = ("imagenet1k", "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "objectnet")


def _datacomp_kind(key: str) -> str:
    if key == "misc/winogavil":
        return "winogavil"
    return "retrieval" if key.startswith("retrieval/") else "zeroshot"


def datacomp_suite() -> Suite:
    tasks = [
        Task(
            name=key,
            kind=_datacomp_kind(key),
            path=datacomp_folder(key),
            main_metric=metric,
            title=title,
            grouped=_GROUPED.get(key, ""),
        )
        for key, (title, metric) in _DATACOMP.items()
    ]
    return Suite("datacomp", tasks, expected=len(tasks))


def imagenet_suite() -> Suite:
    tasks = [Task(name=k, kind="zeroshot", path=datacomp_folder(k), title=_DATACOMP[k][0]) for k in _IMAGENET]
    return Suite("imagenet", tasks, expected=len(tasks))


def load_suite_file(path: str | Path) -> Suite:
    """A YAML / JSON file: `tasks:` a list of {name, kind, path, main_metric?, classnames?, templates?, ...}."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), list) or not raw["tasks"]:
        raise ValueError(f"{path}: a suite file holds `tasks:`, a non-empty list of tasks")
    known = {f.name for f in fields(Task)}
    tasks = []
    for i, entry in enumerate(raw["tasks"]):
        unknown = set(entry) - known if isinstance(entry, dict) else {"(not a mapping)"}
        if unknown or not isinstance(entry, dict) or not {"name", "kind", "path"} <= set(entry):
            raise ValueError(
                f"{path}: task {i} needs name, kind and path and may hold {sorted(known)}; unknown: {sorted(unknown)}"
            )
        entry = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
        tasks.append(Task(**entry))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: task names repeat: {names}")
    return Suite(raw.get("name", path.stem), tasks, expected=len(tasks))


def get_suite(name: str) -> Suite:
    """`datacomp`, `imagenet`, or the path of a suite file."""
    if name == "datacomp":
        return datacomp_suite()
    if name == "imagenet":
        return imagenet_suite()
    if not os.path.isfile(name):
        raise FileNotFoundError(f"--suite {name!r}: not 'datacomp', 'imagenet' or a suite file (YAML/JSON)")
    return load_suite_file(name)


def resolve(task: Task, data_root: str | Path) -> Path:
    """The task's data path (absolute paths are kept)."""
    return Path(data_root) / task.path


def layout(path: Path, kind: str) -> str | None:
    """Which layout `path` holds for a task of `kind`, or None when nothing usable is there (the task is missing)."""
    if kind in ("retrieval", "winogavil") and arrow_files(path):
        return "hf-arrow"
    if kind == "winogavil":
        return None
    if path.is_file() and path.suffix.lower() in CSV_SUFFIXES:
        return "csv"
    if (path / "test" / "nshards.txt").is_file():
        return "wds"
    if is_image_folder(str(path)):
        return "imagefolder"
    return None


def fingerprint(path: Path) -> list[tuple[str, int]]:
    """(relative name, size) of every file of a task's data: a changed set invalidates its cached results."""
    if path.is_file():
        return [(path.name, path.stat().st_size)]
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
