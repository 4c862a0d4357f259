"""Gradient accumulation that keeps the contrastive batch whole: the cached-feature method.

A contrastive loss couples every pair of the batch, so summing the losses of micro-batches (each
against only itself) is not the big batch's gradient. Instead: (1) forward all micro-batches
without autograd and cache their features; (2) run the loss ONCE on the cached features of the
whole local batch (as leaves), which gives d loss / d feature for every row and the temperature's
(and SigLIP bias's) gradient; (3) re-forward each micro-batch with autograd and back-propagate its
slice of those feature gradients. The parameter gradient is the big batch's exactly; activation
memory is one micro-batch's. Each re-forward replays the FLIP masks of its first forward (the mask
generator is rewound), so both passes see the same tokens.

FastCLIP semantics: the loss, including the per-sample u update and (v2) the per-sample taus, runs
once on the union of the micro-batches, i.e. exactly as the big batch would; u is updated once per
optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from train.losses import LossOutput

Encode = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cached_feature_backward(
    encode: Encode,
    images: torch.Tensor,
    tokens: torch.Tensor,
    accum_steps: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], LossOutput],
    backward: Callable[[torch.Tensor], None],
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Accumulate the whole local batch's gradient over `accum_steps` micro-batches; returns the loss output.

    encode(images, tokens) -> (image features, text features) of one micro-batch (with autograd when enabled);
    loss_fn(e1, e2) -> the loss on the whole local batch; backward(x) back-propagates x through the backend.
    """
    micro = list(zip(images.chunk(accum_steps), tokens.chunk(accum_steps), strict=True))
    if len(micro) != accum_steps:
        raise ValueError(f"a local batch of {images.shape[0]} does not split into {accum_steps} micro-batches")
    rng_states, cached1, cached2 = [], [], []
    with torch.no_grad():
        for x, t in micro:
            rng_states.append(None if generator is None else generator.get_state())
            f1, f2 = encode(x, t)
            cached1.append(_at_least_fp32(f1))
            cached2.append(_at_least_fp32(f2))
    e1 = torch.cat(cached1).requires_grad_()
    e2 = torch.cat(cached2).requires_grad_()
    out = loss_fn(e1, e2)
    out.loss.backward()  # feature gradients, and the temperature's (a leaf outside the backend)
    grads1, grads2 = e1.grad.split([len(c) for c in cached1]), e2.grad.split([len(c) for c in cached2])
    for (x, t), state, g1, g2 in zip(micro, rng_states, grads1, grads2, strict=True):
        if state is not None:
            generator.set_state(state)  # the same FLIP masks as the cached forward
        f1, f2 = encode(x, t)
        backward((_at_least_fp32(f1) * g1).sum() + (_at_least_fp32(f2) * g2).sum())
    return out


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """The loss computes in fp32 (bf16 features are upcast, as in the unaccumulated step); float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
