"""Parameter-free structural pieces of the ConvNet family (each exactly 1-Lipschitz: they derive from
:class:`~lipzoo.layers._base.OneLipschitz`, whose ``norm_bound`` is 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._base import OneLipschitz

__all__ = ["ZeroChannelConcatenation", "FirstChannels", "Centering"]


class ZeroChannelConcatenation(OneLipschitz, nn.Module):
    """Appends zero channels up to ``channels`` (an isometry onto a subspace)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = self.channels - x.shape[1]
        if missing < 0:
            raise ValueError(
                f"ZeroChannelConcatenation({self.channels}) got {x.shape[1]} channels; "
                f"expected at most {self.channels}"
            )
        if missing == 0:
            return x
        pad = (0, 0) * (x.ndim - 2) + (0, missing)
        return F.pad(x, pad)

    def extra_repr(self) -> str:
        return str(self.channels)


class FirstChannels(OneLipschitz, nn.Module):
    """Keeps the first ``channels`` channels (or features): a projection, 1-Lipschitz."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < self.channels:
            raise ValueError(
                f"FirstChannels({self.channels}) got only {x.shape[1]} channels; expected at least {self.channels}"
            )
        return x[:, : self.channels]

    def extra_repr(self) -> str:
        return str(self.channels)


class Centering(OneLipschitz, nn.Module):
    """Subtracts a fixed per-channel mean: a shift, hence an isometry (1-Lipschitz).

    It makes the paper's input centring a fixed part of the model, so every lipzoo model takes
    images in [0, 1]. The mean is a non-persistent buffer: it comes from the model's config.
    """

    def __init__(self, mean: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean.to(x.dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{m:.4f}" for m in self.mean.flatten().tolist())
