"""Guaranteed l2 operator-norm bounds (float64), shared by the layers' ``norm_bound`` methods.

Everything here is a pure function of tensors (the dense-norm cache aside): no modules. The
layers prove their own bounds with these (see :meth:`LipschitzModule.norm_bound`); the audit
(:mod:`lipzoo.audit`) uses them for plain ``nn.Conv2d`` / ``nn.Linear`` and re-exports the
public ones.

- ``circular_conv_norm``: the EXACT norm of a circular 'same' convolution, ``max_f
  sigma_max(W_hat(f))`` over all frequencies of the grid;
- ``zero_padded_conv_bound``: for a zero-padded 'same' convolution the smallest of its EXACT
  dense norm where the operator is small (``max(C_in, C_out) * H * W <= DENSE_EXACT_MAX``: the
  largest singular value, float64, from the Gram matrix's ``eigvalsh``, of its impulse-response
  matrix, times ``1 + DENSE_MARGIN`` for round-off), the circular norm on a grid of size
  ``>= n + k - 1`` (the zero-padded 'same' convolution on an n x n map is a compression of that
  circular one: embed with zeros, convolve circularly, crop) and ``gram_bound``;
- ``residual_bound``: ``y = x - K^T diag(t) ReLU(Kx + b)``; with ``G = diag(sqrt t) K`` the
  Jacobian is ``I - G^T D G`` (D diagonal in [0, 1]), symmetric with eigenvalues in
  ``[1 - ||G||^2, 1]``, so the bound is ``max(1, ||G||^2 - 1)``: 1 exactly when the SDP
  condition ``K K^T <= 2 diag(t)^-1`` holds on the actual parameters;
- ``skew_taylor_bound``: ``max_{|l| <= rho} |S_T(i l)|``, the norm of the truncated exponential
  series ``S_T(L)`` of a skew-adjoint ``L`` with ``||L|| <= rho``.
"""

from __future__ import annotations

import contextvars
import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from ._fourier import conv_kernel_fft
from ._linalg import gram_bound

__all__ = [
    "BoundError",
    "DENSE_EXACT_MAX",
    "DENSE_MARGIN",
    "NORM_CACHE",
    "matrix_norm",
    "circular_conv_norm",
    "zero_padded_conv_norm",
    "zero_padded_bound",
    "zero_padded_conv_bound",
    "residual_bound",
    "taylor_tail_bound",
    "skew_taylor_bound",
]

#: the largest ``max(C_in, C_out) * H * W`` for which the dense matrix of a zero-padded
#: convolution is built and its exact norm taken (a 4096 x 4096 float64 symmetric eigensolve:
#: several seconds on one CPU core)
DENSE_EXACT_MAX = 4096
#: relative safety margin on the dense norm (float64 round-off of lambda_max is ~1e-12 relative at that size)
DENSE_MARGIN = 1e-9
_DENSE_CHUNK = 256  # impulse responses computed per conv2d call (bounds the memory)
#: exact dense norms already computed within the running ``lipzoo.audit`` call (None outside one:
#: the audit sets it to a dict for its duration)
NORM_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("_NORM_CACHE", default=None)


class BoundError(ValueError):
    """A layer cannot give its guaranteed bound (its parameters are outside what the proof needs)."""


def matrix_norm(w: torch.Tensor) -> float:
    """EXACT spectral norm (float64 / complex128) of a matrix, or the largest over a stack of matrices."""
    w = w.detach().to(torch.complex128 if w.is_complex() else torch.float64)
    return float(torch.linalg.svdvals(w).max())


def _fold(kernel: torch.Tensor, n_h: int, n_w: int) -> torch.Tensor:
    """A centred kernel larger than the grid, folded onto it (taps at equal offsets mod n add up)."""
    k_h, k_w = kernel.shape[-2:]
    if k_h <= n_h and k_w <= n_w:
        return kernel
    out = kernel.new_zeros(*kernel.shape[:2], n_h, n_w)
    c_h, c_w, o_h, o_w = (k_h - 1) // 2, (k_w - 1) // 2, (n_h - 1) // 2, (n_w - 1) // 2
    for a in range(k_h):
        for b in range(k_w):
            out[..., (a - c_h + o_h) % n_h, (b - c_w + o_w) % n_w] += kernel[..., a, b]
    return out


