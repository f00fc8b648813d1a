"""Shapes of encrypted containers: element counts, torch's broadcasting rule, shape arguments."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["broadcast_shape", "check_shape", "flat_index", "numel"]


def numel(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of ``shape`` (1 for ``()``)."""
    out = 1
    for d in shape:
        out *= int(d)
    return out


def broadcast_shape(a: torch.Size, b: torch.Size) -> torch.Size:
    """torch's broadcasting rule (without importing torch._refs, which is slow on first use)."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            raise ValueError(f"shapes {tuple(a)} and {tuple(b)} cannot be broadcast together")
        out.append(y if x == 1 else x)
    return torch.Size(reversed(out))


def flat_index(shape: torch.Size, out_shape: torch.Size) -> list[int]:
    """For each element of ``out_shape`` (row-major), the flat index of the element of a tensor of
    ``shape`` broadcast to it."""
    return torch.arange(numel(shape), dtype=torch.int64).reshape(shape).expand(out_shape).reshape(-1).tolist()


def check_shape(shape) -> torch.Size:
    """``shape`` as a ``torch.Size``: ``TypeError`` unless a sequence of ints, ``ValueError`` if negative."""
    try:
        shape = torch.Size([int(d) for d in shape])
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"invalid shape {tuple(shape)}")
    return shape
