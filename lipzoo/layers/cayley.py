"""Cayley: orthogonal convolutions by a Cayley transform per Fourier frequency (Trockman & Kolter, ICLR 2021).

A circular 'same' convolution is block-diagonal in the Fourier basis: one complex (out x in)
matrix ``W_hat(u, v)`` per frequency. The layer rescales the whole stack to Frobenius norm
``alpha`` (a trainable scalar), maps each matrix through the Cayley transform
``Q = [(I + A)^{-1}(I - A); -2 V (I + A)^{-1}]`` with ``W_hat = [U; V]`` and
``A = U - U^H + V^H V``, and applies ``Q`` to the input's 2-D real FFT. A 1x1 kernel has one real
matrix ``W`` at every frequency (``||W_hat||_F = sqrt(#freq) ||W||_F``), so its ``Q`` is one real
matrix too and the layer applies it pointwise (a 1x1 ``conv2d``), without FFTs: the same operator.

Phase convention (checked against the paper's golden logits): the paper takes
``rfft2(W, (n, n))``, conjugates it and multiplies by ``exp(-2 pi i c (u + v) / n)`` with
``c = (k - 1) // 2``. That is exactly ``conj(rfft2(W) * exp(+2 pi i c (u + v) / n))``, i.e. the
frequency form of PyTorch's circular 'same' cross-correlation ``F.conv2d`` with a centred
kernel, so the shared ``_fourier.conv_kernel_rfft`` / ``fft_conv2d`` reproduce it; only the
paper's normalisation (Frobenius norm over the ``H x (W//2 + 1)`` half spectrum) is specific.

Why the default is sound: ``A + A^H = 2 V^H V``, hence ``Q^H Q = I`` exactly and ``I + A`` is
always invertible (``Re x^H (I + A) x >= |x|^2``), so every per-frequency matrix has orthonormal
columns (rows if in > out); Hermitian symmetry of the spectrum is preserved by the transform, so
the layer is a real orthogonal (norm-preserving) operator up to float round-off, with no
estimate involved. The default is therefore the paper's maths; ``paper_compatible`` selects the
same function.

Fixes relative to the paper's code: ``alpha`` is registered at construction (value
``||W_hat||_F`` at ``input_size``, default 32) instead of lazily in the first forward, so it is
trained and loads with ``strict=True``; any input size works (the weight is recomputed and
cached per size) instead of raising a shape error after the first size seen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import check_kernel_size, as_size, LipschitzModule, map_size, MatrixLayer, spatial_size
from ._fourier import conv_kernel_rfft, fft_conv2d, frobenius_norm, half_spectrum_map
from ._linalg import cayley_transform
from ._norms import matrix_norm
from ._plain import frequency_op

__all__ = ["CayleyConv2d", "CayleyLinear", "cayley_frequency_weight", "initial_alpha"]

DEFAULT_INPUT_SIZE = 32


def initial_alpha(weight: torch.Tensor, size: tuple[int, int] | int) -> torch.Tensor:
    """``||W_hat||_F`` at ``size`` ((H, W) or an int): the initial ``alpha`` of a Cayley convolution
    with kernel ``weight`` (out, in, k, k), as a 0-d tensor without gradient (float64 for a float64
    kernel, else float32). The paper sets it in its first forward, :class:`CayleyConv2d` at
    construction, and :mod:`lipzoo.zoo.convert` for checkpoints saved before that forward."""
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"initial_alpha expects a conv kernel tensor (out, in, k, k), got {got}")
    n_h, n_w = as_size(size)
    w = weight.detach()
    if w.dtype != torch.float64:
        w = w.float()
    with torch.no_grad():
        return torch.linalg.vector_norm(conv_kernel_rfft(w, n_h, n_w)).reshape(())


def cayley_frequency_weight(weight: torch.Tensor, alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-frequency orthogonal matrices ``(H, W//2+1, out, in)`` of a Cayley convolution.

    ``W_hat`` is the circular 'same' cross-correlation of ``weight`` in the frequency domain,
    rescaled to Frobenius norm ``alpha`` (over all rfft frequencies) before the Cayley transform.
    For 1x1 kernels all frequencies share one real matrix, transformed once and broadcast.
    """
    n_h, n_w = size
    out_c, in_c, k_h, k_w = weight.shape
    if k_h == k_w == 1:
        # A 1x1 kernel has the same real matrix W at every frequency and ||W_hat||_F =
        # sqrt(#freq) ||W||_F: transform it once and broadcast (same function, far cheaper).
        n_freq = n_h * (n_w // 2 + 1)
        w = weight[:, :, 0, 0]
        q = cayley_transform(alpha * w / (math.sqrt(n_freq) * torch.linalg.vector_norm(w)))
        q = q.to(torch.promote_types(q.dtype, torch.complex64))
        return q.expand(n_h, n_w // 2 + 1, out_c, in_c)
    wf = conv_kernel_rfft(weight, n_h, n_w)
    wf = wf * (alpha / frobenius_norm(wf))
    return half_spectrum_map(cayley_transform, wf, n_w)


class CayleyConv2d(LipschitzModule):
    """Orthogonal circular convolution via the Cayley transform of each frequency's matrix.

    Parameters are ``weight`` (out, in, k, k) and ``bias`` (out) with ``nn.Conv2d``'s default
    initialisation, and the scalar ``alpha`` = ``||W_hat||_F`` at ``input_size`` (default 32x32).
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
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.input_size = as_size(input_size, (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE))
        self.paper_compatible = paper_compatible
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # nn.Conv2d's default initialisation (same random stream)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_channels * kernel_size**2)
        nn.init.uniform_(self.bias, -bound, bound)
        # registered eagerly (the paper creates it in the first forward, after the optimiser)
        self.alpha = nn.Parameter(initial_alpha(self.weight, self.input_size).to(self.weight.dtype))

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return cayley_frequency_weight(self.weight, self.alpha, size or self.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        wfreq = self.effective_weight(spatial_size(x))
        if self.kernel_size == 1:
            # every frequency holds the same real matrix Q: the circular convolution is the
            # pointwise product by Q, applied without FFTs (same function, far cheaper)
            return F.conv2d(x, wfreq[0, 0].real[:, :, None, None], self.bias)
        y = fft_conv2d(x, wfreq)
        return y + self.bias[:, None, None]

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """EXACT: ``max_f sigma_max`` of the per-frequency matrices the layer applies on the input grid.

        The rfft half-spectrum is enough: where the stored matrices are not exactly
        Hermitian-symmetric, the real operator applies their average with the mirrored conjugate,
        whose norm is at most the larger of the two.
        """
        return matrix_norm(self.effective_weight(map_size(shape))), "exact per-frequency norm", None, {}

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """The per-frequency matrices for ``shape`` as a FrequencyConv2d or one full-size circular kernel."""
        size = map_size(shape)
        return frequency_op(self.effective_weight(size), self.bias, size, 0, False, circular)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding=circular (FFT), "
            f"input_size={self.input_size}"
        )


class CayleyLinear(MatrixLayer):
    """Dense layer ``y = Q x + b`` with ``Q = cayley(alpha * W / ||W||_F)`` (orthonormal rows or columns).

    ``weight`` and ``bias`` start U(+-1/sqrt(in)); ``alpha`` (shape (1,)) starts at ``||W||_F``.
    """

    def __init__(self, in_features: int, out_features: int, *, paper_compatible: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.paper_compatible = paper_compatible
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.alpha = nn.Parameter(self.weight.detach().norm().reshape(1).clone())

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return cayley_transform(self.alpha * self.weight / self.weight.norm())
