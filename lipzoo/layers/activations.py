"""Activations used by 1-Lipschitz networks (all exactly 1-Lipschitz, gradient-norm preserving)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaxMin"]


class MaxMin(nn.Module):
    """Pairs channels (2i, 2i+1) and writes (max, min) back into the same positions.

    Works on (N, C) and (N, C, H, W) input. With an odd channel count the last channel passes
    through unchanged. Each pair is sorted, a permutation, so the map is 1-Lipschitz in l2 and
    preserves gradient norms.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        even = c - (c % 2)
        pairs = x[:, :even].unflatten(1, (even // 2, 2))
        a, b = pairs.unbind(2)
        out = torch.stack([torch.maximum(a, b), torch.minimum(a, b)], dim=2).flatten(1, 2)
        if even != c:
            out = torch.cat([out, x[:, even:]], dim=1)
        return out
