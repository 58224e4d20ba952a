"""Plain torch modules with fixed weights, and their builders: what the layers' ``plain`` forms are made of.

A layer's plain form (:meth:`LipschitzModule.plain`, used by :func:`lipzoo.export.to_plain`)
holds its materialised eval-mode weight in ordinary torch modules (no parametrisation, no
gradient): ``nn.Conv2d`` / ``nn.Linear`` where the layer is one convolution or one matrix, else
one of the modules here:

- :class:`FrequencyConv2d`: a fixed circular convolution by precomputed per-frequency matrices
  (optionally on the zero-padded grid, then cropped); :func:`frequency_op` builds it or, for
  ``circular="kernel"`` (or ``"auto"`` where the support is small), one materialised full-size
  ``nn.Conv2d`` (the impulse response of the operator, trimmed to its support), because a
  full-size kernel costs far more than the FFT on larger maps (measured:
  ``scripts/bench_plain.py``);
- :class:`PotentialResidual`: ``x - second(ReLU(first(x)))`` with the step size folded into
  ``second`` (:func:`potential_residual_conv`, :func:`potential_residual_linear`);
- :class:`SandwichResidual`: ``second(ReLU(first(x)))``;
- :class:`TaylorExpConv2d`: the truncated exponential series of a fixed zero-padded kernel.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._fourier import fft_conv2d
from ._linalg import skew_series

__all__ = [
    "FrequencyConv2d",
    "PotentialResidual",
    "SandwichResidual",
    "TaylorExpConv2d",
    "circular_impulse_kernel",
    "frequency_kernel",
    "frequency_op",
    "fixed",
    "plain_linear",
    "plain_conv1x1",
    "plain_circular_conv",
    "potential_residual_conv",
    "potential_residual_linear",
    "TRIM_TOL",
    "AUTO_MAX_TAPS",
]

#: relative l1 mass of the taps a materialised kernel may drop when trimmed to its support
TRIM_TOL = 1e-9
#: "auto" materialises a frequency-domain layer as a kernel only up to this many taps per filter
AUTO_MAX_TAPS = 9


# --- materialised kernels ---------------------------------------------------------------------
def circular_impulse_kernel(op: Callable[[torch.Tensor], torch.Tensor], in_channels: int, n_h: int, n_w: int,
                            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Cross-correlation taps ``c`` (out, in, n_h, n_w) of a circular shift-invariant linear ``op``.

    ``op(x)[o, t] = sum_i sum_s c[o, i, s] x[i, (t + s) mod n]``; computed from the responses to
    one impulse per input channel (exact up to the round-off of ``op``).
    """
    impulses = torch.zeros(in_channels, in_channels, n_h, n_w, dtype=dtype)
    impulses[torch.arange(in_channels), torch.arange(in_channels), 0, 0] = 1.0
    g = op(impulses).transpose(0, 1)  # g[o, i, t]: response at t to an impulse at 0
    # c[s] = g[-s mod n]
    return torch.roll(g.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))


def _offset_taps(c: torch.Tensor, lo: tuple[int, int], hi: tuple[int, int]) -> torch.Tensor:
    """Taps of offsets lo..hi (inclusive, per dim) read circularly from ``c`` (period = its size)."""
    n_h, n_w = c.shape[-2:]
    ih = torch.arange(lo[0], hi[0] + 1) % n_h
    iw = torch.arange(lo[1], hi[1] + 1) % n_w
    return c[..., ih[:, None], iw[None, :]]


