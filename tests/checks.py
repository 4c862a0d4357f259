"""Comparisons shared by the tests."""

from __future__ import annotations

import torch


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Max abs error <= rtol x the largest finite |expected| (a relative error that zero entries cannot blow up)."""
    finite = expected[torch.isfinite(expected)]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    a, e = actual.double(), expected.double()
    diff = torch.where(a == e, torch.zeros_like(a), (a - e).abs())  # equal infinities are no error
    err = diff.max().item() if diff.numel() else 0.0
    assert err <= rtol * max(scale, 1e-12), f"max error {err:.3e} vs scale {scale:.3e} (rtol {rtol:g})"


def keys_of(batches) -> list[int]:  # noqa: ANN001 - any iterable of batches (a loader, a list)
    """The sample keys of every batch, in order."""
    return [k for b in batches for k in b["index"].tolist()]
