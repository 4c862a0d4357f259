"""In-loop evaluation: zero-shot classification and retrieval on a full-parameter model, on rank 0."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

import torch
from torch import nn

from data.eval_loader import EvalLoader, build_eval_loader
from data.tokenizer import Tokenizer
from evaluation import evaluate_retrieval, evaluate_zeroshot, get_classnames, get_templates
from train.config import EvalConfig

logger = logging.getLogger("fastflip")


class Evaluator:
    """Builds its loaders once; `__call__(model)` returns flat metrics ({} when nothing is configured)."""

    def __init__(self, cfg: EvalConfig, image_size: int, device: torch.device, tokenizer: Tokenizer) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.device = device

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.zeroshot or self.cfg.retrieval)

    @cached_property
    def zeroshot_loader(self) -> EvalLoader:
        return build_eval_loader(
            self.cfg.zeroshot, self.image_size, self.cfg.batch_size, tokenizer=self.tokenizer, need_caption=False
        )

    @cached_property
    def retrieval_loader(self) -> EvalLoader:
        return build_eval_loader(
            self.cfg.retrieval, self.image_size, self.cfg.batch_size, tokenizer=self.tokenizer, label_key="image_id"
        )

    def classnames(self) -> list[str]:
        if self.cfg.classnames:
            return list(get_classnames(self.cfg.classnames))
        names = self.zeroshot_loader.class_names
        if not names:
            raise ValueError(
                f"eval.zeroshot: {self.cfg.zeroshot} has no class names in its manifest; set eval.classnames"
            )
        return list(names)

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        """Evaluate on this process alone (`distributed=False`): the caller runs it on rank 0 only."""
        results: dict[str, Any] = {}
        if self.cfg.zeroshot:
            templates = get_templates(self.cfg.templates or self.cfg.classnames or "generic")
            zs = evaluate_zeroshot(
                model, self.tokenizer, self.classnames(), templates, self.zeroshot_loader, self.device,
                batch_size=self.cfg.batch_size, distributed=False,
            )  # fmt: skip
            results.update({f"zeroshot_{k}": v for k, v in zs.items()})
        if self.cfg.retrieval:
            # Several captions of one image share an `image_id` column (csv / datasets); otherwise each
            # sample is its own image.
            batches = ({**b, "image_id": b.get("label", b["index"])} for b in self.retrieval_loader)
            results.update(evaluate_retrieval(model, batches, self.device, distributed=False))
        return results
