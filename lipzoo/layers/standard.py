"""The unconstrained baseline of the paper: plain convolution and dense layers (NOT 1-Lipschitz).

Initialisation (``init``): ``"default"`` is PyTorch's (``kaiming_uniform_(a=sqrt(5))``, the paper's),
whose weights have variance ``1 / (3 fan_in)``: each layer shrinks the input-dependent part of the
signal about ``sqrt(3)``-fold, so in the 25-layer ConvNet-XS the logits at initialisation are
constant up to ~1e-8 (the biases dominate) and SGD does not get off the ground.
``"orthogonal"`` (orthonormal rows of the ``(out, in * k * k)`` matrix, zero bias) keeps the
signal's scale through every layer (MaxMin preserves norms), as the Lipschitz layers' own
initialisations do; ``"dirac"`` starts a square convolution at the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._base import check_kernel_size, KernelConv, MatrixLayer

__all__ = ["StandardConv2d", "StandardLinear"]

INITS = ("default", "orthogonal", "dirac")


def _initialise(weight: nn.Parameter, bias: nn.Parameter, fan_in: int, init: str) -> None:
    if init == "default":  # nn.Conv2d's / nn.Linear's
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(bias, -bound, bound)
        return
    if init == "orthogonal":
        nn.init.orthogonal_(weight)
    elif init == "dirac" and weight.ndim == 4 and weight.shape[0] == weight.shape[1]:
        nn.init.dirac_(weight)
    elif init == "dirac":
        raise ValueError(f"init='dirac' needs a square convolution, got weight shape {tuple(weight.shape)}")
    else:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    nn.init.zeros_(bias)


class StandardConv2d(KernelConv):
    """``nn.Conv2d`` with circular 'same' padding; ``init`` as in the module doc (default: PyTorch's)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        init: str = "default",
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        _initialise(self.weight, self.bias, in_channels * kernel_size**2, init)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.weight


class StandardLinear(MatrixLayer):
    """``nn.Linear``; ``init``: ``"default"`` (PyTorch's) or ``"orthogonal"`` (zero bias)."""

    def __init__(self, in_features: int, out_features: int, *, init: str = "default") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        _initialise(self.weight, self.bias, in_features, init)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.weight
