"""CPL: Convex Potential Layers (Meunier et al., ICML 2022).

The layer is the residual map ``y = x - r K^T ReLU(K x + b)``, with ``K`` a zero-padded 'same'
convolution (its adjoint ``K^T`` is ``conv_transpose2d``) or a dense matrix. It is the gradient
step ``x - r grad(phi)`` of a convex potential ``phi`` whose gradient is ``||K||^2``-Lipschitz, so
its Jacobian ``I - r K^T D K`` (``D`` diagonal with entries in [0, 1]) is symmetric with
eigenvalues in ``[1 - r ||K||^2, 1]``: the layer is 1-Lipschitz exactly when ``r <= 2 / ||K||^2``.

Why the default is sound: lipzoo takes ``r = 2 / (B^2 + eps)`` with ``B = gram_bound(K)``, a
guaranteed upper bound on ``||K||`` (Schur test on the autocorrelation) for zero padding and
every input size, so ``r <= 2 / ||K||^2`` always and the layer is provably 1-Lipschitz. There
is no power-iteration state in this mode and the layer works at any input size.

``step_bound="spectral"`` takes ``B`` tighter, for the input size the layer actually sees: the
largest singular value of the kernel's frequency matrices on the ``(n + k - 1)``-grid (the
zero-padded operator on ``n x n`` maps is a compression of that circular operator; taps further
than ``n - 1`` from the centre are cropped first, as they never meet the input), from the
eigenvalues of the per-frequency Gram matrices, times ``1 + SPECTRAL_MARGIN`` (which covers their
round-off); for the dense layer and 1x1 kernels, the spectral norm of the matrix. On the bundled
CPL model the Schur test made each layer's step 1.11x-4.45x smaller than this bound allows
(``scripts/bound_gap.py``); rescaling ``K`` cannot make up for a loose bound (``r K^T ReLU(Kx + b)``
is invariant under ``K -> cK, b -> cb``), so the tighter bound lets the layer express more. It
costs one batched eigenvalue solve per training forward (eval caches it per input size).

``paper_compatible=True`` reproduces the paper's code instead: ``r = 2 / (sigma^2 + 1e-6)``
with ``sigma = <K u, v>`` from power iteration on a persistent buffer ``u`` (shape
``(1, C, H, W)`` for the input size given at construction, ``(1, C)`` for the dense layer).
Each training forward runs one iteration (no gradient, ``u`` written back) and recomputes
``sigma`` with gradient; eval runs 100 iterations from the stored ``u`` without updating it.
Power iteration approaches ``||K||`` from below, so ``r`` can be slightly too large: that mode
is only APPROXIMATELY 1-Lipschitz and is meant for importing the paper's
checkpoints, not for certification.

Both forms need ``in == out``: ``K`` maps ``in -> out`` and ``K^T`` back, so ``y`` has ``in``
channels.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._base import check_kernel_size, check_square, as_size, InputError, LipschitzModule, map_size, spatial_size
from ._fourier import SPECTRAL_MARGIN, spectral_bound  # noqa: F401 (SPECTRAL_MARGIN: re-exported)
from ._linalg import gram_bound
from ._norms import residual_bound
from ._plain import potential_residual_conv, potential_residual_linear

__all__ = ["CPLConv2d", "CPLLinear", "CPLWeight", "cpl_sound_rescaling", "spectral_bound"]

#: added to sigma^2 (or B^2) in the step size, as in the paper's code
EPS = 1e-6
#: the ways of bounding ||K|| for the sound step size
STEP_BOUNDS = ("gram", "spectral")
#: added to the norms in the power iteration: training forward / eval (the paper's values)
TRAIN_NORM_EPS = 1e-6
EVAL_NORM_EPS = 1e-12

_Op = Callable[[torch.Tensor], torch.Tensor]


class CPLWeight(NamedTuple):
    """What a CPL forward needs besides the kernel and bias."""

    #: the step size r (0-dim tensor)
    rescaling: torch.Tensor
    #: paper mode, training: the power-iteration vector to store back into ``u``; else None
    u: torch.Tensor | None = None


def cpl_sound_rescaling(weight: torch.Tensor, eps: float = EPS, step_bound: str = "gram",
                        size: tuple[int, int] | None = None) -> torch.Tensor:
    """``2 / (B^2 + eps)`` with ``B >= ||weight||``: a provably safe step.

    ``B`` is ``gram_bound(weight)`` (every input size) or, with ``step_bound="spectral"``,
    :func:`spectral_bound` for inputs of ``size``.
    """
    b = gram_bound(weight) if step_bound == "gram" else spectral_bound(weight, size)
    return 2.0 / (b**2 + eps)


def _check_step_bound(name: str, step_bound: str, paper_compatible: bool) -> str:
    if step_bound not in STEP_BOUNDS:
        raise ValueError(f"{name}: step_bound must be one of {', '.join(STEP_BOUNDS)}, got {step_bound!r}")
    if paper_compatible and step_bound != "gram":
        raise ValueError(f"{name}: paper_compatible=True takes the paper's power-iteration step; "
                         f"step_bound={step_bound!r} is for the sound mode")
    return step_bound


@torch.no_grad()
def _power_iterate(op: _Op, op_t: _Op, u: torch.Tensor, iters: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``iters`` rounds of ``v = Ku/(|Ku|+eps); u = K^T v/(|K^T v|+eps)`` (the paper's scheme)."""
    if iters < 1:
        raise ValueError(f"the power iteration needs at least one iteration, got {iters}")
    v = u
    for _ in range(iters):
        v = op(u)
        v = v / (v.norm() + eps)
        u = op_t(v)
        u = u / (u.norm() + eps)
    return u, v


