"""Sandwich layers (Wang & Manchester, ICML 2023: "Direct Parameterization of Lipschitz-Bounded
Deep Networks", LBDN), as used by the paper's ``SandwichConv`` / ``SandwichFc``.

A free weight ``W`` of shape (out, in + out[, k, k]) is normalised to ``alpha * W / ||W||_F``
and mapped by the Cayley transform to ``[A B]`` with orthonormal ROWS (``A`` is out x out,
``B`` is out x in). The layer is

    y = sqrt(2) A^T Psi ReLU(sqrt(2) Psi^{-1} B x + b),        Psi = diag(exp(psi)).

For the convolution all of this happens per frequency: ``W_hat`` is the rfft2 of the kernel on
the input grid with the paper's centring phase and conjugation (the per-frequency matrices of the
circular 'same' cross-correlation), ``||W_hat||_F`` is taken over the whole half spectrum, and
``A``, ``B`` are applied with FFTs; bias and ReLU act in the spatial domain between them. A 1x1
kernel has one real matrix at every frequency (``||W_hat||_F = sqrt(#freq) ||W||_F``): it is
transformed once and ``A``, ``B`` are applied pointwise (1x1 ``conv2d``), the same operators.

Why the DEFAULT is sound (1-Lipschitz up to float round-off, no estimate anywhere): the Cayley
transform gives ``A A^H + B B^H = I`` exactly at every frequency, hence ``A A^T + B B^T = I`` for
the real operators, and LBDN's Theorem 3.1 then bounds the layer: with d = ReLU(z1) - ReLU(z2),
ReLU's slope in [0, 1] gives ``2 d^T Psi^2 (dz - d) >= 0``, which rearranges to
``||dx||^2 - ||dy||^2 >= ||dx - sqrt(2) B^T Psi d||^2 >= 0``. ``I + A_cayley`` has Hermitian part
``>= I``, so its inverse has norm <= 1 and the transform is well conditioned. Hence the default
is the paper's maths unchanged; ``paper_compatible`` does not change the function either: it
selects the paper's initialisation (below) and allows the paper's input ``scale`` option above 1
(which multiplies the bound by it).

Initialisation (the one departure that is not a re-implementation detail). The paper initialises
``W`` like ``nn.Conv2d(in + out, out, k)`` / ``nn.Linear`` (Kaiming-uniform, a=sqrt(5)) and the bias
uniformly in +-1/sqrt(fan_in). Each such layer is strongly contractive at init: its Jacobian
``2 A^T D B`` (D the ReLU's 0/1 slopes) shrinks a random direction by a constant factor well
below 1, so the 27 layers of ConvNet-XS attenuate the backward signal geometrically and the first
layer's gradient vanishes (the vanishing gradients 1LipschitzLayersCompared reports for Sandwich;
``scripts/sandwich_gradients.py`` measures the per-layer gain and gradient norms). A Sandwich
layer can only be norm preserving where its ReLU is active and ``2 A^T B`` is orthogonal, i.e.
``A A^T = B B^T = I / 2``.
The DEFAULT ``init="identity"`` puts it exactly there: ``W = [0, -(sqrt(2) - 1) E]`` (E the
(partial) identity of the channels, as the centre tap of the kernel; alpha = ||W_hat||_F as
before), whose Cayley transform is ``A = I / sqrt(2)``, ``B = E / sqrt(2)``, so the layer is
``y = ReLU(x + b)``. The bias is drawn in (0, 1/sqrt(fan_in)) (the paper's bound, made positive):
inputs after the first layer are non-negative (ReLU and MaxMin keep them so), so every unit is
active, also on all-zero channels (with b <= 0 their ReLU slope would be 0 and they would never
get a gradient), and the layer is the identity map plus a shift: gain 1, like AOL's Dirac init. This only chooses a starting point: the map from
parameters to the function, and so the 1-Lipschitz proof above, is unchanged.
``init="paper"`` (the default with ``paper_compatible=True``) is the paper's initialisation.

Departures from the paper's code, none of which changes the function: ``alpha`` is registered at
construction (value ``||W_hat||_F`` at ``input_size``, default 32) instead of lazily in the first
forward, so it is trained and counted; any (also non-square, odd) input size is accepted, each
with its own per-frequency weight.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._base import as_size, InputError, LipschitzModule, map_size, spatial_size
from ._fourier import conv_kernel_rfft, fft_conv2d, frobenius_norm, half_spectrum_map
from ._linalg import cayley_transform
from ._norms import matrix_norm
from ._plain import SandwichResidual, frequency_op, plain_linear

__all__ = ["SandwichConv2d", "SandwichLinear", "SandwichWeight", "sandwich_factors"]

SQRT2 = math.sqrt(2.0)


class SandwichWeight(NamedTuple):
    """The effective weight of a Sandwich layer: ``y = second @ ReLU(first @ x + bias)``.

    For the convolution ``first`` (H, W//2+1, out, in) and ``second`` (H, W//2+1, out, out) are
    per-frequency matrices (apply with :func:`fft_conv2d`); for the dense layer they are plain
    (out, in) and (out, out) matrices. ``bias`` (out,) or None is added between them.
    """

    first: torch.Tensor
    bias: torch.Tensor | None
    second: torch.Tensor


def sandwich_factors(
    w: torch.Tensor, alpha: torch.Tensor, n_w: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[A B] = cayley(alpha * W / ||W||_F)`` for a (..., out, in + out) stack; returns (A, B).

    The Frobenius norm is over the whole stack (all frequencies). ``[A B]`` has orthonormal rows.
    With ``n_w`` (the grid width) ``w`` is the rfft half spectrum (H, n_w//2+1, out, in + out) of
    a real kernel and each distinct frequency is transformed once (see ``half_spectrum_map``).
    """
    out = w.shape[-2]
    w = w * (alpha / frobenius_norm(w))
    q = cayley_transform(w) if n_w is None else half_spectrum_map(cayley_transform, w, n_w)
    return q[..., :out], q[..., out:]


def _assemble(
    a: torch.Tensor,
    b_mat: torch.Tensor,
    psi: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    numerical_stable: bool,
) -> SandwichWeight:
    """Fold sqrt(2), Psi and the input scale into the two matrices of the layer."""
    a_h = a.mH  # A^H (A^T for real matrices)
    if numerical_stable:  # Psi only on the bias; equal by positive homogeneity of ReLU
        first = (SQRT2 * scale) * b_mat
        second = SQRT2 * a_h
        bias = None if bias is None else torch.exp(psi) * bias
    else:
        first = (SQRT2 * scale) * torch.exp(-psi)[:, None] * b_mat
        second = a_h * (SQRT2 * torch.exp(psi))[None, :]
    return SandwichWeight(first, bias, second)


def _option_repr(layer: LipschitzModule) -> str:
    """The non-default options of a Sandwich layer, for ``extra_repr``."""
    s = ", bias=False" if layer.bias is None else ""
    if layer.numerical_stable:
        s += ", numerical_stable=True"
    if layer.scale != 1.0:
        s += f", scale={layer.scale}"
    if layer.paper_compatible:
        s += ", paper_compatible=True"
    if layer.init != _resolve_init(None, layer.paper_compatible):
        s += f", init={layer.init!r}"
    return s


INITS = ("identity", "paper")


def _resolve_init(init: str | None, paper_compatible: bool) -> str:
    init = ("paper" if paper_compatible else "identity") if init is None else init
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS} (or None: 'identity', 'paper' with paper_compatible=True), got {init!r}")
    return init