def circular_conv_norm(kernel: torch.Tensor, n_h: int, n_w: int) -> float:
    """EXACT l2 norm of the circular 'same' cross-correlation by ``kernel`` on an n_h x n_w grid."""
    k = _fold(kernel.detach().double(), n_h, n_w)
    return float(torch.linalg.svdvals(conv_kernel_fft(k, n_h, n_w)).max())


def zero_padded_conv_norm(kernel: torch.Tensor, n_h: int, n_w: int) -> float:
    """EXACT l2 norm (float64) of the zero-padded 'same' cross-correlation by ``kernel`` (odd sizes).

    The largest singular value of the dense operator, built from its impulse responses (the
    identity basis as a batch, ``_DENSE_CHUNK`` at a time), as ``sqrt(lambda_max)`` of its Gram
    matrix. Its size is ``C_in H W x C_out H W``:
    meant for small maps (see ``DENSE_EXACT_MAX``). Within an ``audit`` call results are cached.
    """
    if kernel.ndim != 4:
        raise ValueError(f"expected a (out, in, k_h, k_w) kernel, got shape {tuple(kernel.shape)}")
    c_out, c_in, k_h, k_w = kernel.shape
    if k_h % 2 != 1 or k_w % 2 != 1:
        raise ValueError(f"a 'same' zero-padded convolution needs odd kernel sizes, got {k_h}x{k_w}")
    if n_h < 1 or n_w < 1:
        raise ValueError(f"expected a positive map size, got {n_h}x{n_w}")
    k = kernel.detach().to("cpu", torch.float64).contiguous()
    cache = NORM_CACHE.get()
    key = (tuple(k.shape), n_h, n_w, hashlib.sha256(k.numpy().tobytes()).hexdigest())
    if cache is not None and key in cache:
        return cache[key]
    n = c_in * n_h * n_w
    rows = []
    for start in range(0, n, _DENSE_CHUNK):
        m = min(_DENSE_CHUNK, n - start)
        basis = torch.zeros(m, n, dtype=torch.float64)
        basis[torch.arange(m), torch.arange(start, start + m)] = 1.0
        out = F.conv2d(basis.view(m, c_in, n_h, n_w), k, padding=(k_h // 2, k_w // 2))
        rows.append(out.reshape(m, -1))
    # rows: the operator's transpose (one impulse response per row); the same spectral norm.
    # lambda_max of the Gram matrix (symmetric eigensolver, backward stable) is ~4x faster than an
    # SVD and as accurate for the LARGEST singular value (relative error ~ n * eps, far below
    # DENSE_MARGIN)
    a = torch.cat(rows)
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    norm = math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))
    if cache is not None:
        cache[key] = norm
    return norm


def zero_padded_bound(kernel: torch.Tensor, n_h: int, n_w: int, enough=None) -> tuple[float, str]:
    """(bound, what it is) for the zero-padded 'same' convolution on n_h x n_w maps.

    ``enough(bound) -> bool``: the caller's test that the cheap bounds already give its final
    answer; the (slow) exact dense norm is then skipped.
    """
    k_h, k_w = kernel.shape[-2:]
    circ = circular_conv_norm(kernel, n_h + k_h - 1, n_w + k_w - 1)
    gram = float(gram_bound(kernel.detach().double()))
    best, how = (circ, "circular norm on n+k-1 grid") if circ <= gram else (gram, "gram bound")
    small = max(kernel.shape[0], kernel.shape[1]) * n_h * n_w <= DENSE_EXACT_MAX
    if small and k_h % 2 == 1 and k_w % 2 == 1 and not (enough is not None and enough(best)):
        dense = zero_padded_conv_norm(kernel, n_h, n_w) * (1 + DENSE_MARGIN)
        if dense <= best:
            best, how = dense, "exact dense norm"
    return best, how


def zero_padded_conv_bound(kernel: torch.Tensor, n_h: int, n_w: int) -> float:
    """GUARANTEED bound on the zero-padded 'same' convolution on n_h x n_w maps.

    The smallest of: the exact dense norm (``zero_padded_conv_norm`` times ``1 + DENSE_MARGIN``,
    only where ``max(C_in, C_out) * n_h * n_w <= DENSE_EXACT_MAX`` and the kernel sizes are odd),
    the circular norm on the (n + k - 1)-grid (of which the zero-padded operator is a
    compression) and ``gram_bound``.
    """
    return zero_padded_bound(kernel, n_h, n_w)[0]


