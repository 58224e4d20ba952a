"""AOL: Almost-Orthogonal Lipschitz layers (Prach & Lampert, ECCV 2022).

The effective weight is ``W diag(d)`` with ``d_i = (sum_j sum_s |(W^T W)_ij(s)| + eps)^(-1/2)``,
where ``W^T W`` is taken in its convolution form (the (2k-1)^2 autocorrelation of the kernel).
By the Schur test ``||W diag(d)||_2 <= 1`` for every input size and both zero and circular
padding: a guaranteed bound, not an estimate. AOL is 1-Lipschitz but not orthogonal. This is
the paper's function, so the family has no separate paper-compatible mode (``paper_mode="same"``
in :data:`lipzoo.layers.LAYERS`).
"""

from __future__ import annotations


import torch
from torch import nn

from ._base import check_kernel_size, KernelConv, MatrixLayer
from ._linalg import gram_row_sums

__all__ = ["AOLConv2d", "AOLLinear", "aol_rescale"]

EPS = 1e-6


def aol_rescale(weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``W diag(d)``: the AOL rescaling of a (out, in, k, k) kernel or (out, in) matrix."""
    d = (gram_row_sums(weight, "in") + eps).rsqrt()
    shape = (1, -1) + (1,) * (weight.ndim - 2)
    return weight * d.view(shape)


class AOLConv2d(KernelConv):
    """AOL convolution with circular 'same' padding.

    ``init``: ``"dirac"`` (identity, the paper's block default) or ``"orthogonal"`` (the paper's
    first and head convolutions in training). The bias starts at zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        init: str = "dirac",
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if init == "dirac":
            nn.init.dirac_(self.weight)
        elif init == "orthogonal":
            nn.init.orthogonal_(self.weight)
        else:
            raise ValueError(f"init must be 'dirac' or 'orthogonal', got {init!r}")

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return aol_rescale(self.weight)


class AOLLinear(MatrixLayer):
    """AOL dense layer: ``W diag(d)`` with ``d_i = (sum_j |W^T W|_ij + eps)^(-1/2)``."""

    def __init__(self, in_features: int, out_features: int, *, init: str = "orthogonal") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        if init == "orthogonal":
            nn.init.orthogonal_(self.weight)
        elif init == "identity":
            nn.init.eye_(self.weight)
        else:
            raise ValueError(f"init must be 'orthogonal' or 'identity', got {init!r}")

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return aol_rescale(self.weight)
