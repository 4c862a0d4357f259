"""The frozen reference model of DRRho-CLIP model steering (`loss.reference`), at run time.

It is loaded through the importers of `model.init_from` (open_clip:, hf:) or from one of our checkpoints
(fastflip:), may have another architecture than the target, and is never trained, wrapped by the backend,
saved in our checkpoints or exported: `meta.json` records its source and a hash of its weights. It is replicated
on every rank (not sharded under ZeRO-3 / FSDP2): it has no gradients or optimizer state, and sharding would
all-gather its weights at every step for a forward whose memory is small next to the target's.

Per step it encodes the same batch as the target without autograd, in the run's precision (weights cast to bf16 /
fp16, forward under the run's autocast), in eval mode, so FLIP never masks it: it sees the augmented, unmasked
image, as in the authors' training loop (`ref_model(images, texts)` under `torch.no_grad()`, eval mode, the
batch the target sees). `reference_features: precomputed` reads the embeddings `tools/reference_features.py`
wrote (centre crop, once per dense row) instead: cheaper, but not the authors' exact objective.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model import CLIP, create_model
from model.init_from import pretrained_state
from train.losses.config import LossConfig
from train.reference_spec import (
    FEATURES_FILE,
    FEATURES_META,
    features_dir,
    missing_reference_files,
    reference_architecture,
)

if TYPE_CHECKING:
    from train.config import TrainConfig

logger = logging.getLogger(__name__)


def weights_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the weights (names, shapes, dtypes and bytes in name order): the reference's identity."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def load_reference_model(loss: LossConfig) -> CLIP:
    """The reference in fp32 on the CPU, eval mode, frozen."""
    source, _, path = loss.reference.partition(":")
    if source == "fastflip":
        from train.checkpoint.consolidate import load_model

        model, meta = load_model(path)
        name = meta["config"]["model"]["name"]
    else:
        name, overrides = reference_architecture(loss)
        model = create_model(name, **overrides)
        try:
            model.load_state_dict(pretrained_state(loss.reference, model))
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"loss.reference {loss.reference!r} ({name}): {err}") from err
    model.set_mask_ratio(0.0)
    model.reference_name = name
    return model.eval().requires_grad_(False)


class ReferenceEncoder:
    """Encodes batches with the frozen reference: `(images, tokens, cpu_index) -> (r1, r2)` L2-normalised, no
    autograd (`cpu_index`, the batch's dense rows on the host, is what the precomputed path reads)."""

    def __init__(
        self,
        model: CLIP,
        source: str,
        device: torch.device,
        dtype: torch.dtype | None,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        params = sum(p.numel() for p in model.parameters())
        self.info = {
            "source": source,
            "sha256": weights_hash(model.state_dict()),
            "features": "model",
            "model": model.reference_name,
            "parameters": params,
        }
        self.model = model.to(device=device, dtype=dtype or torch.float32)
        self._autocast = autocast

    def __call__(
        self, images: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor, chunks: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the batch, encoded `chunks` micro-batches at a time (activation memory of one)."""
        outs = []
        with torch.no_grad(), self._autocast():
            for x, t in zip(images.chunk(chunks), tokens.chunk(chunks), strict=True):
                r1, r2, _ = self.model(x.to(next(self.model.parameters()).dtype), t)
                outs.append((r1, r2))
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


class PrecomputedReference:
    """Reference features read by dense row from `reference_features.npy` in the index directory (memory-mapped)."""

    def __init__(self, directory: Path, device: torch.device) -> None:
        self.table = np.load(directory / FEATURES_FILE, mmap_mode="r")  # [rows, 2, d] float16
        meta_file = directory / FEATURES_META
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.info = meta | {"features": "precomputed", "file": str(directory / FEATURES_FILE)}
        self.device = device

    def __call__(
        self, images: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor, chunks: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.asarray(self.table[index.numpy()])  # the batch's CPU index: no device sync
        features = torch.from_numpy(rows.astype(np.float32)).to(self.device, non_blocking=True)
        return features[:, 0], features[:, 1]


def build_reference(
    cfg: TrainConfig,
    loss: LossConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> ReferenceEncoder | PrecomputedReference | None:
    """The run's reference (None without `loss.reference`); a ValueError naming the key when its files are missing."""
    if loss.reference is None:
        return None
    if missing := missing_reference_files(cfg, loss):
        raise ValueError(missing[0])
    if loss.reference_features == "precomputed":
        return PrecomputedReference(features_dir(cfg), device)
    encoder = ReferenceEncoder(load_reference_model(loss), loss.reference, device, dtype, autocast)
    logger.info(
        "reference model %s (%s, %.1fM parameters, sha256 %s...), frozen, replicated on every rank",
        loss.reference,
        encoder.info["model"],
        encoder.info["parameters"] / 1e6,
        encoder.info["sha256"][:12],
    )
    return encoder


def reference_meta(reference: Any) -> dict[str, Any] | None:
    """What meta.json records about the reference (source, hash, architecture, or the precomputed file)."""
    return None if reference is None else dict(reference.info)


def check_same_reference(checkpoint: Path, saved: dict[str, Any] | None, current: dict[str, Any] | None) -> None:
    """A run resumes only with the reference it started with (same weights hash, same kind of features)."""
    if saved is None or current is None:
        return
    for key in ("sha256", "features"):
        if key in saved and key in current and saved[key] != current[key]:
            raise ValueError(
                f"{checkpoint} was trained with reference {saved.get('source')} ({key} {saved[key]}), "
                f"this run's loss.reference gives {key} {current[key]}: resume with the same reference"
            )