def _trim(w: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Drop the outer rings of a centred (odd x odd) kernel while their l1 mass is negligible."""
    total = float(w.abs().sum())
    rh, rw = w.shape[-2] // 2, w.shape[-1] // 2
    ch, cw = rh, rw
    while rh > 0 or rw > 0:
        nh, nw = max(rh - 1, 0), max(rw - 1, 0)
        inner = w[..., ch - nh: ch + nh + 1, cw - nw: cw + nw + 1]
        if total - float(inner.abs().sum()) > TRIM_TOL * total:
            break
        rh, rw = nh, nw
    return w[..., ch - rh: ch + rh + 1, cw - rw: cw + rw + 1], (rh, rw)


def _conv_from_taps(w: torch.Tensor, bias: torch.Tensor | None, padding_mode: str) -> nn.Conv2d:
    """An ``nn.Conv2d`` with the centred kernel ``w`` (out, in, 2r+1, 2r+1) and 'same' padding."""
    w, (rh, rw) = _trim(w)
    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[-2:]), padding=(rh, rw),
                     padding_mode=padding_mode if (rh or rw) else "zeros", bias=bias is not None)
    return fixed(conv, w, bias)


def fixed(mod: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """``mod`` with ``weight`` (and ``bias``) copied in and every parameter frozen."""
    with torch.no_grad():
        mod.weight.copy_(weight.detach())
        if bias is not None:
            mod.bias.copy_(bias.detach())
    for p in mod.parameters():
        p.requires_grad_(False)
    return mod


def frequency_kernel(wfreq: torch.Tensor, in_channels: int, grid: tuple[int, int], full: bool) -> torch.Tensor:
    """The circular taps (float64) of per-frequency matrices applied by ``fft_conv2d`` on ``grid``."""
    w = wfreq.detach().to(torch.complex128)
    return circular_impulse_kernel(lambda x: fft_conv2d(x, w, full=full), in_channels, *grid)


# --- plain modules ----------------------------------------------------------------------------
class FrequencyConv2d(nn.Module):
    """A fixed circular convolution by precomputed per-frequency matrices (H, W//2+1 or W, out, in).

    ``pad > 0``: the input is zero-padded by ``pad`` first and the output cropped back (LOT).
    Only inputs of the size the matrices were built for are accepted.
    """

    def __init__(self, weight_freq: torch.Tensor, bias: torch.Tensor | None, *, pad: int = 0, full: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight_freq", weight_freq.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.pad, self.full = int(pad), bool(full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        if p:
            x = F.pad(x, (p, p, p, p))
        if x.shape[-2] != self.weight_freq.shape[0]:
            raise ValueError(
                f"FrequencyConv2d was materialised for {self.weight_freq.shape[0] - 2 * p}-pixel maps, got "
                f"{x.shape[-2] - 2 * p}; rebuild with to_plain(model, input_shape=...)"
            )
        w = self.weight_freq.to(torch.complex128 if x.dtype == torch.float64 else self.weight_freq.dtype)
        y = fft_conv2d(x, w, full=self.full)
        if p:
            y = y[..., p:-p, p:-p]
        return y if self.bias is None else y + self.bias.to(y.dtype)[:, None, None]

    def extra_repr(self) -> str:
        o, i = self.weight_freq.shape[-2:]
        return f"{i}, {o}, grid={tuple(self.weight_freq.shape[:2])}, pad={self.pad}, full={self.full}"


class PotentialResidual(nn.Module):
    """``x - second(ReLU(first(x)))``: CPL and SLL with their step sizes folded into ``second``."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.second(F.relu(self.first(x)))


class SandwichResidual(nn.Module):
    """``second(ReLU(first(x)))`` (bias inside ``first``): a materialised Sandwich layer."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(F.relu(self.first(x)))


class TaylorExpConv2d(nn.Module):
    """SOC with a fixed kernel: ``scale * sum_{i<=terms} L^i x / i! + bias`` (zero-padded convs)."""

    def __init__(self, kernel: torch.Tensor, bias: torch.Tensor | None, *, terms: int, scale: float,
                 in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.terms, self.scale, self.stride = int(terms), float(scale), int(stride)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.folded_channels = in_channels * stride * stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return skew_series(x, self.kernel.to(x.dtype), self.terms, self.scale, bias, self.out_channels)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel.shape[-1]}, terms={self.terms}"


# --- builders ---------------------------------------------------------------------------------
def plain_linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    """A frozen ``nn.Linear`` computing ``w x + b``."""
    return fixed(nn.Linear(w.shape[1], w.shape[0], bias=b is not None), w, b)


def plain_conv1x1(w: torch.Tensor, b: torch.Tensor) -> nn.Conv2d:
    """A frozen 1x1 ``nn.Conv2d`` applying the (out, in) matrix ``w`` at every pixel, plus ``b``."""
    return fixed(nn.Conv2d(w.shape[1], w.shape[0], 1), w[:, :, None, None], b)


def plain_circular_conv(w: torch.Tensor, b: torch.Tensor) -> nn.Conv2d:
    """A frozen ``nn.Conv2d``: the circular 'same' cross-correlation by the (out, in, k, k) kernel ``w``, plus ``b``."""
    p = w.shape[-1] // 2
    conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=p,
                     padding_mode="circular" if p else "zeros", bias=True)
    return fixed(conv, w, b)


def frequency_op(wfreq: torch.Tensor, bias: torch.Tensor | None, size: tuple[int, int], pad: int, full: bool,
                 circular: str) -> nn.Module:
    """A per-frequency operator as FrequencyConv2d or as one materialised nn.Conv2d.

    ``circular``: ``"fft"`` (the precomputed matrices), ``"kernel"`` (one full-size
    ``nn.Conv2d``) or ``"auto"`` (the kernel only where its support has at most
    ``AUTO_MAX_TAPS`` taps, else the FFT).
    """
    grid = (size[0] + 2 * pad, size[1] + 2 * pad)
    if circular == "fft":
        return FrequencyConv2d(wfreq, bias, pad=pad, full=full)
    c = frequency_kernel(wfreq, wfreq.shape[-1], grid, full)
    if pad:  # zero padding + circular on the padded grid + crop == one zero-padded conv, offsets +-(n-1)
        taps = _offset_taps(c, (-(size[0] - 1), -(size[1] - 1)), (size[0] - 1, size[1] - 1))
        mode = "zeros"
    else:
        # circular: offsets -r..r with r = n // 2; for even n the offsets +-n/2 coincide: keep one
        rh, rw = grid[0] // 2, grid[1] // 2
        taps = _offset_taps(c, (-rh, -rw), (rh, rw)).clone()
        if grid[0] % 2 == 0:
            taps[..., -1, :] = 0
        if grid[1] % 2 == 0:
            taps[..., :, -1] = 0
        mode = "circular"
    trimmed, _ = _trim(taps)
    if circular == "auto" and trimmed.shape[-1] * trimmed.shape[-2] > AUTO_MAX_TAPS:
        return FrequencyConv2d(wfreq, bias, pad=pad, full=full)
    return _conv_from_taps(taps.float(), None if bias is None else bias.float(), mode)


def potential_residual_linear(w: torch.Tensor, bias: torch.Tensor | None, t: torch.Tensor) -> PotentialResidual:
    """``x - W^T (t * ReLU(W x + b))`` for an (out, in) matrix ``W`` and (out,) step sizes ``t``."""
    return PotentialResidual(plain_linear(w, bias), plain_linear((t[:, None] * w).T, None))


def potential_residual_conv(k: torch.Tensor, bias: torch.Tensor | None, t: torch.Tensor) -> PotentialResidual:
    """``x - K^T (t * ReLU(K x + b))`` with ``K`` the zero-padded 'same' convolution by ``k`` (out, in, k, k)."""
    p = k.shape[-1] // 2
    first = fixed(nn.Conv2d(k.shape[1], k.shape[0], k.shape[-1], padding=p), k, bias)
    # K^T as a convolution: conv_transpose2d(h, K, padding=p) == conv2d(h, K^T flipped, padding=p)
    adj = (t[:, None, None, None] * k).transpose(0, 1).flip(2, 3)
    second = fixed(nn.Conv2d(k.shape[0], k.shape[1], k.shape[-1], padding=p, bias=False), adj, None)
    return PotentialResidual(first, second)
