"""Rename tables between our CLIP state dict and another library's, applied in both directions with checks.

A format is a list of `Rule`s. Each of our keys matches exactly one rule; `{i}` stands for a block index.
Converting to ours is driven by our model's own keys and shapes (a template), so a checkpoint of another
architecture fails on the first key that is missing, has another shape, or is left over.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch

LAYOUTS = ("same", "transpose", "squeeze")


@dataclass(frozen=True)
class Rule:
    """One of our keys <-> one or more of theirs.

    layout: `same`; `transpose` (our Linear [out, in] vs their matrix [in, out]); `squeeze` (their tensor
    drops our leading size-1 dims: cls token [1, 1, W] -> [W], logit_scale [1] -> []).
    Several `theirs` keys: our tensor is their tensors concatenated along dim 0 (fused q, k, v).
    """

    ours: str
    theirs: tuple[str, ...]
    layout: str = "same"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"rule {self.ours}: layout must be one of {LAYOUTS}, got {self.layout!r}")

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.ours).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def their_keys(self, match: re.Match[str]) -> tuple[str, ...]:
        index = match.groupdict().get("i")
        return tuple(key.format(i=index) for key in self.theirs)


def _squeezed(shape: torch.Size) -> torch.Size:
    """`shape` without its leading size-1 dims."""
    dims = list(shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    return torch.Size(dims)


def _find(rules: Iterable[Rule], key: str, fmt: str) -> tuple[Rule, re.Match[str]]:
    for rule in rules:
        match = rule.pattern.match(key)
        if match:
            return rule, match
    raise KeyError(f"{fmt}: no mapping for our parameter {key!r}")


def to_theirs(state: Mapping[str, torch.Tensor], rules: list[Rule], fmt: str) -> dict[str, torch.Tensor]:
    """Our state dict -> theirs (fresh contiguous tensors, so the result can be saved as safetensors)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        rule, match = _find(rules, key, fmt)
        if rule.layout == "transpose":
            value = value.t()
        elif rule.layout == "squeeze":
            value = value.reshape(_squeezed(value.shape))
        keys = rule.their_keys(match)
        parts = value.chunk(len(keys), dim=0) if len(keys) > 1 else (value,)
        out.update({k: p.contiguous().clone() for k, p in zip(keys, parts, strict=True)})
    return out


def to_ours(
    theirs: Mapping[str, torch.Tensor],
    template: Mapping[str, torch.Tensor],
    rules: list[Rule],
    fmt: str,
    ignore: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Their state dict -> ours, shaped like `template` (our model's state dict; meta tensors are fine).

    Raises ValueError naming the first missing, mis-shaped or left-over key: a checkpoint of another
    architecture is refused instead of loading partially. `ignore` lists their non-weight keys to skip.
    """
    unused = {k for k in theirs if k not in set(ignore)}
    out: dict[str, torch.Tensor] = {}
    for key, like in template.items():
        rule, match = _find(rules, key, fmt)
        keys = rule.their_keys(match)
        for k in keys:
            if k not in theirs:
                raise ValueError(f"{fmt} checkpoint has no {k!r} (needed for our {key!r}): another architecture?")
        parts = [theirs[k] for k in keys]
        value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if rule.layout == "transpose" and value.dim() == 2:
            value = value.t()
        elif rule.layout == "squeeze" and value.shape == _squeezed(like.shape):
            value = value.reshape(like.shape)
        if value.shape != like.shape:
            theirs_shape = [tuple(p.shape) for p in parts]
            raise ValueError(
                f"{fmt} checkpoint {keys[0]!r} has shape {theirs_shape[0] if len(parts) == 1 else theirs_shape}, "
                f"our {key!r} needs {tuple(like.shape)}: the checkpoint is another architecture than model "
                "(check model.name and model.overrides)"
            )
        if like.dtype.is_floating_point:  # e.g. fp16 releases load into our fp32 model
            value = value.to(like.dtype)
        out[key] = value.detach().contiguous()
        unused.difference_update(keys)
    if unused:
        first = next(k for k in theirs if k in unused)
        raise ValueError(
            f"{fmt} checkpoint has {len(unused)} keys our model lacks, e.g. {first!r}: another "
            "architecture (check model.name and model.overrides)"
        )
    return out
