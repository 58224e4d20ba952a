"""AOC: Adaptive Orthogonal Convolution, stride 1 (Boissin et al. 2025, "An Adaptive Orthogonal Convolution
Scheme for Efficient and Flexible CNN Architectures"; the deel-ai ``orthogonium`` library).

The maths (the stride-1 branch of the scheme, orthogonium's fast block convolution). Let
``c = max(in, out)`` and ``r = max(1, c // 2)``. ``2k`` free ``c x r`` matrices are orthonormalised
(``M_j^T M_j = I_r``) and give symmetric projectors ``P_j = M_j M_j^T``. Then

- ``H = (I - 2 P_0)(I - 2 P_1)``: a product of two block reflectors, an orthogonal 1x1 kernel,
  cropped to its first ``min(in, out)`` columns (orthonormal columns);
- for ``m = 1 .. k-1`` the 2x2 kernel ``B_m = [P + (I - P) z_1] [Q + (I - Q) z_2]`` with
  ``P = P_{2m}``, ``Q = P_{2m+1}`` (taps ``P Q, P (I-Q), (I-P) Q, (I-P)(I-Q)``): its symbol on the
  unit torus is a product of two unitaries (``(P + (I-P) z)^H (P + (I-P) z) = P + (I-P) |z|^2 = I``);
- the layer's ``k x k`` kernel is the block convolution (composition) ``B_{k-1} * ... * B_1 * H``,
  whose symbol is the product of the symbols: orthonormal columns at every frequency, i.e. an
  orthogonal (isometric) circular convolution for every input size. When ``out < in`` the
  channel axes of the ``(in, out, k, k)`` result are swapped: the adjoint's taps (mirrored in
  space, which keeps orthogonality), a co-isometry. The kernel is applied as a plain circular
  'same' ``F.conv2d`` (padding ``k // 2``): no FFT, an explicit kernel.

Why the default is sound. The ``M_j`` are orthonormalised by the first-order Bjorck iteration
(``bjorck_iters``, default 20, after a deterministic power-iteration prescaling, as
:func:`lipzoo.layers.bcop.bjorck`); finitely many iterations are only approximately orthogonal,
so the assembled kernel is divided by ``max(1, norm_bound(kernel))``, the Schur test on its
autocorrelation: a GUARANTEED bound on the l2 norm of the convolution for circular and zero
padding and every input size (BCOP's rule here). For a converged kernel that bound is
``1 + O(round-off)``, so orthogonality is kept.

Supported: stride 1, groups 1, no dilation, odd kernels, circular padding (the orthogonal case).
Not supported (orthogonium has them): native striding (RKO and BCOP x RKO branches), grouped and
dilated convolutions, transposed convolutions; ``stride != 1`` raises.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import KernelConv, MatrixLayer, check_kernel_size
from .bcop import bjorck, norm_bound

__all__ = ["AOCConv2d", "AOCLinear", "aoc_kernel", "compose_kernels"]


def compose_kernels(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Kernel of ``second`` applied after ``first`` (cross-correlations): (c2, c1, a, a), (c3, c2, b, b) -> (c3, c1, a+b-1, a+b-1).

    ``C[o, i, s] = sum_m sum_{t + u = s} second[o, m, t] first[m, i, u]``: the full convolution of
    the two matrix-valued kernels, computed as one ``F.conv2d`` of ``first`` (input channels as the
    batch) with the spatially flipped ``second``.
    """
    b_h, b_w = second.shape[-2:]
    out = F.conv2d(first.transpose(0, 1), second.flip(-2, -1), padding=(b_h - 1, b_w - 1))
    return out.transpose(0, 1)


def _two_by_two(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The (n, n, 2, 2) kernel with taps [[P Q, P (I-Q)], [(I-P) Q, (I-P)(I-Q)]] (2x1 then 1x2 factor)."""
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    rows = torch.stack([p, eye - p])  # vertical taps
    cols = torch.stack([q, eye - q])  # horizontal taps
    taps = rows[:, None] @ cols[None, :]  # (2, 2, n, n)
    return taps.permute(2, 3, 0, 1)


def aoc_kernel(ortho: torch.Tensor, in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """The (out, in, k, k) kernel from 2k column-orthonormal (c, r) matrices (see the module docstring)."""
    proj = ortho @ ortho.transpose(-1, -2)  # (2k, c, c) symmetric projectors
    c = proj.shape[-1]
    eye = torch.eye(c, dtype=proj.dtype, device=proj.device)
    h = (eye - 2 * proj[0]) @ (eye - 2 * proj[1])
    kernel = h[:, : min(in_channels, out_channels), None, None]  # (c, c_min, 1, 1)
    for m in range(1, kernel_size):
        kernel = compose_kernels(kernel, _two_by_two(proj[2 * m], proj[2 * m + 1]))
    if out_channels < in_channels:
        kernel = kernel.transpose(0, 1)
    return kernel


class AOCConv2d(KernelConv):
    """Adaptive orthogonal convolution, stride 1, circular padding ``k // 2`` (orthogonal).

    Trainable: ``param_matrices`` (2k, c, c // 2) (c = max(in, out)), each initialised
    orthogonal, and ``bias`` (out) U(+-1/sqrt(in k^2)) (``nn.Conv2d``'s default). Options:
    ``bjorck_iters`` (20), ``stride`` (must be 1), ``input_size`` (accepted for the layer-table
    protocol; the kernel does not depend on it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        bjorck_iters: int = 20,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError(
                f"AOCConv2d supports only stride 1 (orthogonium's strided RKO / BCOP x RKO branches are not "
                f"implemented), got stride={stride}; downsample with nn.PixelUnshuffle instead"
            )
        check_kernel_size(kernel_size)
        if bjorck_iters < 1:
            raise ValueError(f"bjorck_iters must be >= 1, got {bjorck_iters}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.bjorck_iters = int(bjorck_iters)
        self.max_channels = c = max(in_channels, out_channels)
        self.param_matrices = nn.Parameter(torch.empty(2 * kernel_size, c, max(1, c // 2)))
        self.bias = nn.Parameter(torch.empty(out_channels))
        with torch.no_grad():
            for i in range(2 * kernel_size):
                nn.init.orthogonal_(self.param_matrices[i])
            bound = 1 / math.sqrt(in_channels * kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        ortho = bjorck(self.param_matrices, self.bjorck_iters)
        kernel = aoc_kernel(ortho, self.in_channels, self.out_channels, self.kernel_size)
        return kernel / norm_bound(kernel).clamp_min(1.0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bjorck_iters={self.bjorck_iters}"


class AOCLinear(MatrixLayer):
    """Dense orthogonal layer (orthogonium's ``OrthoLinear``): Bjorck-orthonormalised weight, soundly rescaled.

    ``weight`` (out, in) starts orthogonal; the layer applies ``bjorck(weight, bjorck_iters)``
    (power-iteration prescaling) divided by ``max(1, norm_bound)`` (Schur test, a guaranteed bound
    on its spectral norm). ``bias`` U(+-1/sqrt(in)), as ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, *, bjorck_iters: int = 20) -> None:
        super().__init__()
        if bjorck_iters < 1:
            raise ValueError(f"bjorck_iters must be >= 1, got {bjorck_iters}")
        self.in_features, self.out_features = in_features, out_features
        self.bjorck_iters = int(bjorck_iters)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        with torch.no_grad():
            nn.init.orthogonal_(self.weight)
            bound = 1 / math.sqrt(in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        w = bjorck(self.weight, self.bjorck_iters)
        return w / norm_bound(w).clamp_min(1.0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bjorck_iters={self.bjorck_iters}"
