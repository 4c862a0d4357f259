"""In-loop evaluation: zero-shot classification and retrieval on full-parameter models, sharded over ranks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from data.eval_loader import EvalLoader, build_eval_loader
from data.imagefolder import is_image_folder
from data.tokenizer import Tokenizer
from evaluation import evaluate_retrieval, evaluate_zeroshot, get_classnames, get_templates
from evaluation.prompts import render
from train.config import EvalConfig

logger = logging.getLogger("fastflip")

CSV_SUFFIXES = (".csv", ".tsv")


def eval_source(path: str) -> str:
    """The data source of an eval set: a .csv / .tsv file is a caption csv, a class-per-folder tree an image
    folder, anything else webdataset shards."""
    if is_image_folder(path):
        return "imagefolder"
    return "csv" if path.lower().endswith(CSV_SUFFIXES) else "webdataset"


class Evaluator:
    """Opens its eval sets at construction (a wrong path fails before training) and shards them over ranks.

    `rank` / `world_size` are this process's place in `group`, the data-parallel group the sets are
    sharded over (default: the whole job). `__call__(model)` must run on every rank of `group` with a
    full-parameter model; every one of them gets the same metrics. In training, `due(step)` says when (every
    `eval.every_steps` before `total_steps`, whose evaluation ends the run).
    """

    def __init__(
        self,
        cfg: EvalConfig,
        image_size: int,
        device: torch.device,
        tokenizer: Tokenizer,
        rank: int = 0,
        world_size: int = 1,
        group: dist.ProcessGroup | None = None,
        total_steps: int = 0,
    ) -> None:
        self.cfg = cfg
        self.total_steps = total_steps
        self.device = device
        self.tokenizer = tokenizer
        self.distributed = world_size > 1
        self.group = group
        self.zeroshot_loader: EvalLoader | None = None
        self.retrieval_loader: EvalLoader | None = None
        if cfg.zeroshot:
            self.zeroshot_loader = self._open("eval.zeroshot", cfg.zeroshot, image_size, "label", rank, world_size)
            self.classnames = self._classnames()
            self.templates = get_templates(cfg.templates or cfg.classnames or "generic")
        if cfg.retrieval:
            self.retrieval_loader = self._open(
                "eval.retrieval", cfg.retrieval, image_size, "image_id", rank, world_size
            )

    def prompts_line(self) -> str:
        """Which class names and templates zero-shot classifies with, and where each came from ('' without it)."""
        if self.zeroshot_loader is None:
            return ""
        names_from = f"registry {self.cfg.classnames!r}" if self.cfg.classnames else f"the data ({self.cfg.zeroshot})"
        shown = ", ".join(self.classnames[:4]) + (", ..." if len(self.classnames) > 4 else "")
        example, registry = render(self.templates[0], "{c}"), self.cfg.templates or self.cfg.classnames or "generic"
        return (
            f"zero-shot: {len(self.classnames)} class names from {names_from} ({shown}); {len(self.templates)} "
            f"templates from registry {registry!r} ({example!r}, ...)"
        )

    @property
    def enabled(self) -> bool:
        return self.zeroshot_loader is not None or self.retrieval_loader is not None

    def due(self, step: int) -> bool:
        every = self.cfg.every_steps
        return self.enabled and bool(every) and step % every == 0 and step < self.total_steps

    def _open(self, key: str, path: str, image_size: int, label_key: str, rank: int, world: int) -> EvalLoader:
        if not Path(path).exists() and not any(c in path for c in "*{") and "://" not in path:
            raise FileNotFoundError(f"{key}: {path} does not exist (labelled shards or a caption csv)")
        need_caption = key == "eval.retrieval"
        loader = build_eval_loader(
            path,
            image_size,
            self.cfg.batch_size,
            source=eval_source(path),
            tokenizer=self.tokenizer,
            label_key=label_key,
            need_caption=need_caption,
        )
        return loader.shard(rank, world)

    def _classnames(self) -> list[str]:
        names = self.zeroshot_loader.class_names
        if self.cfg.classnames:
            registry = list(get_classnames(self.cfg.classnames))
            if names and len(names) != len(registry):
                raise ValueError(
                    f"eval.zeroshot: {self.cfg.zeroshot} has {len(names)} classes, eval.classnames "
                    f"{self.cfg.classnames!r} names {len(registry)}"
                )
            return registry
        if not names:
            raise ValueError(
                f"eval.zeroshot: {self.cfg.zeroshot} has no class names in its manifest; set eval.classnames"
            )
        return list(names)

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        results: dict[str, Any] = {}
        if self.zeroshot_loader is not None:
            zs = evaluate_zeroshot(
                model,
                self.tokenizer,
                self.classnames,
                self.templates,
                self.zeroshot_loader,
                self.device,
                batch_size=self.cfg.batch_size,
                distributed=self.distributed,
                group=self.group,
            )
            results.update({f"zeroshot_{k}": v for k, v in zs.items()})
        if self.retrieval_loader is not None:
            # Several captions of one image share an `image_id` column (csv / datasets); otherwise (and in
            # webdataset shards, whose "label" is a class) each sample is its own image.
            ids_from_column = self.retrieval_loader.has_labels and self.retrieval_loader.source.kind != "webdataset"
            batches = ({**b, "image_id": b["label"] if ids_from_column else b["index"]} for b in self.retrieval_loader)
            results.update(
                evaluate_retrieval(model, batches, self.device, distributed=self.distributed, group=self.group)
            )
        return results
