"""BRO: Block Reflector Orthogonal layers (Lai et al., ICLR 2025, "Enhancing Certified Robustness via Block
Reflector Orthogonal Layers and Logit Annealing Loss").

The maths. For a full-rank ``c x r`` matrix ``V`` (``r < c``, real or complex) the block reflector

    W = I - 2 V (V^H V)^{-1} V^H

is ``I - 2 P`` with ``P`` the orthogonal projector onto the column space of ``V``: Hermitian,
orthogonal (``W^H W = I``) and an involution (``W^2 = I``), by construction and without any
iteration. A convolution is parametrised by a kernel ``V`` of shape ``(c, r, k, k)``
(``c = max(in, out)``); its 2-D FFT gives one complex ``c x r`` matrix ``V_hat(f)`` per frequency,
each is mapped to its block reflector and the input's real FFT is multiplied by it. Cropping the
``c x c`` reflector to ``W[:out, :in]`` keeps orthonormal columns (``out >= in``, an isometry) or
rows (``out < in``, a co-isometry), so channel changes give the same kind of per-frequency
matrix as Cayley and LOT (orthonormal columns or rows of an ``(out, in)`` matrix). The phase of
``V_hat(f)`` cancels in ``V (V^H V)^{-1} V^H``, so the centring of the kernel is irrelevant; and
``V_hat(-f) = conj(V_hat(f))`` gives ``W(-f) = conj(W(f))``: the operator is real and the
``rfft2`` half of the spectrum is enough.

How it is computed, and why the default is sound. As in the paper's code the Gram matrix is
regularised, ``S = V^H V + eps I`` with ``eps = 1e-5 * mean(diag(V^H V)) + tiny`` per frequency
(``tiny = sqrt(finfo.tiny)`` keeps ``S`` positive definite where ``V_hat(f) = 0``). With the
Cholesky factor ``S = L L^H``, ``Q = V L^{-H}`` and ``W = I - 2 Q Q^H``. If ``V = U diag(s) R^H``
then ``Q Q^H = U diag(s^2 / (s^2 + eps)) U^H``, so ``W`` is Hermitian with eigenvalues
``1 - 2 s^2 / (s^2 + eps)`` in ``(-1, 1]``: ``||W|| <= 1`` for EVERY parameter value (also rank
deficient ones), and ``W`` is orthogonal up to ``eps / s^2`` (exactly ``I - 2P`` as eps -> 0).
Forming ``Q Q^H`` as a product keeps it Hermitian positive semi-definite in floating point, so
round-off can only act through ``||Q||`` (tested <= 1 + 1e-4 after adversarial optimizer steps).
Cropping, the unitary DFT and the real part of the inverse FFT do not increase norms.

Padding. ``padding="circular"`` (default): circular 'same' convolution on the ``H x W`` grid, the
Cayley convention; the layer is orthogonal. ``padding="zeros"``: the paper's code convention (as
LOT): zero-pad by ``k // 2``, apply the reflectors on the padded grid, crop back; 1-Lipschitz but
not orthogonal (the crop loses the energy pushed into the border).

Options: ``rank`` r (default ``max(1, c // 2)``; the paper's LipConvNet uses ``c / 8`` for its
convolutions, its ``mask_level``), ``init`` ``"identity"`` (default, the paper's ``id_init``: the
centre tap of ``V`` is ``[I_r; 0]``, so ``W = diag(-I_r, I_{c-r})`` at every frequency) or
``"orthogonal"``. A 1x1 kernel is the same real matrix at every frequency: its reflector is
computed once and applied as a plain 1x1 convolution (no FFT, any input size). Stride, groups and
dilation are not supported (the paper's stride 2 is an invertible downsampling before a stride-1
layer: use ``nn.PixelUnshuffle``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import LipschitzModule, MatrixLayer, as_size, check_kernel_size, map_size, spatial_size
from ._fourier import conv_kernel_rfft, fft_conv2d
from ._linalg import matmul
from ._norms import matrix_norm
from ._plain import frequency_op, plain_conv1x1

__all__ = ["BROConv2d", "BROLinear", "block_reflector", "EPS_REL"]

#: relative regularisation of the Gram matrix (the paper's code: 1e-5 times its mean diagonal)
EPS_REL = 1e-5
PADDINGS = ("circular", "zeros")


def block_reflector(v: torch.Tensor, out_features: int, in_features: int, eps_rel: float = EPS_REL) -> torch.Tensor:
    """``(I - 2 V (V^H V + eps I)^{-1} V^H)[:out, :in]`` for a (..., c, r) real or complex stack ``V``.

    ``eps = eps_rel * mean(diag(V^H V)) + sqrt(finfo.tiny)`` per matrix. Computed as
    ``I - 2 Q Q^H`` with ``Q = V L^{-H}``, ``L`` the Cholesky factor of ``V^H V + eps I``; the result
    has norm <= 1 for every ``V`` (eigenvalues ``1 - 2 s^2 / (s^2 + eps)``), and is orthogonal
    (``W^H W = W^2 = I`` before the crop) up to ``eps / s_min(V)^2``.
    """
    c, r = v.shape[-2:]
    if not (1 <= out_features <= c and 1 <= in_features <= c):
        raise ValueError(f"cannot crop a {c} x {c} reflector to {out_features} x {in_features}")
    gram = matmul(v.mH, v)
    real = torch.finfo(v.real.dtype if v.is_complex() else v.dtype)
    diag = gram.diagonal(dim1=-2, dim2=-1).real
    eps = eps_rel * diag.mean(dim=-1) + math.sqrt(real.tiny)
    eye_r = torch.eye(r, dtype=v.dtype, device=v.device)
    chol = torch.linalg.cholesky(gram + eps[..., None, None] * eye_r)
    q = torch.linalg.solve_triangular(chol.mH, v, upper=True, left=False)  # Q L^H = V
    q_out = q[..., :out_features, :]
    q_in = q[..., :in_features, :]
    w = -2 * matmul(q_out, q_in.mH)
    w.diagonal(dim1=-2, dim2=-1).add_(1.0)  # the identity's part of the crop is its leading diagonal
    return w


def _init_v(v: torch.Tensor, init: str) -> None:
    """Identity (centre tap ``[I_r; 0]``) or orthogonal initialisation of a (c, r[, k, k]) parameter, in place."""
    with torch.no_grad():
        if init == "identity":
            v.zero_()
            r = v.shape[1]
            idx = torch.arange(r)
            if v.ndim == 4:
                v[idx, idx, v.shape[2] // 2, v.shape[3] // 2] = 1.0
            else:
                v[idx, idx] = 1.0
        elif init == "orthogonal":
            nn.init.orthogonal_(v)
        else:
            raise ValueError(f"init must be 'identity' or 'orthogonal', got {init!r}")


def _check_rank(rank: int | None, c: int, what: str) -> int:
    if rank is None:
        return max(1, c // 2)
    rank = int(rank)
    if not 1 <= rank <= c or (rank == c and c > 1):
        raise ValueError(
            f"rank must be between 1 and {max(1, c - 1)} (below max(in, out) = {c}: rank {c} makes the "
            f"{what} the constant -I), got {rank}"
        )
    return rank


class BROConv2d(LipschitzModule):
    """Block reflector orthogonal convolution (stride 1, 'same' output size).

    Parameters: ``weight`` = V, shape ``(c, rank, k, k)`` with ``c = max(in, out)``, and ``bias``
    (out) U(+-1/sqrt(rank k^2)) (``nn.Conv2d``'s default for V's fan-in, as the paper). Options:
    ``rank``, ``padding`` ("circular": orthogonal; "zeros": the paper's convention, 1-Lipschitz),
    ``init`` ("identity" or "orthogonal"), ``input_size`` (the size ``compute_weight()`` uses when
    called without one; any size works in ``forward``). ``compute_weight(size)`` returns the
    complex ``(H', W'//2+1, out, in)`` reflectors (``H' = H + 2 (k//2)`` for zero padding), or the
    real ``(out, in)`` matrix of a 1x1 kernel.
    """

    size_dependent = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        rank: int | None = None,
        padding: str = "circular",
        init: str = "identity",
        eps_rel: float = EPS_REL,
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if not eps_rel > 0:
            raise ValueError(f"eps_rel must be > 0 (it keeps V^H V invertible), got {eps_rel}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.max_channels = c = max(in_channels, out_channels)
        self.rank = _check_rank(rank, c, "reflector")
        self.padding, self.init, self.eps_rel = padding, init, float(eps_rel)
        self.input_size = as_size(input_size)
        # a 1x1 kernel is the same real matrix at every frequency: no FFT, no size dependence
        self.size_dependent = kernel_size > 1
        self.weight = nn.Parameter(torch.empty(c, self.rank, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        _init_v(self.weight, init)
        bound = 1 / math.sqrt(self.rank * kernel_size**2)
        nn.init.uniform_(self.bias, -bound, bound)

    def padded_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The grid the reflectors act on for an ``H x W`` input."""
        p = self.kernel_size // 2 if self.padding == "zeros" else 0
        return size[0] + 2 * p, size[1] + 2 * p

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        if not self.size_dependent:
            return block_reflector(self.weight[:, :, 0, 0], self.out_channels, self.in_channels, self.eps_rel)
        size = size or self.input_size
        if size is None:
            raise ValueError(
                f"{type(self).__name__} with kernel_size={self.kernel_size} needs the input size to build its "
                "per-frequency weight: pass size=(H, W) or construct it with input_size=(H, W)"
            )
        vf = conv_kernel_rfft(self.weight, *self.padded_size(size))  # (H', W'//2+1, c, r)
        return block_reflector(vf, self.out_channels, self.in_channels, self.eps_rel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        if not self.size_dependent:
            return F.conv2d(x, self.effective_weight()[:, :, None, None], self.bias)
        wfreq = self.effective_weight(spatial_size(x))
        p = self.kernel_size // 2 if self.padding == "zeros" else 0
        if p:
            x = F.pad(x, (p, p, p, p))
        y = fft_conv2d(x, wfreq)
        if p:
            y = y[..., p:-p, p:-p]
        return y + self.bias[:, None, None]

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """``max_f sigma_max`` of the per-frequency reflectors the layer applies for ``shape``.

        EXACT for circular padding; with ``padding="zeros"`` an upper bound (zero-padding is an
        isometry and cropping a contraction). A 1x1 kernel is one real matrix: its exact norm. The
        rfft half-spectrum is enough: where the stored matrices are not exactly
        Hermitian-symmetric, the real operator applies their average with the mirrored conjugate,
        whose norm is at most the larger of the two.
        """
        if not self.size_dependent:
            return matrix_norm(self.effective_weight()), "exact spectral norm (1x1)", None, {}
        how = "exact per-frequency norm" if self.padding == "circular" else "per-frequency norm on the padded grid"
        return matrix_norm(self.effective_weight(map_size(shape))), how, None, {}

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """A 1x1 ``nn.Conv2d``, or the reflectors for ``shape`` as a FrequencyConv2d or one full-size kernel
        (zero-padded with ``padding="zeros"``)."""
        if not self.size_dependent:
            return plain_conv1x1(self.effective_weight(), self.bias)
        size = map_size(shape)
        pad = self.kernel_size // 2 if self.padding == "zeros" else 0
        return frequency_op(self.effective_weight(size), self.bias, size, pad, False, circular)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
            f"padding={self.padding} (FFT), init={self.init}"
        )


class BROLinear(MatrixLayer):
    """Dense block reflector ``y = (I - 2 V (V^H V + eps I)^{-1} V^H)[:out, :in] x + b``.

    ``weight`` = V, shape ``(max(in, out), rank)`` (identity or orthogonal init), ``bias`` (out)
    U(+-1/sqrt(rank)). Orthonormal columns (out >= in) or rows; norm <= 1 for every V.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int | None = None,
        init: str = "identity",
        eps_rel: float = EPS_REL,
    ) -> None:
        super().__init__()
        if not eps_rel > 0:
            raise ValueError(f"eps_rel must be > 0 (it keeps V^H V invertible), got {eps_rel}")
        self.in_features, self.out_features = in_features, out_features
        c = max(in_features, out_features)
        self.rank = _check_rank(rank, c, "reflector")
        self.init, self.eps_rel = init, float(eps_rel)
        self.weight = nn.Parameter(torch.empty(c, self.rank))
        self.bias = nn.Parameter(torch.empty(out_features))
        _init_v(self.weight, init)
        bound = 1 / math.sqrt(self.rank)
        nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return block_reflector(self.weight, self.out_features, self.in_features, self.eps_rel)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, init={self.init}"