def _paper_rescaling(op: _Op, op_t: _Op, u: torch.Tensor, training: bool, val_niter: int) -> CPLWeight:
    """The paper's step size ``2 / (<K u, v>^2 + eps)``, differentiable in K through ``K u``."""
    if training:
        u_new, v = _power_iterate(op, op_t, u, 1, TRAIN_NORM_EPS)
    else:
        u_new, v = _power_iterate(op, op_t, u, val_niter, EVAL_NORM_EPS)
    sigma = (op(u_new) * v).sum()
    return CPLWeight(2.0 / (sigma**2 + EPS), u_new if training else None)






class CPLConv2d(LipschitzModule):
    """Convex potential convolution ``x - r K^T ReLU(Kx + b)`` with zero 'same' padding.

    Parameters ``kernel`` (out, in, k, k; xavier normal) and ``bias`` (U(+-1/sqrt(fan_in))).
    Default: ``r`` from the guaranteed bound ``gram_bound(kernel)`` (sound, any input size).
    ``paper_compatible=True``: the paper's power-iteration ``r`` with a buffer ``u`` of shape
    (1, out, H, W) for ``input_size`` (required); only approximately 1-Lipschitz, and only for
    inputs of that size. ``val_niter`` (paper mode only): eval power iterations (100).
    ``step_bound``: ``"gram"`` (default, every input size) or ``"spectral"`` (sound and tighter,
    for the spatial size of each input; see the module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        paper_compatible: bool = False,
        val_niter: int = 100,
        step_bound: str = "gram",
    ) -> None:
        super().__init__()
        check_square(type(self).__name__, in_channels, out_channels)
        self.step_bound = _check_step_bound(type(self).__name__, step_bound, paper_compatible)
        # the spectral step of a 1x1 kernel is its matrix's norm: the same on every input size
        self.size_dependent = self.step_bound == "spectral" and kernel_size > 1
        check_kernel_size(kernel_size)
        if val_niter < 1:
            raise ValueError(f"val_niter must be >= 1, got {val_niter}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.paper_compatible = bool(paper_compatible)
        self.val_niter = int(val_niter)
        self.input_size = as_size(input_size)
        self.kernel = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        nn.init.xavier_normal_(self.kernel)
        bound = 1 / math.sqrt(in_channels * kernel_size**2)
        nn.init.uniform_(self.bias, -bound, bound)
        if self.paper_compatible:
            if self.input_size is None:
                raise ValueError(
                    "CPLConv2d(paper_compatible=True) keeps a power-iteration vector of the input's "
                    "spatial size; pass input_size=(H, W)"
                )
            self.size_dependent = True
            self.register_buffer("u", torch.randn(1, out_channels, *self.input_size))

    # K and K^T as zero-padded 'same' convolutions
    def _op(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel, padding=self.kernel_size // 2)

    def _op_t(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(y, self.kernel, padding=self.kernel_size // 2)

    def _check_size(self, size: tuple[int, int] | None) -> None:
        if size is not None and size != tuple(self.u.shape[-2:]):
            raise InputError(
                f"CPLConv2d(paper_compatible=True) estimates its norm on {tuple(self.u.shape[-2:])} maps "
                f"(its power-iteration buffer u), got a {size} input; use the default (sound) mode for "
                "other input sizes"
            )

    def compute_weight(self, size: tuple[int, int] | None = None) -> CPLWeight:
        if not self.paper_compatible:
            if self.step_bound == "spectral" and not self.size_dependent:
                size = (1, 1)  # a 1x1 kernel: its matrix's norm on every input size
            return CPLWeight(cpl_sound_rescaling(self.kernel, step_bound=self.step_bound, size=size))
        self._check_size(size)
        return _paper_rescaling(self._op, self._op_t, self.u, self.training, self.val_niter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        size = spatial_size(x) if self.size_dependent else None
        if self.paper_compatible:
            self._check_size(size)
        w = self.effective_weight(size)
        if w.u is not None:  # paper mode, training: keep the power-iteration state
            with torch.no_grad():
                self.u.copy_(w.u)
        p = self.kernel_size // 2
        h = F.relu(F.conv2d(x, self.kernel, self.bias, padding=p))
        # r folded into the (tiny) kernel: r K^T h = (r K)^T h, one full-size multiply fewer
        return x - F.conv_transpose2d(h, w.rescaling * self.kernel, padding=p)

    def _step_size(self, shape: tuple[int, ...] | None) -> torch.Tensor:
        """The eval-mode step size r (0-dim) for inputs of ``shape`` (the size matters in paper mode only)."""
        return self.effective_weight(map_size(shape) if self.size_dependent else None).rescaling

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """``max(1, ||sqrt(r) K||^2 - 1)`` with the zero-padded conv norm on ``shape`` maps (see
        :func:`~lipzoo.layers._norms.residual_bound`): 1 exactly when ``r <= 2 / ||K||^2``."""
        k = self.kernel.detach().double()
        t = self._step_size(shape).detach().double().expand(k.shape[0])
        return residual_bound(type(self).__name__, k, t, map_size(shape))

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """``x - conv2(ReLU(conv1(x)))``: two zero-padded ``nn.Conv2d`` with r folded into ``conv2``."""
        return potential_residual_conv(self.kernel, self.bias, self._step_size(shape).expand(self.kernel.shape[0]))

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding=zeros"
        if self.paper_compatible:
            return s + f", paper_compatible=True (power iteration on {self.input_size}), val_niter={self.val_niter}"
        return s + f", step_bound={self.step_bound}"


class CPLLinear(LipschitzModule):
    """Dense convex potential layer ``x - r W^T ReLU(Wx + b)``.

    Parameters ``weight`` (out, in; xavier normal) and ``bias`` (U(+-1/sqrt(in))). Default: ``r``
    from ``gram_bound(weight)`` (sound). ``paper_compatible=True``: the paper's power-iteration
    ``r`` with a buffer ``u`` of shape (1, out); only approximately 1-Lipschitz.
    ``step_bound="spectral"``: ``r`` from the spectral norm of ``weight`` (sound and tighter).
    """

    def __init__(
        self, in_features: int, out_features: int, *, paper_compatible: bool = False, val_niter: int = 100,
        step_bound: str = "gram",
    ) -> None:
        super().__init__()
        check_square(type(self).__name__, in_features, out_features)
        self.step_bound = _check_step_bound(type(self).__name__, step_bound, paper_compatible)
        if val_niter < 1:
            raise ValueError(f"val_niter must be >= 1, got {val_niter}")
        self.in_features, self.out_features = in_features, out_features
        self.paper_compatible = bool(paper_compatible)
        self.val_niter = int(val_niter)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.xavier_normal_(self.weight)
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)
        if self.paper_compatible:
            self.register_buffer("u", torch.randn(1, out_features))

    def _op(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def _op_t(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.weight

    def compute_weight(self, size: tuple[int, int] | None = None) -> CPLWeight:
        if not self.paper_compatible:
            return CPLWeight(cpl_sound_rescaling(self.weight, step_bound=self.step_bound))
        return _paper_rescaling(self._op, self._op_t, self.u, self.training, self.val_niter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_features, ndim=(2,))
        w = self.effective_weight()
        if w.u is not None:  # paper mode, training: keep the power-iteration state
            with torch.no_grad():
                self.u.copy_(w.u)
        h = F.relu(F.linear(x, self.weight, self.bias))
        return x - w.rescaling * (h @ self.weight)

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """``max(1, ||sqrt(r) W||^2 - 1)`` with the exact spectral norm (see
        :func:`~lipzoo.layers._norms.residual_bound`): 1 exactly when ``r <= 2 / ||W||^2``."""
        k = self.weight.detach().double()
        t = self.effective_weight().rescaling.detach().double().expand(k.shape[0])
        return residual_bound(type(self).__name__, k, t, None)

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """``x - lin2(ReLU(lin1(x)))``: two ``nn.Linear`` with r folded into ``lin2``."""
        t = self.effective_weight().rescaling * torch.ones(self.weight.shape[0])
        return potential_residual_linear(self.weight, self.bias, t)

    def extra_repr(self) -> str:
        s = f"{self.in_features}, {self.out_features}"
        if self.paper_compatible:
            return s + f", paper_compatible=True (power iteration), val_niter={self.val_niter}"
        return s + f", step_bound={self.step_bound}"