def _initialise(weight: torch.Tensor, bias: torch.Tensor | None, in_features: int, init: str) -> None:
    """Fill ``weight`` (out, in + out[, k, k]) and ``bias`` in place (see the module docstring).

    ``"paper"``: ``nn.Conv2d`` / ``nn.Linear``'s defaults for (in + out) inputs, as the paper.
    ``"identity"``: ``W = [0, -(sqrt(2) - 1) E]`` on the centre tap, so ``cayley`` gives
    ``A = I / sqrt(2)``, ``B = E / sqrt(2)`` and the layer is ``ReLU(E x + b)``; bias in (0, bound).
    """
    out = weight.shape[0]
    bound = 1 / math.sqrt(weight[0].numel())  # 1/sqrt(fan_in), fan_in = (in + out) * k * k
    with torch.no_grad():
        if init == "paper":
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            if bias is not None:
                nn.init.uniform_(bias, -bound, bound)
            return
        weight.zero_()
        # Z = V^T V = (sqrt(2) - 1)^2 I  =>  A = (I + Z)^-1 (I - Z) = I / sqrt(2), B^T = -2 V (I + Z)^-1 = E^T / sqrt(2)
        n = min(out, in_features)
        centre = tuple((s - 1) // 2 for s in weight.shape[2:])  # the tap that conv_kernel_rfft centres
        idx = torch.arange(n, device=weight.device)
        weight[(idx, out + idx, *centre)] = -(SQRT2 - 1.0)
        if bias is not None:
            nn.init.uniform_(bias, 0.0, bound)


def _sandwich_bound(layer: LipschitzModule, size: tuple[int, int] | None) -> tuple[float, str, float | None, dict]:
    """GUARANTEED bound of a Sandwich layer with effective weight ``layer.effective_weight(size)``.

    ``A``, ``B`` are recovered from the applied matrices and ``mu = max_f lambda_max(A A^H + B B^H)``
    is checked; LBDN's Theorem 3.1 (which needs only ``<= I``) with the positive homogeneity of
    ReLU gives ``scale * mu``; the cruder ``||first|| ||second||`` is also valid and the smaller of
    the two is returned.
    """
    first, _, second = layer.effective_weight(size)
    cdt = torch.complex128 if (first.is_complex() or second.is_complex()) else torch.float64
    first, second = first.detach().to(cdt), second.detach().to(cdt)
    psi = torch.zeros_like(layer.psi, dtype=torch.float64) if layer.numerical_stable else layer.psi.detach().double()
    b = torch.exp(psi)[:, None] * first / (math.sqrt(2) * layer.scale)
    a_h = second * torch.exp(-psi)[None, :] / math.sqrt(2)  # A^H
    a = a_h.mH
    gram = a @ a.mH + b @ b.mH
    mu = float(torch.linalg.eigvalsh(gram).max())
    theorem = layer.scale * mu
    product = matrix_norm(first) * matrix_norm(second)
    detail = {"mu": mu, "AA+BB<=I": mu <= 1 + 1e-12, "product_bound": product}
    if theorem <= product:
        return theorem, "LBDN Thm 3.1: scale * lambda_max(AA^H + BB^H)", None, detail
    return product, "||first|| * ||second||", None, detail


def _check_scale(scale: float, paper_compatible: bool) -> float:
    scale = float(scale)
    if not scale > 0 or (scale > 1 and not paper_compatible):
        raise ValueError(
            f"scale must be in (0, 1] for a 1-Lipschitz layer (got {scale}); scales above 1 "
            "are only accepted with paper_compatible=True"
        )
    return scale




class SandwichConv2d(LipschitzModule):
    """Sandwich convolution, circular 'same', via per-frequency Cayley transforms (rfft2).

    Parameters as in the paper: ``weight`` (out, in + out, k, k), ``bias`` (out), ``psi`` (out,
    zeros) and ``alpha`` (0-dim, = ||W_hat||_F at ``input_size`` at construction).
    Options: ``numerical_stable`` (Psi folded into the bias; same function), ``scale`` (input
    multiplier, default 1), ``bias``, ``init`` (``"identity"``: the layer starts as ReLU(x + b),
    norm preserving; ``"paper"``: the paper's, strongly contractive; default ``"identity"``, or
    ``"paper"`` with ``paper_compatible=True``).
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
        numerical_stable: bool = False,
        scale: float = 1.0,
        bias: bool = True,
        init: str | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be positive, got {kernel_size}")
        size = as_size(input_size, (32, 32))
        if kernel_size > min(size):
            raise ValueError(f"a {kernel_size}x{kernel_size} kernel does not fit the input size {size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.input_size = size
        self.paper_compatible = paper_compatible
        self.numerical_stable = numerical_stable
        self.scale = _check_scale(scale, paper_compatible)
        self.init = _resolve_init(init, paper_compatible)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels + out_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        _initialise(self.weight, self.bias, in_channels, self.init)
        self.psi = nn.Parameter(torch.zeros(out_channels))
        with torch.no_grad():
            alpha = self.weight_fft(size).norm()
        self.alpha = nn.Parameter(alpha.detach().clone())

    def weight_fft(self, size: tuple[int, int]) -> torch.Tensor:
        """``W_hat`` (H, W//2+1, out, in + out): the paper's centred, conjugated rfft2 of the kernel."""
        return conv_kernel_rfft(self.weight, *size)

    def compute_weight(self, size: tuple[int, int] | None = None) -> SandwichWeight:
        size = self.input_size if size is None else size
        if self.kernel_size == 1:
            # A 1x1 kernel has the same real matrix W at every frequency and ||W_hat||_F =
            # sqrt(#freq) ||W||_F: transform it once and broadcast (same function, far cheaper).
            n_h, n_w = size
            n_freq = n_h * (n_w // 2 + 1)
            w = self.weight[:, :, 0, 0]
            a, b_mat = sandwich_factors(w, self.alpha / math.sqrt(n_freq))
            first, bias, second = _assemble(a, b_mat, self.psi, self.bias, self.scale, self.numerical_stable)
            cdt = torch.promote_types(w.dtype, torch.complex64)
            stack = lambda m: m.to(cdt).expand(n_h, n_w // 2 + 1, *m.shape)  # noqa: E731
            return SandwichWeight(stack(first), bias, stack(second))
        a, b_mat = sandwich_factors(self.weight_fft(size), self.alpha, size[1])
        return _assemble(a, b_mat, self.psi, self.bias, self.scale, self.numerical_stable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        size = spatial_size(x)
        if self.kernel_size > min(size):
            raise InputError(
                f"{type(self).__name__} with a {self.kernel_size}x{self.kernel_size} kernel needs inputs of "
                f"at least that size, got {size[0]}x{size[1]}"
            )
        first, bias, second = self.effective_weight(size)
        if self.kernel_size == 1:
            # every frequency holds the same real matrices: both circular convolutions are
            # pointwise, applied without FFTs (same function, far cheaper)
            z = F.conv2d(x, first[0, 0].real[:, :, None, None], bias)
            return F.conv2d(F.relu(z), second[0, 0].real[:, :, None, None])
        z = fft_conv2d(x, first)
        if bias is not None:
            z = z + bias[:, None, None]
        return fft_conv2d(F.relu(z), second)

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """LBDN Thm 3.1 on the per-frequency matrices for ``shape`` (see ``_sandwich_bound``)."""
        return _sandwich_bound(self, map_size(shape))

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """A SandwichResidual of two per-frequency operators for ``shape`` (FrequencyConv2d or full-size kernels)."""
        size = map_size(shape)
        first, bias, second = self.effective_weight(size)
        return SandwichResidual(frequency_op(first, bias, size, 0, False, circular),
                                frequency_op(second, None, size, 0, False, circular))

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding=circular, "
            f"input_size={self.input_size}"
        )
        return s + _option_repr(self)


class SandwichLinear(LipschitzModule):
    """Sandwich dense layer (the paper's ``SandwichFc``): ``weight`` (out, in + out), ``bias``,
    ``psi`` (zeros) and ``alpha`` (0-dim, = ||W||_F at construction); options as
    :class:`SandwichConv2d`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        paper_compatible: bool = False,
        numerical_stable: bool = False,
        scale: float = 1.0,
        bias: bool = True,
        init: str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.paper_compatible = paper_compatible
        self.numerical_stable = numerical_stable
        self.scale = _check_scale(scale, paper_compatible)
        self.init = _resolve_init(init, paper_compatible)
        self.weight = nn.Parameter(torch.empty(out_features, in_features + out_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        _initialise(self.weight, self.bias, in_features, self.init)
        self.alpha = nn.Parameter(self.weight.detach().norm().clone())
        self.psi = nn.Parameter(torch.zeros(out_features))

    def compute_weight(self, size: tuple[int, int] | None = None) -> SandwichWeight:
        a, b_mat = sandwich_factors(self.weight, self.alpha)
        return _assemble(a, b_mat, self.psi, self.bias, self.scale, self.numerical_stable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_features, ndim=(2,))
        first, bias, second = self.effective_weight()
        return F.linear(F.relu(F.linear(x, first, bias)), second)

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """LBDN Thm 3.1 on the two matrices (see ``_sandwich_bound``)."""
        return _sandwich_bound(self, None)

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """A SandwichResidual of two ``nn.Linear``."""
        first, bias, second = self.effective_weight()
        return SandwichResidual(plain_linear(first, bias), plain_linear(second, None))

    def extra_repr(self) -> str:
        s = f"{self.in_features}, {self.out_features}"
        return s + _option_repr(self)
