"""BCOP: Block Convolution Orthogonal Parameterization (Li et al., NeurIPS 2019) and BjorckLinear.

``BCOPConv2d`` orthonormalises 2(k-1)+1 unconstrained c_max x c_max matrices at once with the
Bjorck-Bowie iteration (20 iterations, power-iteration prescaling). The first gives an
orthogonal H; the others give symmetric half-rank projectors P_m = (Q_m M)(Q_m M)^T (mask M).
Pairs of projectors give 2x2 block kernels [[P Q, P(I-Q)], [(I-P)Q, (I-P)(I-Q)]], whose matrix
convolution, left-multiplied by H, is a k x k kernel that is orthogonal for circular padding
and any input size. ``BjorckLinear`` is the paper's dense head (lipnn ``BjorckLinear``): Bjorck
(3 iterations in training, 15 in eval, beta 0.5, power-iteration prescaling) on a free weight.

Why the default is sound: Bjorck with finitely many iterations (and a power-iteration estimate,
which converges from below, as prescaling) is only approximately orthogonal, so by default the
assembled kernel (resp. matrix) is divided by ``max(1, gram_bound)``, a GUARANTEED upper bound
on its l2 operator norm for every padding and input size (Schur test on the autocorrelation);
for a near-orthogonal kernel that bound is 1 + O(round-off), so orthogonality is kept.
``paper_compatible=True`` skips the rescale and reproduces the paper's function exactly.

The power-iteration prescaling starts from a fixed pseudo-random vector (the paper draws a
fresh random one on every call), so the forward pass is a pure function of the parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._base import check_kernel_size, KernelConv, MatrixLayer
from ._linalg import bjorck_orthonormalize, gram_row_sums, power_iteration_sigma

__all__ = ["BCOPConv2d", "BjorckLinear", "bjorck", "bcop_kernel", "norm_bound"]

POWER_ITERS = 10
def bjorck(
    w: torch.Tensor, iters: int, beta: float = 0.5, power_iteration_scaling: bool = True
) -> torch.Tensor:
    """The paper's ``bjorck_orthonormalize`` on a (..., m, n) stack (first order).

    Wide matrices are handled transposed. With ``power_iteration_scaling`` each matrix is first
    divided by its (deterministic) power-iteration sigma estimate, without gradient through the
    estimate; otherwise by sqrt(shape[0] * shape[1]) (the paper's "default scaling", which for a
    batched stack uses the batch and row sizes: a quirk kept for fidelity).
    """
    wide = w.shape[-2] < w.shape[-1]
    if wide:
        w = w.transpose(-1, -2)
    if power_iteration_scaling:
        w = w / power_iteration_sigma(w.detach(), POWER_ITERS)[..., None, None]
    else:
        w = w / math.sqrt(w.shape[0] * w.shape[1])
    w = bjorck_orthonormalize(w, iters=iters, beta=beta)
    return w.transpose(-1, -2) if wide else w


def norm_bound(weight: torch.Tensor) -> torch.Tensor:
    """Guaranteed upper bound on the l2 norm of a conv kernel (out, in, k, k) or matrix (out, in).

    The Schur / Gershgorin test on the autocorrelation of the kernel, taken on the side where it
    is near the identity for a near-isometry: ``K^T K`` when out >= in, ``K K^T`` otherwise
    (``||K|| = ||K^T||``). Valid for zero and circular padding and every input size.
    """
    over = "in" if weight.shape[0] >= weight.shape[1] else "out"
    return gram_row_sums(weight, over).max().sqrt()


def _block_orth(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """The 2x2 block kernel [[p1 p2, p1 (I-p2)], [(I-p1) p2, (I-p1)(I-p2)]], shape (2, 2, n, n)."""
    eye = torch.eye(p1.shape[-1], dtype=p1.dtype, device=p1.device)
    a = torch.stack([p1, eye - p1])
    b = torch.stack([p2, eye - p2])
    return a[:, None] @ b[None, :]


def _matrix_conv(m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """Full 2-D convolution of kernels of matrices: (s, s, n, n) * (t, t, n, n) -> (s+t-1, ..., n, n).

    ``out[i, j] = sum_{a, b} m1[a, b] @ m2[i - a, j - b]``, accumulated in the paper's order.
    """
    s, t = m1.shape[0], m2.shape[0]
    prod = m1[:, :, None, None] @ m2[None, None]  # (s, s, t, t, n, n)
    out = m1.new_zeros(s + t - 1, s + t - 1, *m1.shape[-2:])
    for a in range(s):
        for b in range(s):
            out[a : a + t, b : b + t] += prod[a, b]
    return out


def bcop_kernel(ortho: torch.Tensor, mask: torch.Tensor, in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """The (out, in, k, k) BCOP kernel from orthonormal matrices ``ortho`` (2(k-1)+1, n, n).

    Exactly the paper's assembly, including its conventions (its taps are transposed in space,
    and a square 1x1 kernel is H itself rather than H^T).
    """
    h = ortho[0, :in_channels, :out_channels]  # (in, out)
    k = kernel_size
    if k == 1:
        w = h if in_channels == out_channels else h.transpose(0, 1)
        return w[:, :, None, None]
    q = ortho[1:] * mask
    proj = q @ q.transpose(-1, -2)  # symmetric half-rank projectors
    p = _block_orth(proj[0], proj[1])
    for m in range(1, k - 1):
        p = _matrix_conv(p, _block_orth(proj[2 * m], proj[2 * m + 1]))
    if in_channels <= out_channels:
        return (h @ p).permute(3, 2, 1, 0)  # taps (k, k, in, out) -> (out, in, k, k)
    return (h.transpose(0, 1) @ p).permute(2, 3, 1, 0)  # taps (k, k, out, in)


class BCOPConv2d(KernelConv):
    """BCOP convolution (orthogonal, circular padding k//2, stride 1).

    Trainable: ``param_matrices`` (2(k-1)+1, c_max, c_max) and ``bias`` (out); ``mask`` is a
    persistent buffer. Options: ``bjorck_iters`` (20), ``power_iteration_scaling`` (True),
    ``stride`` (must be 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        paper_compatible: bool = False,
        bjorck_iters: int = 20,
        power_iteration_scaling: bool = True,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError(f"BCOPConv2d only supports stride 1, got stride={stride}")
        check_kernel_size(kernel_size)
        if bjorck_iters < 1:
            raise ValueError(f"bjorck_iters must be >= 1, got {bjorck_iters}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.paper_compatible = paper_compatible
        self.bjorck_iters = bjorck_iters
        self.power_iteration_scaling = power_iteration_scaling
        self.max_channels = c = max(in_channels, out_channels)
        self.num_kernels = 2 * (kernel_size - 1) + 1
        self.param_matrices = nn.Parameter(torch.empty(self.num_kernels, c, c))
        half = torch.zeros(self.num_kernels - 1, 1, c)
        half[..., : c // 2] = 1.0
        self.register_buffer("mask", half)
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each matrix orthogonal with gain 1/sqrt(c_max); bias U(+-1/sqrt(out)) (the paper's)."""
        with torch.no_grad():
            for i in range(self.num_kernels):
                nn.init.orthogonal_(self.param_matrices[i], gain=1.0 / math.sqrt(self.max_channels))
            bound = 1.0 / math.sqrt(self.out_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        ortho = bjorck(self.param_matrices, self.bjorck_iters, power_iteration_scaling=self.power_iteration_scaling)
        kernel = bcop_kernel(ortho, self.mask, self.in_channels, self.out_channels, self.kernel_size)
        if self.paper_compatible:
            return kernel
        return kernel / norm_bound(kernel).clamp_min(1.0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bjorck_iters={self.bjorck_iters}, paper_compatible={self.paper_compatible}"


class BjorckLinear(MatrixLayer):
    """Dense layer with a Bjorck-orthonormalised weight (the paper's head for BCOP).

    ``weight`` is the free matrix (the paper's ``parametrizations.weight.original``); the layer
    applies ``bjorck(weight)`` with ``train_iters`` (3) iterations in training mode and
    ``eval_iters`` (15) in eval mode, beta 0.5, power-iteration prescaling. At construction the
    orthogonal initial weight is orthonormalised once with ``eval_iters`` iterations (the
    paper's ``right_inverse``). Bias: U(+-1/sqrt(in)), as ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        paper_compatible: bool = False,
        train_iters: int = 3,
        eval_iters: int = 15,
        beta: float = 0.5,
        power_iteration_scaling: bool = True,
    ) -> None:
        super().__init__()
        if train_iters < 1 or eval_iters < 1:
            raise ValueError(f"iteration counts must be >= 1, got train_iters={train_iters}, eval_iters={eval_iters}")
        self.in_features, self.out_features = in_features, out_features
        self.paper_compatible = paper_compatible
        self.train_iters, self.eval_iters, self.beta = train_iters, eval_iters, beta
        self.power_iteration_scaling = power_iteration_scaling
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        with torch.no_grad():
            bound = 1.0 / math.sqrt(in_features)
            nn.init.uniform_(self.bias, -bound, bound)
            nn.init.orthogonal_(self.weight)
            self.weight.copy_(self._bjorck(self.weight, eval_iters))

    def _bjorck(self, w: torch.Tensor, iters: int) -> torch.Tensor:
        return bjorck(w, iters, beta=self.beta, power_iteration_scaling=self.power_iteration_scaling)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        w = self._bjorck(self.weight, self.train_iters if self.training else self.eval_iters)
        if self.paper_compatible:
            return w
        return w / norm_bound(w).clamp_min(1.0)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", train_iters={self.train_iters}, eval_iters={self.eval_iters}, "
                f"paper_compatible={self.paper_compatible}")
