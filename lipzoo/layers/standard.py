"""The unconstrained baseline of the paper: plain convolution and dense layers (NOT 1-Lipschitz)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._base import check_kernel_size, KernelConv, MatrixLayer

__all__ = ["StandardConv2d", "StandardLinear"]


class StandardConv2d(KernelConv):
    """``nn.Conv2d`` with circular 'same' padding and PyTorch's default initialisation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # the same initialisation as nn.Conv2d
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_channels * kernel_size**2)
        nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.weight


class StandardLinear(MatrixLayer):
    """``nn.Linear`` with PyTorch's default initialisation."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        ref = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone())

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.weight
