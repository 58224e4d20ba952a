"""LOT: Layer-wise Orthogonal Training (Xu, Li & Li, NeurIPS 2022).

The input is zero-padded by ``p = k // 2`` on each side; on the padded ``Hp x Wp`` grid the
convolution is circular, hence block-diagonal in the Fourier basis with one complex
``(out x in)`` matrix ``W_hat(f)`` per frequency. Each is replaced by (an approximation of) its
polar factor ``(W W^H)^{-1/2} W``: ``S = W W^H + 1e-4 I`` is divided by ``||S||_F + 1e-4``, the
coupled Newton-Schulz iteration ``T = (3I - Z Y)/2, Y <- Y T, Z <- T Z`` (``Y_0 = S``,
``Z_0 = I``; 10 steps in training and in eval) makes ``Z ~ S^{-1/2}``, and
``W_orth = Z W_hat / sqrt(||S||_F + 1e-4)``. The output is the inverse FFT of
``W_orth x_hat`` (real part), cropped back to ``H x W``, plus the bias.

Phase convention (checked against the paper's golden logits): the paper's
``shift * conj(fft2(W, (n, n)))`` with ``shift = exp(-2 pi i c (u + v) / n)``, ``c = (k-1)//2``,
is exactly ``_linalg.conv_kernel_fft`` (the frequency form of a centred circular 'same'
``F.conv2d``), laid out ``(Hp, Wp, out, in)``.

Why the default is sound (no estimate involved, so the default IS the paper's maths): every
iterate is a polynomial in ``A = S / ||S||`` (Hermitian, eigenvalues ``a`` in ``(0, 1)``), and
``Y_t = A Z_t``; on an eigenvector ``u_t = sqrt(a) z_t`` obeys ``u_{t+1} = u_t (3 - u_t^2) / 2``,
which maps ``[0, 1]`` into ``[0, 1]``. The singular values of ``W_orth`` are
``u_T * sigma / sqrt(sigma^2 + 1e-4) < u_T <= 1``, so each frequency's matrix has norm <= 1; the
DFT is unitary, taking the real part and cropping are contractions and zero-padding is an
isometry, so the layer is 1-Lipschitz for every input size and iteration count (float32
round-off: tested <= 1 + 1e-4). It is NOT orthogonal: with 10 iterations small singular values
of ``W_hat`` stay far below 1.

lipzoo's default computes the same function faster (equal to the paper's within float
round-off, tested): a real input has a Hermitian spectrum and ``W_orth(-f) = conj(W_orth(f))``,
so only the ``rfft2`` half of the frequencies is orthogonalised; a 1x1 kernel has the same real
matrix at every frequency, so it is orthogonalised once and applied as a plain 1x1 convolution
(no FFT, any input size). ``paper_compatible=True`` runs the paper's literal computation: full
``fft2`` over all frequencies, also for 1x1 kernels. Any input size is accepted (the paper's
cache breaks on a second size); the eval cache holds the weight of the last size seen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import check_kernel_size, as_size, LipschitzModule, map_size, MatrixLayer, spatial_size
from ._linalg import conv_kernel_fft, conv_kernel_rfft, fft_conv2d, matmul
from ._norms import matrix_norm
from ._plain import frequency_op, plain_conv1x1

__all__ = ["LOTConv2d", "LOTLinear", "lot_orthogonalize"]

EPS = 1e-4


def lot_orthogonalize(w: torch.Tensor, iters: int = 10, eps: float = EPS) -> torch.Tensor:
    """LOT's normalised Newton-Schulz polar factor of each (out, in) matrix of a real/complex stack.

    Returns ``Z_T W / sqrt(n)`` with ``n = ||W W^H + eps I||_F + eps`` and ``Z_T`` the coupled
    Newton-Schulz approximation of ``(S / n)^{-1/2}``; every singular value is < 1.
    """
    s = matmul(w, w.mH)
    s.diagonal(dim1=-2, dim2=-1).add_(eps)
    norm = torch.linalg.vector_norm(s, dim=(-2, -1), keepdim=True) + eps
    y = s / norm
    z: torch.Tensor | None = None  # Z_0 = I, kept implicit (I @ M == M exactly in float)
    for t in range(iters):
        t_mat = -0.5 * (y if z is None else matmul(z, y))
        t_mat.diagonal(dim1=-2, dim2=-1).add_(1.5)  # T = (3I - Z Y) / 2
        if t < iters - 1:  # the last Y is never used
            y = matmul(y, t_mat)
        z = t_mat if z is None else matmul(t_mat, z)
    if z is None:
        return w / norm.sqrt()
    return matmul(z, w) / norm.sqrt()




class LOTConv2d(LipschitzModule):
    """LOT convolution: per-frequency Newton-Schulz polar factor on the zero-padded input.

    Parameters ``weight`` (out, in, k, k) and ``bias`` (out): identity (Dirac) kernel and zero
    bias when square, else ``nn.Conv2d``'s default initialisation. Options: ``iters``
    (training Newton-Schulz steps, the paper's ``iter_T``) and ``eval_iters`` (``eval_iter_T``).
    ``compute_weight(size)`` returns the ``(Hp, Wp//2+1, out, in)`` complex matrices for an
    ``H x W`` input (``(Hp, Wp, out, in)`` with ``paper_compatible``), or the real ``(out, in)``
    matrix of a 1x1 kernel.
    """

    size_dependent = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        paper_compatible: bool = False,
        iters: int = 10,
        eval_iters: int = 10,
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        if iters < 0 or eval_iters < 0:
            raise ValueError(f"iters and eval_iters must be >= 0, got {iters} and {eval_iters}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.input_size = as_size(input_size)
        self.paper_compatible = paper_compatible
        self.iters, self.eval_iters = int(iters), int(eval_iters)
        # a 1x1 kernel is the same real matrix at every frequency: no FFT, no size dependence
        self.size_dependent = paper_compatible or kernel_size > 1
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        if in_channels == out_channels:
            nn.init.dirac_(self.weight)
            nn.init.zeros_(self.bias)
        else:  # nn.Conv2d's default initialisation, as the paper (an nn.Conv2d subclass)
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(in_channels * kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    def _iters(self) -> int:
        return self.iters if self.training else self.eval_iters

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        if not self.size_dependent:
            return lot_orthogonalize(self.weight[:, :, 0, 0], self._iters())
        size = size or self.input_size
        if size is None:
            raise ValueError(
                f"{type(self).__name__} with kernel_size={self.kernel_size} needs the input size to build its "
                "per-frequency weight: pass size=(H, W) or construct it with input_size=(H, W)"
            )
        p = self.kernel_size // 2
        n_h, n_w = size[0] + 2 * p, size[1] + 2 * p
        to_freq = conv_kernel_fft if self.paper_compatible else conv_kernel_rfft
        return lot_orthogonalize(to_freq(self.weight, n_h, n_w), self._iters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        if not self.size_dependent:
            return F.conv2d(x, self.effective_weight()[:, :, None, None], self.bias)
        wfreq = self.effective_weight(spatial_size(x))
        p = self.kernel_size // 2
        if p:
            x = F.pad(x, (p, p, p, p))  # zero padding, then circular on the padded grid
        y = fft_conv2d(x, wfreq, full=self.paper_compatible)
        if p:
            y = y[..., p:-p, p:-p]
        return y + self.bias[:, None, None]

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """``max_f sigma_max`` of the per-frequency matrices on the zero-padded grid for ``shape``.

        An upper bound: zero-padding is an isometry, the padded-grid operator is circular (its norm
        is that maximum) and cropping a contraction. A 1x1 kernel (default mode) is one real matrix:
        its exact norm. Where the stored rfft half-spectrum matrices are not exactly
        Hermitian-symmetric, the real operator applies their average with the mirrored conjugate,
        whose norm is at most the larger of the two.
        """
        if not self.size_dependent:
            return matrix_norm(self.effective_weight()), "exact spectral norm (1x1)", None, {}
        return (matrix_norm(self.effective_weight(map_size(shape))), "per-frequency norm on the padded grid",
                None, {})

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """A 1x1 ``nn.Conv2d``, or the matrices for ``shape`` as a FrequencyConv2d on the zero-padded
        grid or one zero-padded kernel."""
        if not self.size_dependent:
            return plain_conv1x1(self.effective_weight(), self.bias)
        size = map_size(shape)
        return frequency_op(self.effective_weight(size), self.bias, size, self.kernel_size // 2, self.paper_compatible,
                            circular)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding=zeros (FFT on padded), "
            f"iters={self.iters}, eval_iters={self.eval_iters}, paper_compatible={self.paper_compatible}"
        )


class LOTLinear(MatrixLayer):
    """Dense LOT layer ``y = Z W x / sqrt(n) + b``: the same normalised Newton-Schulz polar factor.

    ``weight`` (out, in) starts at the identity (zero ``bias``) when square, else with
    ``nn.Linear``'s default initialisation. Options ``iters`` / ``eval_iters`` as for the conv.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        paper_compatible: bool = False,
        iters: int = 10,
        eval_iters: int = 10,
    ) -> None:
        super().__init__()
        if iters < 0 or eval_iters < 0:
            raise ValueError(f"iters and eval_iters must be >= 0, got {iters} and {eval_iters}")
        self.in_features, self.out_features = in_features, out_features
        self.paper_compatible = paper_compatible
        self.iters, self.eval_iters = int(iters), int(eval_iters)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        if in_features == out_features:
            nn.init.eye_(self.weight)
            nn.init.zeros_(self.bias)
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return lot_orthogonalize(self.weight, self.iters if self.training else self.eval_iters)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", iters={self.iters}, eval_iters={self.eval_iters}"