def _potential(g_norm: float) -> float:
    """Norm bound of ``I - G^T D G`` (D diagonal in [0, 1]) given ``||G|| <= g_norm``."""
    return max(1.0, g_norm * g_norm - 1.0)


def residual_bound(name: str, k: torch.Tensor, t: torch.Tensor,
                   size: tuple[int, int] | None) -> tuple[float, str, float | None, dict]:
    """GUARANTEED bound of ``y = x - K^T diag(t) ReLU(Kx + b)`` as ``layer_bound``'s tuple.

    ``k``: the (out, in, k, k) kernel of a zero-padded 'same' convolution on ``size`` maps, or
    an (out, in) matrix (``size`` None); ``t``: the (out,) step sizes (float64). ``name`` (the
    layer's class) goes into the :class:`BoundError` raised for a negative step size.
    """
    if bool((t < 0).any()):
        raise BoundError(f"{name} has a negative step size; the residual bound needs t >= 0")
    g = t.sqrt().view(-1, *([1] * (k.ndim - 1))) * k
    if size is not None:  # ||G||^2 <= 2 already gives the bound 1: the exact norm cannot lower it
        g_norm, how = zero_padded_bound(g, *size, enough=lambda b: b * b <= 2.0)
    else:
        g_norm, how = matrix_norm(g), "exact spectral norm"
    upper = _potential(g_norm)
    detail = {"G_norm_sq": g_norm * g_norm, "sdp_condition": g_norm * g_norm <= 2.0, "G_norm_method": how}
    return upper, "max(1, ||diag(sqrt t) K||^2 - 1)", None, detail


def taylor_tail_bound(terms: int, radius: float = 1.0) -> float:
    """A guaranteed upper bound on ``sum_{i > terms} radius^i / i!`` for ``0 <= radius < terms + 2``.

    ``r^(T+1)/(T+1)! * sum_j (r/(T+2))^j = r^(T+1)/(T+1)! * (T+2)/(T+2-r)`` (each ratio of
    consecutive terms is at most ``r / (T+2)``); it bounds ``||exp(A) - S_T(A)||`` for any
    operator with ``||A|| <= radius``.
    """
    t = int(terms)
    if not 0.0 <= radius < t + 2:
        raise ValueError(f"radius must be in [0, {t + 2}) for {t} terms, got {radius}")
    return radius ** (t + 1) / math.factorial(t + 1) * (t + 2) / (t + 2 - radius)


def _taylor_real_imag(terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (ascending) of Re and Im of ``S_T(i l) = sum_k (i l)^k / k!`` in l."""
    re, im = np.zeros(terms + 1), np.zeros(terms + 1)
    for k in range(terms + 1):
        c = 1.0 / math.factorial(k)
        sign = (-1) ** (k // 2)
        (re if k % 2 == 0 else im)[k] = sign * c
    return re, im


def skew_taylor_bound(terms: int, rho: float, grid: int = 20001) -> float:
    """GUARANTEED ``max_{|l| <= rho} |S_T(i l)|``: the norm bound of ``S_T(L)`` for skew ``L``, ``||L|| <= rho``.

    ``f(l) = |S_T(i l)|^2`` is a polynomial; its maximum over [0, rho] (f is even) is at most the
    grid maximum plus ``h^2 / 8 * max|f''|`` (h the grid step), with ``max|f''|`` bounded by the
    absolute coefficients. For rho <= 1 also ``1 + tail(T, rho)``; the smaller is returned.
    """
    if rho <= 0:
        return 1.0
    re, im = _taylor_real_imag(terms)
    f = np.polynomial.polynomial.polyadd(np.polynomial.polynomial.polymul(re, re),
                                         np.polynomial.polynomial.polymul(im, im))
    lam = np.linspace(0.0, rho, grid)
    vals = np.polynomial.polynomial.polyval(lam, f)
    d2 = np.polynomial.polynomial.polyder(f, 2)
    m2 = float(np.polynomial.polynomial.polyval(rho, np.abs(d2))) if len(d2) else 0.0
    h = rho / (grid - 1)
    best = math.sqrt(max(float(vals.max()) + h * h / 8 * m2, 0.0)) * (1 + 1e-12)
    if rho <= 1:
        best = min(best, 1.0 + taylor_tail_bound(terms, rho))
    return best
