"""Fine-tuning helpers: freeze a tower (keeping its last blocks trainable) and number its layers for layer decay.

A tower is three parts in order: its embeddings (everything before the blocks), the blocks, and its head
(final norm and projection). Freezing happens on the plain model, before any backend wraps or shards it, so
every backend sees ordinary `requires_grad=False` parameters (DDP skips them, ZeRO leaves them out of its
partitions' optimizer state, FSDP2 shards them but reduces no gradient for them).
"""

from __future__ import annotations

import re

from torch import nn

TOWERS = ("visual", "text")
_BLOCK = re.compile(r"^(visual|text)\.blocks\.(\d+)\.")
_NORM = re.compile(r"(^|\.)(norm\w*|ln_\w+)\.")


def tower_of(name: str) -> str | None:
    """ "visual" / "text" for a tower's parameter name, None for the shared ones (logit_scale, logit_bias)."""
    head = name.split(".", 1)[0]
    return head if head in TOWERS else None


def layer_id(name: str, num_blocks: int) -> int:
    """0 for a tower's embeddings, i + 1 for its block i, num_blocks + 1 for its head (final norm, projection)."""
    match = _BLOCK.match(name)
    if match:
        return int(match.group(2)) + 1
    is_embedding = any(
        part in name
        for part in ("patch_embed", "cls_token", "pos_embed", "norm_pre", "token_embedding", "positional_embedding")
    )
    return 0 if is_embedding else num_blocks + 1


def lock_tower(model: nn.Module, tower: str, unlocked_layers: int = 0, lock_norms: bool = True) -> int:
    """Freeze `tower` except its last `unlocked_layers` blocks and, when any block stays trainable, its head.

    lock_norms=False keeps the LayerNorm gains and biases of the frozen part trainable (open_clip's
    freeze_layer_norm=False). Returns the number of frozen parameter elements.
    """
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
    num_blocks = len(getattr(model, tower).blocks)
    if not 0 <= unlocked_layers <= num_blocks:
        raise ValueError(f"unlocked_layers must lie in [0, {num_blocks}] for the {tower} tower, got {unlocked_layers}")
    first_trainable = num_blocks + 1 - unlocked_layers if unlocked_layers else num_blocks + 2
    frozen = 0
    for name, param in model.named_parameters():
        if tower_of(name) != tower or layer_id(name, num_blocks) >= first_trainable:
            continue
        if not lock_norms and _NORM.search(name):
            continue
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen
